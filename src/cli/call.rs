//! `nano-connect call`: send Nano RPC requests through the mesh.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use nano_connect::defaults::{DEFAULT_GRAPE_URL, DEFAULT_SERVICE_KEY};
use nano_connect::discovery::link::Link;
use nano_connect::nano::retry::{failover_safe, options_for};
use nano_connect::protocol::broker::RefusalCode;
use nano_connect::protocol::frame::ErrorCode;
use nano_connect::route::quorum::{request_quorum, QuorumError};
use nano_connect::route::reach::{connect_via_broker, Brokered, ConnectConfig, PathKind};
use nano_connect::route::{Answer, CallError, RpcClient, RpcClientConfig};
use nano_connect::transport::client_endpoint;
use nano_connect::transport::nat_socket::{Diverted, NatSocket};
use nano_connect::traversal::{broker_of, BrokerError};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::exit;

/// How long `call` waits at exit for its connection close to go out.
const CLOSE_GRACE: Duration = Duration::from_millis(30);

/// Send a Nano RPC request to a worker of the mesh and print the node's JSON answer.
///
///   nano-connect call block_count
///   nano-connect call account_balance account=nano_3e3j5...
///   nano-connect call --json '{"action":"version"}'
///   nano-connect call            (then one JSON request per line on stdin)
///
/// NAME=VALUE pairs become string fields, as the Nano RPC expects; a VALUE that starts
/// with `[` or `{` is parsed as JSON (accounts=["nano_1...","nano_3..."]).
/// With no ACTION and no --json, requests are read from stdin, one JSON object per
/// line, and one answer is printed per line on one connection.
///
/// Exit codes: 0 answer printed; 1 other failure; 2 bad command line; 3 the worker
/// refused (action not allowed, invalid request); 4 the node answered an error
/// ({"error": ...} or an HTTP error such as RsNano's 422; its answer is still printed);
/// 5 no worker announces the key; 6 timeout; 7 the grape or every worker unreachable;
/// 8 --quorum not met (the workers disagree, or too few announce the key).
///
/// Read-only actions are retried on another worker when one fails; process,
/// work_generate and block_confirm are sent to one worker only.
///
/// With -v, one line per answer on stderr:
///   nano-connect: path=direct|punched|relayed worker=IP:PORT elapsed_ms=N.N
/// direct: QUIC went straight to an address the worker listens on (no NAT in front of
/// it); punched: through the worker's NAT, opened by hole punching; relayed: through the
/// broker. elapsed_ms runs from the start of the command to the first answer, then from
/// each request's start.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CallArgs {
    /// The grape's HTTP API used for the lookup.
    #[arg(long, default_value = DEFAULT_GRAPE_URL, value_name = "URL")]
    grape: String,
    /// Service key to look up.
    #[arg(long, default_value = DEFAULT_SERVICE_KEY, value_name = "KEY")]
    service: String,
    /// The whole request as a JSON object, instead of ACTION and NAME=VALUE.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["action", "params"])]
    json: Option<String>,
    /// Milliseconds allowed for each request, lookup and failover included.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    timeout: u64,
    /// Find a worker through the broker of the grape whose DHT address is HOST:PORT
    /// (the broker listens on PORT + 10000) instead of a lookup through --grape: reaches
    /// workers behind NATs directly, by hole punching, or through the broker's relay.
    #[arg(long, value_name = "HOST:PORT")]
    broker: Option<String>,
    /// Ask N distinct workers and print the answer only when a strict majority of them
    /// agree byte for byte (1: no quorum). Defends against a lying worker. Read-only
    /// actions only: process, work_generate and block_confirm still go to one worker.
    /// Needs --grape (a broker introduces one worker).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=15), conflicts_with = "broker")]
    quorum: u16,
    /// Skip hole punching and use the broker's relay at once (tests).
    #[arg(long, hide = true, requires = "broker")]
    force_relay: bool,
    /// Milliseconds to open a direct path before asking the broker to relay.
    #[arg(long, hide = true, value_name = "MS", default_value_t = nano_connect::defaults::DEFAULT_PUNCH_DEADLINE.as_millis() as u64)]
    punch_deadline: u64,
    /// The Nano RPC action, for example block_count.
    action: Option<String>,
    /// Request fields as NAME=VALUE.
    #[arg(value_name = "NAME=VALUE")]
    params: Vec<String>,
}

/// The request body built from the command line, or `None` for stdin mode.
fn request_body(args: &CallArgs) -> Result<Option<Vec<u8>>, String> {
    if let Some(json) = &args.json {
        let value: Value =
            serde_json::from_str(json).map_err(|e| format!("--json is not valid JSON: {e}"))?;
        if !value.is_object() {
            return Err("--json must be a JSON object such as {\"action\":\"block_count\"}".into());
        }
        return Ok(Some(json.as_bytes().to_vec()));
    }
    let Some(action) = &args.action else {
        return Ok(None);
    };
    let mut object = Map::new();
    object.insert("action".into(), Value::String(action.clone()));
    for param in &args.params {
        let (name, value) = param
            .split_once('=')
            .ok_or_else(|| format!("{param:?} is not NAME=VALUE"))?;
        let value = if value.starts_with('[') || value.starts_with('{') {
            serde_json::from_str(value)
                .map_err(|e| format!("value of {name} is not valid JSON: {e}"))?
        } else {
            Value::String(value.to_string())
        };
        object.insert(name.to_string(), value);
    }
    Ok(Some(Value::Object(object).to_string().into_bytes()))
}

pub async fn run(args: CallArgs, verbose: u8) -> u8 {
    let started = Instant::now();
    let body = match request_body(&args) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("nano-connect: {e}");
            return exit::USAGE;
        }
    };
    let config = RpcClientConfig {
        request_timeout: Duration::from_millis(args.timeout),
        ..RpcClientConfig::default()
    };
    let target = match &args.broker {
        Some(broker) => Target::broker(broker, &args, config),
        None => RpcClient::new(Some(Link::new(&args.grape)), config)
            .map(|client| Target::Grape {
                client,
                quorum: args.quorum,
            })
            .map_err(|e| e.to_string()),
    };
    let mut target = match target {
        Ok(target) => target,
        Err(e) => {
            eprintln!("nano-connect: {e}");
            return exit::FAILURE;
        }
    };
    let code = match body {
        Some(body) => one(&mut target, &args.service, &body, verbose, started).await,
        None => session(&mut target, &args.service, verbose, started).await,
    };
    // close() queues CONNECTION_CLOSE at once; the short wait only lets the driver send
    // it. Waiting out the draining period (3 PTOs) would add up to 200 ms to every call
    // on a punched path, where it rarely completes early.
    target.client().close(CLOSE_GRACE).await;
    code
}

/// A request that got no answer: the line for people, the exit code, the short name.
struct Failure {
    message: String,
    code: u8,
    name: &'static str,
}

impl From<QuorumError> for Failure {
    fn from(e: QuorumError) -> Self {
        match e {
            QuorumError::Call(e) => e.into(),
            QuorumError::Disagreement(_) => Self {
                message: e.to_string(),
                code: exit::NO_QUORUM,
                name: "disagreement",
            },
            other => Self {
                message: other.to_string(),
                code: exit::NO_QUORUM,
                name: "no_quorum",
            },
        }
    }
}

/// One request through a grape lookup: with failover for read-only actions, or to
/// `quorum` workers.
async fn send(
    client: &RpcClient,
    key: &str,
    body: &[u8],
    quorum: u16,
) -> Result<Answer, QuorumError> {
    // The opt-ins (process, ...) go to one worker even with a quorum: see
    // nano_connect::gateway, "Failover and quorum".
    if quorum > 1 && failover_safe(body) {
        request_quorum(client, key, body, usize::from(quorum)).await
    } else {
        Ok(client.request_with(key, body, options_for(body)).await?)
    }
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Self {
        Self {
            message: e.to_string(),
            code: exit_code(&e),
            name: error_name(&e),
        }
    }
}

/// Where requests go: workers looked up through a grape, or one worker reached
/// through a broker.
#[allow(clippy::large_enum_variant)] // one per process
enum Target {
    Grape {
        client: RpcClient,
        quorum: u16,
    },
    Broker {
        client: RpcClient,
        socket: Arc<NatSocket>,
        diverted: Option<mpsc::Receiver<Diverted>>,
        config: ConnectConfig,
        connected: Option<Brokered>,
    },
}

impl Target {
    fn broker(broker: &str, args: &CallArgs, config: RpcClientConfig) -> Result<Self, String> {
        let broker = broker_of(broker).map_err(|e| e.to_string())?;
        let bind = SocketAddr::from(([0, 0, 0, 0], 0));
        let (socket, diverted) =
            NatSocket::bind(bind).map_err(|e| format!("cannot bind UDP {bind}: {e}"))?;
        let abstract_socket: Arc<dyn quinn::AsyncUdpSocket> = socket.clone();
        let endpoint = client_endpoint(abstract_socket, &config.quic).map_err(|e| e.to_string())?;
        let mut connect = ConnectConfig::new(broker, args.service.clone());
        connect.force_relay = args.force_relay;
        connect.punch_deadline = Duration::from_millis(args.punch_deadline);
        Ok(Self::Broker {
            client: RpcClient::with_endpoint(endpoint, None, config),
            socket,
            diverted: Some(diverted),
            config: connect,
            connected: None,
        })
    }

    fn client(&self) -> &RpcClient {
        match self {
            Self::Grape { client, .. } | Self::Broker { client, .. } => client,
        }
    }

    /// Sends one request; returns the answer and the path it took.
    async fn request(
        &mut self,
        key: &str,
        body: &[u8],
    ) -> Result<(Answer, PathKind, SocketAddr), Failure> {
        match self {
            Self::Grape { client, quorum } => {
                let answer = send(client, key, body, *quorum).await?;
                let worker = answer.worker;
                Ok((answer, PathKind::Direct, worker))
            }
            Self::Broker {
                client,
                socket,
                diverted,
                config,
                connected,
            } => {
                let after = client.config().request_timeout;
                let deadline = tokio::time::Instant::now() + after;
                if connected.is_none() {
                    let Some(rx) = diverted.take() else {
                        return Err(Failure {
                            message: "the connection to the worker was lost".into(),
                            code: exit::UNREACHABLE,
                            name: "unreachable",
                        });
                    };
                    let made = tokio::time::timeout_at(
                        deadline,
                        connect_via_broker(client.endpoint(), socket.clone(), rx, config),
                    )
                    .await
                    .map_err(|_| Failure::from(CallError::Timeout { after }))?;
                    let mut brokered = made.map_err(broker_failure)?;
                    if let Some(endpoint) = brokered.endpoint.take() {
                        // The birthday method's socket carries this connection.
                        *client = RpcClient::with_endpoint(endpoint, None, client.config().clone());
                    }
                    client.adopt(brokered.remote, brokered.connection.clone());
                    *connected = Some(brokered);
                }
                let Some(brokered) = connected.as_mut() else {
                    return Err(Failure::from(CallError::Timeout { after }));
                };
                let mut closed = brokered.closed_by_broker.clone();
                let remote = brokered.remote;
                tokio::select! {
                    answer = client.request_addr(remote, key, body) => {
                        Ok((answer?, brokered.path, brokered.worker))
                    }
                    message = async {
                        match closed.wait_for(Option::is_some).await {
                            Ok(m) => m.clone().unwrap_or_default(),
                            // The listener ended with the connection: the request sees that.
                            Err(_) => std::future::pending().await,
                        }
                    } => {
                        Err(Failure { message, code: exit::UNREACHABLE, name: "relay_closed" })
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        Err(Failure::from(CallError::Timeout { after }))
                    }
                }
            }
        }
    }
}

fn broker_failure(e: BrokerError) -> Failure {
    let (code, name) = match &e {
        BrokerError::Refused {
            code: RefusalCode::NoWorker,
            ..
        } => (exit::NO_WORKER, "no_worker"),
        BrokerError::Address(_) => (exit::USAGE, "usage"),
        _ => (exit::UNREACHABLE, "unreachable"),
    };
    Failure {
        message: e.to_string(),
        code,
        name,
    }
}

async fn one(target: &mut Target, key: &str, body: &[u8], verbose: u8, started: Instant) -> u8 {
    match target.request(key, body).await {
        Ok((answer, path, worker)) => {
            if verbose > 0 {
                describe_path(path, worker, started.elapsed());
            }
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&answer.body);
            if !answer.body.ends_with(b"\n") {
                let _ = stdout.write_all(b"\n");
            }
            let _ = stdout.flush();
            match node_error(&answer) {
                Some(message) => {
                    eprintln!("nano-connect: node error: {message}");
                    exit::NODE_ERROR
                }
                None => exit::OK,
            }
        }
        Err(e) => {
            eprintln!("nano-connect: {}", e.message);
            e.code
        }
    }
}

/// Reads one JSON request per line from stdin and prints one answer line for each.
/// Returns the exit code of the last failure, or 0.
async fn session(target: &mut Target, key: &str, verbose: u8, started: Instant) -> u8 {
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("nano-connect: one JSON request per line, e.g. {{\"action\":\"block_count\"}}; Ctrl-D ends");
    }
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let mut code = exit::OK;
    let mut first = true;
    loop {
        if interactive {
            eprint!("> ");
        }
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = super::shutdown_signal() => None,
        };
        let Some(line) = line else { break };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let since = if first { started } else { Instant::now() };
        let output = match serde_json::from_str::<Value>(line) {
            Ok(value) if value.is_object() => match target.request(key, line.as_bytes()).await {
                Ok((answer, path, worker)) => {
                    first = false;
                    if verbose > 0 {
                        describe_path(path, worker, since.elapsed());
                    }
                    if node_error(&answer).is_some() {
                        code = exit::NODE_ERROR;
                    }
                    one_line(&answer)
                }
                Err(e) => {
                    code = e.code;
                    error_line(&e.message, e.name)
                }
            },
            _ => {
                code = exit::USAGE;
                error_line("not a JSON object", "invalid_request")
            }
        };
        println!("{output}");
    }
    code
}

/// The answer on one line: the node's JSON compacted, or a non-JSON answer (RsNano's
/// plain-text 422) wrapped as `{"error": text, "status": N}`.
fn one_line(answer: &Answer) -> String {
    match serde_json::from_slice::<Value>(&answer.body) {
        Ok(value) => value.to_string(),
        Err(_) => serde_json::json!({
            "error": String::from_utf8_lossy(&answer.body),
            "status": answer.status,
        })
        .to_string(),
    }
}

fn error_line(message: &str, code: &str) -> String {
    serde_json::json!({ "error": message, "code": code }).to_string()
}

/// The node's error, if the answer is one: a non-2xx status or a JSON `error` field.
fn node_error(answer: &Answer) -> Option<String> {
    if !(200..300).contains(&answer.status) {
        let text = String::from_utf8_lossy(&answer.body);
        return Some(format!("HTTP {}: {}", answer.status, text.trim()));
    }
    let value: Value = serde_json::from_slice(&answer.body).ok()?;
    value.get("error").map(|e| match e {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The `-v` line: which path carried the answer, from which worker, how long it took.
fn describe_path(path: PathKind, worker: SocketAddr, elapsed: Duration) {
    eprintln!(
        "nano-connect: path={} worker={} elapsed_ms={:.1}",
        path.as_str(),
        worker,
        elapsed.as_secs_f64() * 1e3
    );
}

fn exit_code(e: &CallError) -> u8 {
    match e {
        CallError::Refused { error, .. } => match error.code {
            ErrorCode::UpstreamUnreachable | ErrorCode::UpstreamTimeout => exit::UNREACHABLE,
            _ => exit::REFUSED,
        },
        CallError::NoWorkers { .. } => exit::NO_WORKER,
        CallError::Timeout { .. } => exit::TIMEOUT,
        CallError::Lookup(_) | CallError::Unreachable { .. } => exit::UNREACHABLE,
        _ => exit::FAILURE,
    }
}

fn error_name(e: &CallError) -> &'static str {
    match e {
        CallError::Refused { error, .. } => error.code.as_str(),
        CallError::NoWorkers { .. } => "no_worker",
        CallError::Timeout { .. } => "timeout",
        CallError::Lookup(_) | CallError::Unreachable { .. } => "unreachable",
        _ => "failure",
    }
}
