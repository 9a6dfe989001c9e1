//! A stand-in for a Nano node's HTTP RPC, for tests.
//!
//! [`NanoStub::start`] serves HTTP/1.1 on `127.0.0.1` at a port the OS picks and answers
//! every POST from the fixtures recorded from a real RsNano node on a dev network
//! (`tests/fixtures/nano-rpc/rsnano-dev-fixtures.jsonl`, see [`fixtures`]): a request
//! whose JSON equals a fixture's request gets that fixture's status and body, verbatim.
//! A request no fixture matches gets what the chosen [`Mode`]'s node would answer to an
//! unknown action. The stub records every request that reached it (method, path, headers,
//! body), so a test can show that a refused request never did.
//!
//! Knobs: [`NanoStub::set_delay`] makes it slow, [`NanoStub::set_answer`] makes it answer
//! everything with one canned status and body. [`NanoStub::shutdown`] (or dropping it)
//! stops it and closes its port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Path of the fixture file, relative to this package.
const FIXTURES: &str = "tests/fixtures/nano-rpc/rsnano-dev-fixtures.jsonl";

/// Which node the stub imitates when no fixture matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// RsNano (Rust): unknown actions and malformed requests get HTTP 422 with plain
    /// text (`Failed to deserialize the JSON body into the target type: ...`), as axum's
    /// JSON extractor words it; a body that is not JSON gets HTTP 400.
    RsNano,
    /// nano-node (C++): everything is HTTP 200 with JSON; an unknown action gets
    /// `{"error": "Unknown command"}` and a body that is not JSON
    /// `{"error": "Unable to parse JSON"}` (`nano/node/json_handler.cpp`).
    NanoNode,
}

/// One recorded exchange with a real node.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixture {
    /// The request body that was posted.
    pub request: Value,
    /// The HTTP status the node answered.
    pub status: u16,
    /// The answer body, verbatim (JSON for 200, plain text for 422).
    pub body: String,
}

impl Fixture {
    /// The request's `action`, if it has a string one.
    pub fn action(&self) -> Option<&str> {
        self.request.get("action").and_then(Value::as_str)
    }
}

/// One request as it reached the stub.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method, such as `POST`.
    pub method: String,
    /// Path and query, such as `/`.
    pub path: String,
    /// Headers in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Path of the fixture file.
pub fn fixtures_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(FIXTURES)
}

/// The recorded fixtures, in file order. Panics if the file is missing or malformed.
pub fn fixtures() -> Vec<Fixture> {
    let path = fixtures_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "Nano RPC fixtures not found at {} ({e}); they are part of \
             the repository (tests/fixtures/nano-rpc/)",
            path.display()
        )
    });
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: not JSON: {e}", path.display(), i + 1));
            let field = |name: &str| {
                value
                    .get(name)
                    .unwrap_or_else(|| panic!("{}:{}: no {name:?}", path.display(), i + 1))
            };
            Fixture {
                request: field("request").clone(),
                status: field("status")
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or_else(|| panic!("{}:{}: bad status", path.display(), i + 1)),
                body: field("body")
                    .as_str()
                    .unwrap_or_else(|| panic!("{}:{}: body not a string", path.display(), i + 1))
                    .to_string(),
            }
        })
        .collect()
}

/// A running stub node. Stops when [`shutdown`](Self::shutdown) is awaited or it drops.
pub struct NanoStub {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct Shared {
    mode: Mode,
    fixtures: Vec<Fixture>,
    received: Mutex<Vec<Recorded>>,
    delay: Mutex<Duration>,
    canned: Mutex<Option<(u16, Vec<u8>)>>,
}

/// Locks `mutex`, ignoring poisoning (a panicking test thread must not hide the record).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NanoStub {
    /// Starts a stub imitating `mode` on `127.0.0.1:0`, with the fixtures loaded.
    pub async fn start(mode: Mode) -> NanoStub {
        Self::start_at(mode, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a stub imitating `mode` on `addr` (for a node that comes back on the port
    /// it had).
    pub async fn start_at(mode: Mode, addr: SocketAddr) -> NanoStub {
        let shared = Arc::new(Shared {
            mode,
            fixtures: fixtures(),
            received: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
            canned: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the stub node's port");
        let addr = listener.local_addr().expect("stub node's address");
        let app = Router::new().fallback(answer).with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        NanoStub {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The stub's base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The stub's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request that reached the stub so far, in arrival order.
    pub fn received(&self) -> Vec<Recorded> {
        lock(&self.shared.received).clone()
    }

    /// The `action` of every request that reached the stub (`"<none>"` when a body had
    /// no string action).
    pub fn actions_received(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| {
                r.json()
                    .and_then(|v| v.get("action").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_else(|| "<none>".to_string())
            })
            .collect()
    }

    /// Forgets the requests recorded so far.
    pub fn clear_received(&self) {
        lock(&self.shared.received).clear();
    }

    /// Makes every later answer wait `delay` after the request is recorded.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.shared.delay) = delay;
    }

    /// Makes every later request get `status` and `body` whatever it asked (labelled
    /// `application/json` for 200, plain text otherwise).
    pub fn set_answer(&self, status: u16, body: impl Into<Vec<u8>>) {
        *lock(&self.shared.canned) = Some((status, body.into()));
    }

    /// Goes back to answering from the fixtures.
    pub fn clear_answer(&self) {
        *lock(&self.shared.canned) = None;
    }

    /// Stops the stub and waits (at most 2 s, then aborts it) until its port is closed.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

impl Drop for NanoStub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The stub's only route: records the request, then answers it.
async fn answer(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    lock(&shared.received).push(Recorded {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_string(), |pq| pq.to_string()),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });
    let delay = *lock(&shared.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let canned = lock(&shared.canned).clone();
    if let Some((status, body)) = canned {
        return reply(status, body);
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return match shared.mode {
                Mode::RsNano => reply(
                    400,
                    format!("Failed to parse the request body as JSON: {e}"),
                ),
                Mode::NanoNode => reply(200, r#"{"error":"Unable to parse JSON"}"#),
            }
        }
    };
    if let Some(fixture) = shared.fixtures.iter().find(|f| f.request == request) {
        return reply(fixture.status, fixture.body.clone());
    }
    match shared.mode {
        Mode::RsNano => {
            let reason = match request.get("action").and_then(Value::as_str) {
                Some(action) => format!("action: unknown variant `{action}`"),
                None => "missing field `action`".to_string(),
            };
            reply(
                422,
                format!("Failed to deserialize the JSON body into the target type: {reason}"),
            )
        }
        Mode::NanoNode => reply(200, "{\n    \"error\": \"Unknown command\"\n}\n"),
    }
}

/// An answer with `status` and `body`: JSON for 200, plain text otherwise (as RsNano).
fn reply(status: u16, body: impl Into<Vec<u8>>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status == StatusCode::OK {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    (status, [(header::CONTENT_TYPE, content_type)], body.into()).into_response()
}
