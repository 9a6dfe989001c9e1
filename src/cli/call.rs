//! `nano-connect call`: send Nano RPC requests through the mesh.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::Args;
use nano_connect::defaults::DEFAULT_SERVICE_KEY;
use nano_connect::nano::retry::{failover_safe, options_for};
use nano_connect::protocol::identity::NodeId;
use nano_connect::route::error::exit;
use nano_connect::route::quorum::{request_quorum, QuorumError};
use nano_connect::route::{Answer, RpcClient, RpcClientConfig};
use serde_json::{Map, Value};

use super::route::RouteArgs;

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
/// Workers are found through --grape, --broker, or this process's own DHT node
/// (--bootstrap; by default the public mainline DHT), public ones and those behind NATs
/// alike. Every worker proves its node id in the QUIC handshake; --worker ID reaches
/// exactly that node or fails.
///
/// Exit codes: 0 answer printed; 1 other failure; 2 bad command line; 3 the worker
/// refused (action not allowed, invalid request); 4 the node answered an error
/// ({"error": ...} or an HTTP error such as RsNano's 422; its answer is still printed);
/// 5 no worker announces the key; 6 timeout; 7 the DHT, grape or every worker
/// unreachable; 8 --quorum not met (the workers disagree, or too few announce the key).
///
/// Read-only actions are retried on another worker when one fails; process,
/// work_generate and block_confirm are sent to one worker only.
///
/// With -v, one line per answer on stderr:
///   nano-connect: path=direct|punched|relayed worker=IP:PORT node=ID elapsed_ms=N.N
/// direct: QUIC went straight to an address the worker listens on (no NAT in front of
/// it); punched: through the worker's NAT, opened by hole punching; relayed: through a
/// broker. elapsed_ms runs from the start of the command to the first answer, then from
/// each request's start.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CallArgs {
    #[command(flatten)]
    route: RouteArgs,
    /// Service key to look up.
    #[arg(long, default_value = DEFAULT_SERVICE_KEY, value_name = "KEY")]
    service: String,
    /// Send only to this worker (its node id, as its "listening" line shows); repeat for
    /// several. Any other node, and anything on the path standing in for it, is refused.
    #[arg(long = "worker", value_name = "NODE_ID")]
    workers: Vec<NodeId>,
    /// The whole request as a JSON object, instead of ACTION and NAME=VALUE.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["action", "params"])]
    json: Option<String>,
    /// Milliseconds allowed for each request, lookup and failover included.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    timeout: u64,
    /// Ask N distinct workers (by node id) and print the answer only when a strict
    /// majority of them agree byte for byte (1: no quorum). Defends against a lying
    /// worker. Read-only actions only: process, work_generate and block_confirm still go
    /// to one worker.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=15))]
    quorum: u16,
    /// Skip hole punching and use the broker's relay at once (tests).
    #[arg(long, hide = true)]
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
    let discovery = match args.route.discovery().await {
        Ok(discovery) => discovery,
        Err(e) => {
            eprintln!("nano-connect: {}", super::chain(&e));
            return exit::UNREACHABLE;
        }
    };
    let config = RpcClientConfig {
        request_timeout: Duration::from_millis(args.timeout),
        punch_deadline: Duration::from_millis(args.punch_deadline),
        force_relay: args.force_relay,
        ..RpcClientConfig::default()
    };
    let client = match RpcClient::new(discovery, config) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("nano-connect: {e}");
            return exit::FAILURE;
        }
    };
    let mut client = client.with_trust(args.workers.clone());
    if let Some(cache) = args.route.cache() {
        client = client.with_cache(cache);
    }
    let call = Call {
        client: &client,
        key: &args.service,
        quorum: args.quorum,
        verbose,
    };
    let code = match body {
        Some(body) => call.one(&body, started).await,
        None => call.session(started).await,
    };
    // close() queues CONNECTION_CLOSE at once; the short wait only lets the driver send
    // it. Waiting out the draining period (3 PTOs) would add up to 200 ms to every call
    // on a punched path, where it rarely completes early.
    client.close(CLOSE_GRACE).await;
    code
}

/// One `call` invocation's requests.
struct Call<'a> {
    client: &'a RpcClient,
    key: &'a str,
    quorum: u16,
    verbose: u8,
}

impl Call<'_> {
    /// One request: with failover for read-only actions, or to `quorum` workers. The
    /// opt-ins (process, ...) go to one worker even with a quorum: see
    /// nano_connect::gateway, "Failover and quorum".
    async fn send(&self, body: &[u8]) -> Result<Answer, QuorumError> {
        if self.quorum > 1 && failover_safe(body) {
            request_quorum(self.client, self.key, body, usize::from(self.quorum)).await
        } else {
            Ok(self
                .client
                .request_with(self.key, body, options_for(body))
                .await?)
        }
    }

    async fn one(&self, body: &[u8], started: Instant) -> u8 {
        match self.send(body).await {
            Ok(answer) => {
                if self.verbose > 0 {
                    describe_path(&answer, started.elapsed());
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
                eprintln!("nano-connect: {e}");
                e.exit_code()
            }
        }
    }

    /// Reads one JSON request per line from stdin and prints one answer line for each,
    /// until the end of stdin or Ctrl-C. A line that is not UTF-8 JSON gets an error line
    /// and the session goes on. Returns the exit code of the last failure, or 0.
    async fn session(&self, started: Instant) -> u8 {
        let interactive = std::io::stdin().is_terminal();
        if interactive {
            eprintln!("nano-connect: one JSON request per line, e.g. {{\"action\":\"block_count\"}}; Ctrl-D ends");
        }
        let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<Result<Vec<u8>, String>>(16);
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            let mut stdin = stdin.lock();
            loop {
                let mut line = Vec::new();
                let read = match stdin.read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => Ok(line),
                    Err(e) => Err(e.to_string()),
                };
                let failed = read.is_err();
                if lines_tx.blocking_send(read).is_err() || failed {
                    break;
                }
            }
        });
        let mut code = exit::OK;
        let mut first = true;
        let mut number = 0u64;
        loop {
            if interactive {
                eprint!("> ");
            }
            let line = tokio::select! {
                line = lines.recv() => line,
                _ = super::shutdown_signal() => None,
            };
            let Some(line) = line else { break };
            number += 1;
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    eprintln!("nano-connect: cannot read stdin: {e}");
                    code = exit::FAILURE;
                    break;
                }
            };
            let Ok(text) = std::str::from_utf8(&line) else {
                code = exit::USAGE;
                println!(
                    "{}",
                    error_line(
                        &format!("line {number} is not UTF-8 text: not sent"),
                        "invalid_request"
                    )
                );
                continue;
            };
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let since = if first { started } else { Instant::now() };
            let output = match serde_json::from_str::<Value>(text) {
                Ok(value) if value.is_object() => match self.send(text.as_bytes()).await {
                    Ok(answer) => {
                        first = false;
                        if self.verbose > 0 {
                            describe_path(&answer, since.elapsed());
                        }
                        if node_error(&answer).is_some() {
                            code = exit::NODE_ERROR;
                        }
                        one_line(&answer)
                    }
                    Err(e) => {
                        code = e.exit_code();
                        error_line(&e.to_string(), e.code())
                    }
                },
                _ => {
                    code = exit::USAGE;
                    error_line(
                        &format!("line {number} is not a JSON object: not sent"),
                        "invalid_request",
                    )
                }
            };
            println!("{output}");
        }
        code
    }
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
fn describe_path(answer: &Answer, elapsed: Duration) {
    eprintln!(
        "nano-connect: path={} worker={} node={} elapsed_ms={:.1}",
        answer.path.as_str(),
        answer.worker,
        answer.node,
        elapsed.as_secs_f64() * 1e3
    );
}
