//! A stand-in for a Nano node's websocket, for tests and benchmarks.
//!
//! [`NanoWsStub::start`] serves websockets on `127.0.0.1` at a port the OS picks and
//! speaks the node's dialect as RsNano does: a `subscribe` is acknowledged
//! `{"id":ID,"ack":"subscribe","time":"<ms>"}` (when it asks for an ack), a `ping`
//! `{"ack":"pong","time":"<ms>"}`, and every message given to [`NanoWsStub::emit`] goes
//! to every client subscribed to `confirmation`. The messages are the real ones recorded
//! from an RsNano dev node (`tests/fixtures/nano-ws/rsnano-dev-confirmations.jsonl`,
//! [`fixture_confirmations`]) or made in their likeness for load ([`generated`]). The
//! stub records every message a client sent ([`NanoWsStub::received`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

/// Path of the fixture file, relative to this package.
const FIXTURES: &str = "tests/fixtures/nano-ws/rsnano-dev-confirmations.jsonl";

/// The dev genesis account, the sender of the fixtures' send.
pub const GENESIS: &str = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";
/// The account the fixtures' send went to, and whose receive follows.
pub const DESTINATION: &str = "nano_3cn3tj1ueynwgo7fj6d748kfsk435bpezaro3rdmisyqbuuc9bp7c87srszd";

/// The fixture file's lines, in order (an ack, then two confirmations).
pub fn fixture_lines() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(FIXTURES);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("websocket fixtures not found at {} ({e})", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// The fixture's confirmation messages (the send, then the receive), verbatim.
pub fn fixture_confirmations() -> Vec<String> {
    fixture_lines()
        .into_iter()
        .filter(|l| l.contains(r#""topic":"confirmation""#))
        .collect()
}

/// A confirmation in the fixture send's likeness for `account` (a send from it to
/// itself, so that it counts for no other account), with the hash made from `n` and
/// `time` now; `stamp` (nanoseconds since the Unix epoch) is put in
/// the message as `"bench_sent_ns"` when given, for latency measurements.
pub fn generated(n: u64, account: &str, stamp: Option<u128>) -> String {
    static SEND: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let mut value = SEND
        .get_or_init(|| serde_json::from_str(&fixture_confirmations()[0]).expect("fixture is JSON"))
        .clone();
    let hash = format!("{n:064X}");
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    value["time"] = Value::String(time.to_string());
    let message = &mut value["message"];
    message["account"] = Value::String(account.to_string());
    message["hash"] = Value::String(hash);
    message["block"]["account"] = Value::String(account.to_string());
    message["block"]["link_as_account"] = Value::String(account.to_string());
    if let Some(stamp) = stamp {
        message["bench_sent_ns"] = Value::String(stamp.to_string());
    }
    value.to_string()
}

/// `text` (made by [`generated`] with a stamp of 0) stamped with the time now: cheap
/// enough to do at the moment of the emit.
pub fn stamped(text: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    text.replacen(
        r#""bench_sent_ns":"0""#,
        &format!(r#""bench_sent_ns":"{now}""#),
        1,
    )
}

/// A running stand-in. Dropping it stops it.
pub struct NanoWsStub {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
    subscribed: Arc<Mutex<usize>>,
    emit: broadcast::Sender<Arc<str>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NanoWsStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_ms() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis().to_string())
        .unwrap_or_default()
}

impl NanoWsStub {
    /// Starts serving on `127.0.0.1`, any port.
    pub async fn start() -> NanoWsStub {
        Self::start_on("127.0.0.1:0".parse().expect("address")).await
    }

    /// Starts serving on `addr`.
    pub async fn start_on(addr: SocketAddr) -> NanoWsStub {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the websocket stand-in");
        let addr = listener.local_addr().expect("local address");
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let subscribed: Arc<Mutex<usize>> = Arc::default();
        // Room for a burst of generated messages per slow client before it lags.
        let (emit, _) = broadcast::channel::<Arc<str>>(65_536);
        let task = {
            let received = received.clone();
            let subscribed = subscribed.clone();
            let emit = emit.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let received = received.clone();
                    let subscribed = subscribed.clone();
                    let rx = emit.subscribe();
                    tokio::spawn(client(stream, received, subscribed, rx));
                }
            })
        };
        NanoWsStub {
            addr,
            received,
            subscribed,
            emit,
            task,
        }
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Sends `text` to every client subscribed to `confirmation`.
    pub fn emit(&self, text: &str) {
        let _ = self.emit.send(Arc::from(text));
    }

    /// Every message clients sent, as JSON, in arrival order.
    pub fn received(&self) -> Vec<Value> {
        self.received.lock().expect("lock").clone()
    }

    /// Clients subscribed to `confirmation` now.
    pub fn subscribers(&self) -> usize {
        *self.subscribed.lock().expect("lock")
    }

    /// Waits at most `deadline` for `n` subscribed clients.
    pub async fn wait_subscribers(&self, n: usize, deadline: Duration) {
        let started = Instant::now();
        while self.subscribers() < n {
            assert!(
                started.elapsed() < deadline,
                "{n} clients did not subscribe to the websocket stand-in within {deadline:?} (have {})",
                self.subscribers()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn client(
    stream: tokio::net::TcpStream,
    received: Arc<Mutex<Vec<Value>>>,
    subscribed: Arc<Mutex<usize>>,
    mut emitted: broadcast::Receiver<Arc<str>>,
) {
    // As a node's websocket server: small messages go out at once.
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut incoming) = ws.split();
    let mut is_subscribed = false;
    loop {
        tokio::select! {
            message = incoming.next() => {
                let text = match message {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => break,
                };
                let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
                received.lock().expect("lock").push(value.clone());
                let ack = value["ack"] == Value::Bool(true) || value["ack"] == "true";
                let id = value["id"].as_str().map(str::to_string);
                let answer = match value["action"].as_str() {
                    Some("subscribe") if value["topic"] == "confirmation" => {
                        if !is_subscribed {
                            is_subscribed = true;
                            *subscribed.lock().expect("lock") += 1;
                        }
                        ack.then(|| serde_json::json!({"id": id, "ack": "subscribe", "time": now_ms()}))
                    }
                    Some("unsubscribe") => {
                        if is_subscribed {
                            is_subscribed = false;
                            *subscribed.lock().expect("lock") -= 1;
                        }
                        ack.then(|| serde_json::json!({"id": id, "ack": "unsubscribe", "time": now_ms()}))
                    }
                    Some("ping") => Some(serde_json::json!({"ack": "pong", "time": now_ms()})),
                    _ => None,
                };
                if let Some(answer) = answer {
                    if sink.send(Message::text(answer.to_string())).await.is_err() {
                        break;
                    }
                }
            }
            text = emitted.recv() => match text {
                Ok(text) if is_subscribed => {
                    if sink.send(Message::text(text.to_string())).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    if is_subscribed {
        *subscribed.lock().expect("lock") -= 1;
    }
}
