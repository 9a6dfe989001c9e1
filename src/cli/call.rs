//! `nano-connect call`: send Nano RPC requests through the mesh.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use clap::Args;
use nano_connect::defaults::{DEFAULT_GRAPE_URL, DEFAULT_SERVICE_KEY};
use nano_connect::frame::ErrorCode;
use nano_connect::link::Link;
use nano_connect::nano::retry::{failover_safe, options_for};
use nano_connect::rpc::quorum::{request_quorum, QuorumError};
use nano_connect::rpc::{Answer, CallError, RpcClient, RpcClientConfig};
use serde_json::{Map, Value};

use super::exit;

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
    /// Ask N distinct workers and print the answer only when a strict majority of them
    /// agree byte for byte (1: no quorum). Defends against a lying worker. Read-only
    /// actions only: process, work_generate and block_confirm still go to one worker.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=15))]
    quorum: u16,
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
    let client = match RpcClient::new(Some(Link::new(&args.grape)), config) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("nano-connect: {e}");
            return exit::FAILURE;
        }
    };
    let code = match body {
        Some(body) => one(&client, &args.service, &body, args.quorum, verbose).await,
        None => session(&client, &args.service, args.quorum, verbose).await,
    };
    client.close(Duration::from_millis(200)).await;
    code
}

/// One request: with failover for read-only actions, or to `quorum` workers.
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

async fn one(client: &RpcClient, key: &str, body: &[u8], quorum: u16, verbose: u8) -> u8 {
    match send(client, key, body, quorum).await {
        Ok(answer) => {
            if verbose > 0 {
                describe_path(&answer);
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
            exit_code(&e)
        }
    }
}

/// Reads one JSON request per line from stdin and prints one answer line for each.
/// Returns the exit code of the last failure, or 0.
async fn session(client: &RpcClient, key: &str, quorum: u16, verbose: u8) -> u8 {
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
        let output = match serde_json::from_str::<Value>(line) {
            Ok(value) if value.is_object() => {
                match send(client, key, line.as_bytes(), quorum).await {
                    Ok(answer) => {
                        if verbose > 0 {
                            describe_path(&answer);
                        }
                        if node_error(&answer).is_some() {
                            code = exit::NODE_ERROR;
                        }
                        one_line(&answer)
                    }
                    Err(e) => {
                        code = exit_code(&e);
                        error_line(&e.to_string(), error_name(&e))
                    }
                }
            }
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

fn describe_path(answer: &Answer) {
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    eprintln!(
        "nano-connect: answered by {} over a direct QUIC path; lookup {}, connect {}, exchange {}{}",
        answer.worker,
        ms(answer.lookup),
        answer.connect.map_or("reused".to_string(), ms),
        ms(answer.exchange),
        if answer.failovers > 0 {
            format!(", after {} failed worker(s)", answer.failovers)
        } else {
            String::new()
        }
    );
}

fn exit_code(e: &QuorumError) -> u8 {
    let e = match e {
        QuorumError::Call(e) => e,
        _ => return exit::NO_QUORUM,
    };
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

fn error_name(e: &QuorumError) -> &'static str {
    let e = match e {
        QuorumError::Call(e) => e,
        QuorumError::Disagreement(_) => return "disagreement",
        _ => return "no_quorum",
    };
    match e {
        CallError::Refused { error, .. } => error.code.as_str(),
        CallError::NoWorkers { .. } => "no_worker",
        CallError::Timeout { .. } => "timeout",
        CallError::Lookup(_) | CallError::Unreachable { .. } => "unreachable",
        _ => "failure",
    }
}
