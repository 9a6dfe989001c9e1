//! The main job end to end, with every part real: two grape processes forming a private
//! DHT on 127.0.0.1, worker processes relaying to an in-process Nano node stand-in that
//! answers from real RsNano fixtures, and `nano-connect call` processes (or the library's
//! client) on the other side.

mod support;

use std::time::{Duration, Instant};

use nano_connect::discovery::link::Link;
use nano_connect::discovery::Directory;
use nano_connect::nano::actions::{NANO_NODE_ACTIONS, READ_ONLY_ACTIONS};
use nano_connect::protocol::frame::ErrorCode;
use nano_connect::route::{CallError, Discovery, RpcClient, RpcClientConfig};
use serde_json::Value;
use support::mesh::{self, two_grapes, wait_announced};
use support::nano_stub::{fixtures, Mode, NanoStub};

/// Announce window of the test grapes (s) and the workers' interval (s): the interval is
/// half the window, as in the defaults (120 s and 240 s).
const WINDOW: f64 = 2.0;
const INTERVAL: &str = "1";

struct Mesh {
    grapes: (mesh::GrapeProcess, mesh::GrapeProcess),
    stub: NanoStub,
}

impl Mesh {
    /// Two grapes and a stub, no workers yet.
    async fn new(mode: Mode) -> Mesh {
        let grapes = tokio::task::block_in_place(|| two_grapes(WINDOW));
        let stub = NanoStub::start(mode).await;
        Mesh { grapes, stub }
    }

    /// A worker announcing `nano_rpc` through grape A, relaying to the stub. The stub's
    /// record is cleared of the worker's start-up probe (`version`), which it sends
    /// before it reports listening.
    async fn worker(&self, extra: &[&str]) -> (mesh::Process, u16) {
        let url = self.stub.url();
        let mut args = vec!["--nano-rpc", url.as_str(), "--announce-interval", INTERVAL];
        args.extend_from_slice(extra);
        let started =
            tokio::task::block_in_place(|| mesh::worker(&self.grapes.0.url, "nano_rpc", &args));
        assert_eq!(
            self.stub.actions_received(),
            ["version"],
            "the start-up probe"
        );
        self.stub.clear_received();
        started
    }

    /// Runs `nano-connect call --grape <grape B> ARGS`.
    async fn call(&self, args: &[&str], stdin: &str) -> std::process::Output {
        let mut all = vec![
            "call",
            "--grape",
            self.grapes.1.url.as_str(),
            "--timeout",
            "8000",
        ];
        all.extend_from_slice(args);
        mesh::run(&all, stdin).await
    }

    fn client(&self) -> RpcClient {
        RpcClient::new(
            Discovery::Directory(Directory::Grape(Link::with_cache_ttl(
                &self.grapes.1.url,
                Duration::ZERO,
            ))),
            RpcClientConfig {
                connect_timeout: Duration::from_millis(500),
                request_timeout: Duration::from_secs(8),
                ..RpcClientConfig::default()
            },
        )
        .expect("client")
    }
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_relays_block_count_to_the_node_and_prints_its_answer() {
    let mesh = Mesh::new(Mode::RsNano).await;
    let (_worker, port) = mesh.worker(&[]).await;
    wait_announced(&mesh.grapes.1.url, "nano_rpc", &[port]).await;

    let output = mesh.call(&["block_count"], "").await;
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(
        stdout(&output).trim(),
        r#"{"count":"3","unchecked":"0","cemented":"3"}"#
    );
    let received = mesh.stub.received();
    assert_eq!(received.len(), 1, "exactly one request reached the node");
    assert_eq!(received[0].method, "POST");
    assert_eq!(received[0].path, "/");
    assert_eq!(
        received[0].json(),
        Some(serde_json::json!({"action": "block_count"}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_allowlisted_fixture_comes_back_byte_for_byte() {
    let mesh = Mesh::new(Mode::RsNano).await;
    let (_worker, port) = mesh.worker(&[]).await;
    wait_announced(&mesh.grapes.1.url, "nano_rpc", &[port]).await;
    let client = mesh.client();
    let mut checked = 0;
    for fixture in fixtures() {
        let allowed = fixture
            .action()
            .is_some_and(|a| READ_ONLY_ACTIONS.contains(&a));
        if !allowed {
            continue;
        }
        let body = serde_json::to_vec(&fixture.request).unwrap();
        let answer = client.request("nano_rpc", &body).await.expect("answer");
        assert_eq!(answer.status, fixture.status, "{:?}", fixture.request);
        assert_eq!(
            answer.body,
            fixture.body.as_bytes(),
            "{:?}",
            fixture.request
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} fixtures checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_off_the_allowlist_is_refused_and_never_reaches_the_node() {
    let mesh = Mesh::new(Mode::NanoNode).await;
    let (_worker, port) = mesh.worker(&[]).await;
    wait_announced(&mesh.grapes.1.url, "nano_rpc", &[port]).await;
    let client = mesh.client();
    let refused: Vec<&str> = NANO_NODE_ACTIONS
        .iter()
        .copied()
        .filter(|a| !READ_ONLY_ACTIONS.contains(a))
        .chain(["unknown_action_xyz", "", "BLOCK_COUNT"])
        .collect();
    assert!(refused.len() > 50);
    for action in &refused {
        let body = serde_json::json!({ "action": action, "force": "true" }).to_string();
        match client.request("nano_rpc", body.as_bytes()).await {
            Err(CallError::Refused { error, .. }) => {
                assert_eq!(error.code, ErrorCode::ActionNotAllowed, "{action}")
            }
            other => panic!("{action}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(mesh.stub.received().len(), 0, "nothing reached the node");

    // Through the command line: one clear line on stderr, exit code 3.
    let output = mesh.call(&["wallet_export", "wallet=000"], "").await;
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("wallet_export"),
        "{}",
        stderr(&output)
    );
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
    assert!(stdout(&output).is_empty());
    assert_eq!(mesh.stub.received().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_errors_pass_through_with_exit_code_4() {
    let mesh = Mesh::new(Mode::RsNano).await;
    let (_worker, port) = mesh.worker(&[]).await;
    wait_announced(&mesh.grapes.1.url, "nano_rpc", &[port]).await;

    // nano-node style: HTTP 200 with {"error": ...}.
    let output = mesh
        .call(
            &[
                "account_info",
                "account=nano_1111111111111111111111111111111111111111111111111111hifc8npp",
            ],
            "",
        )
        .await;
    assert_eq!(output.status.code(), Some(4), "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output).trim(), r#"{"error":"Account not found"}"#);
    assert!(stderr(&output).contains("Account not found"));

    // RsNano style: HTTP 422 with plain text.
    let output = mesh.call(&["account_info"], "").await;
    assert_eq!(output.status.code(), Some(4), "stderr: {}", stderr(&output));
    assert!(stdout(&output).contains("missing field `account`"));
    assert!(stderr(&output).contains("422"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_session_answers_one_line_per_request_on_one_connection() {
    let mesh = Mesh::new(Mode::RsNano).await;
    let (worker, port) = mesh.worker(&[]).await;
    wait_announced(&mesh.grapes.1.url, "nano_rpc", &[port]).await;
    let node = worker.field("node_id");
    let input = concat!(
        "{\"action\":\"block_count\"}\n",
        "not json\n",
        "{\"action\":\"uptime\"}\n",
        "{\"action\":\"wallet_create\"}\n",
        "{\"action\":\"account_info\"}\n",
    );
    let output = mesh.call(&["-v"], input).await;
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each answer is one JSON line"))
        .collect();
    assert_eq!(lines.len(), 5, "{}", stdout(&output));
    assert_eq!(lines[0]["count"], "3");
    assert_eq!(lines[1]["code"], "invalid_request");
    assert_eq!(lines[2]["seconds"], "74");
    assert_eq!(lines[3]["code"], "action_not_allowed");
    assert_eq!(lines[4]["status"], 422);
    // -v gives one path line per answer (block_count, uptime, account_info's 422).
    let err = stderr(&output);
    let prefix =
        format!("nano-connect: path=direct worker=127.0.0.1:{port} node={node} elapsed_ms=");
    let paths: Vec<&str> = err.lines().filter(|l| l.contains("path=")).collect();
    assert_eq!(paths.len(), 3, "{err}");
    for line in paths {
        let ms = line
            .strip_prefix(&prefix)
            .expect("the documented -v format");
        assert!(ms.parse::<f64>().is_ok_and(|ms| ms >= 0.0), "{line}");
    }
    assert_eq!(
        mesh.stub.received().len(),
        3,
        "block_count, uptime, account_info"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_and_no_grape_have_their_own_exit_codes() {
    let mesh = Mesh::new(Mode::RsNano).await;
    let output = mesh
        .call(&["--service", "nobody_serves_this", "block_count"], "")
        .await;
    assert_eq!(output.status.code(), Some(5), "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains("no worker announces"));

    let output = mesh::run(
        &[
            "call",
            "--grape",
            "http://127.0.0.1:9",
            "--timeout",
            "3000",
            "block_count",
        ],
        "",
    )
    .await;
    assert_eq!(output.status.code(), Some(7), "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains("grape at http://127.0.0.1:9 is unreachable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_a_clear_error_not_a_hang() {
    let mesh = Mesh::new(Mode::RsNano).await;
    let (_worker, port) = {
        // A worker pointed at a port where no node listens.
        tokio::task::block_in_place(|| {
            mesh::worker(
                &mesh.grapes.0.url,
                "nano_rpc",
                &[
                    "--nano-rpc",
                    "http://127.0.0.1:9",
                    "--announce-interval",
                    INTERVAL,
                ],
            )
        })
    };
    wait_announced(&mesh.grapes.1.url, "nano_rpc", &[port]).await;
    let started = Instant::now();
    let output = mesh.call(&["block_count"], "").await;
    assert_eq!(output.status.code(), Some(7), "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).contains("unreachable"),
        "{}",
        stderr(&output)
    );
    assert!(started.elapsed() < Duration::from_secs(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_workers_are_found_and_a_killed_one_is_failed_over() {
    let mesh = Mesh::new(Mode::RsNano).await;
    let (mut first, first_port) = mesh.worker(&[]).await;
    let (second, second_port) = mesh.worker(&[]).await;
    wait_announced(&mesh.grapes.1.url, "nano_rpc", &[first_port, second_port]).await;

    let client = mesh.client();
    // Both answer: map reaches each of them, named by the node id each proved.
    let mapped = client
        .map("nano_rpc", br#"{"action":"version"}"#)
        .await
        .unwrap();
    let answered: Vec<String> = mapped
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(node, _)| node.clone())
        .collect();
    assert!(answered.contains(&first.field("node_id")), "{answered:?}");
    assert!(answered.contains(&second.field("node_id")), "{answered:?}");

    // Kill the first without a goodbye; every later request is still answered, by the
    // second, each within the request deadline.
    first.kill();
    for _ in 0..5 {
        let started = Instant::now();
        let answer = client
            .request("nano_rpc", br#"{"action":"block_count"}"#)
            .await
            .expect("failover to the live worker");
        assert_eq!(answer.worker.port(), second_port);
        assert!(started.elapsed() < Duration::from_secs(8));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_only_worker_fails_clearly_within_the_timeout() {
    let mesh = Mesh::new(Mode::RsNano).await;
    let (mut worker, port) = mesh.worker(&[]).await;
    wait_announced(&mesh.grapes.1.url, "nano_rpc", &[port]).await;
    worker.kill();
    let started = Instant::now();
    let output = mesh::run(
        &[
            "call",
            "--grape",
            &mesh.grapes.1.url,
            "--timeout",
            "4000",
            "block_count",
        ],
        "",
    )
    .await;
    let code = output.status.code();
    assert!(
        code == Some(7) || code == Some(6),
        "unreachable or timeout, got {code:?}: {}",
        stderr(&output)
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_vanishes_from_lookups_within_two_announce_intervals() {
    let mesh = Mesh::new(Mode::RsNano).await;
    let (mut stopped, stopped_port) = mesh.worker(&[]).await;
    let (_alive, alive_port) = mesh.worker(&[]).await;
    wait_announced(&mesh.grapes.1.url, "nano_rpc", &[stopped_port, alive_port]).await;

    let status = stopped.terminate(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "graceful exit on SIGTERM: {status:?}"
    );
    let gone_at = Instant::now();
    let stopped_addr = format!("127.0.0.1:{stopped_port}");
    let alive_addr = format!("127.0.0.1:{alive_port}");
    // Two announce intervals (2 × 1 s = the window), plus slack for the lookup itself.
    mesh::poll(Duration::from_secs(4), "stopped worker gone", || async {
        let found = mesh::lookup(&mesh.grapes.1.url, "nano_rpc").await;
        assert!(
            found.contains(&alive_addr),
            "the live worker stays visible: {found:?}"
        );
        (!found.contains(&stopped_addr)).then_some(())
    })
    .await;
    assert!(gone_at.elapsed() <= Duration::from_millis(2_000 + 1_500));
}

/// A node slower than the old fixed 3 s attempt: the call's own budget (20 s) is what
/// counts, so it is answered, by one node, instead of failing over to every worker and
/// exiting "unreachable" after 3 s (issue "proven under attack", defect 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_gets_the_callers_budget_and_is_asked_once() {
    let mesh = Mesh::new(Mode::RsNano).await;
    let (_first, first_port) = mesh.worker(&["--node-timeout", "15000"]).await;
    let (_second, second_port) = mesh.worker(&["--node-timeout", "15000"]).await;
    wait_announced(&mesh.grapes.1.url, "nano_rpc", &[first_port, second_port]).await;
    mesh.stub.clear_received();
    mesh.stub.set_delay(Duration::from_secs(4));
    let started = Instant::now();
    let output = mesh::run(
        &[
            "call",
            "--grape",
            mesh.grapes.1.url.as_str(),
            "--timeout",
            "20000",
            "block_count",
        ],
        "",
    )
    .await;
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("\"count\""), "{}", stdout(&output));
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(mesh.stub.actions_received(), ["block_count"], "asked once");

    // A budget too short for the node: a timeout that says whom it waited for. Uncached:
    // the first call's answer may still be in the worker's cache (1 s).
    mesh.stub.clear_received();
    let output = mesh::run(
        &[
            "call",
            "--grape",
            mesh.grapes.1.url.as_str(),
            "--timeout",
            "2500",
            "--json",
            r#"{"action":"block_count","uncached":"true"}"#,
        ],
        "",
    )
    .await;
    assert_eq!(output.status.code(), Some(6), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("no answer within"), "{text}");
}

/// A line of stdin that is not UTF-8 gets an error line of its own and the session goes
/// on (it used to end silently with exit 0; issue "proven under attack", defect 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdin_line_that_is_not_utf8_is_answered_with_an_error_and_the_session_goes_on() {
    let mesh = Mesh::new(Mode::RsNano).await;
    let (_worker, port) = mesh.worker(&[]).await;
    wait_announced(&mesh.grapes.1.url, "nano_rpc", &[port]).await;
    let mut input = b"{\"action\":\"block_count\"}\n".to_vec();
    input.extend_from_slice(b"{\"action\":\"\xff\xfe\"}\n");
    input.extend_from_slice(b"{\"action\":\"uptime\"}\n");
    let output = mesh::run_with_input(
        &[
            "call",
            "--grape",
            mesh.grapes.1.url.as_str(),
            "--timeout",
            "8000",
        ],
        &input,
    )
    .await;
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 3, "{}", stdout(&output));
    assert_eq!(lines[0]["count"], "3");
    assert_eq!(lines[1]["code"], "invalid_request");
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("line 2 is not UTF-8"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["seconds"], "74");
    assert_eq!(
        output.status.code(),
        Some(2),
        "the exit code tells a line was refused"
    );
    assert_eq!(mesh.stub.actions_received(), ["block_count", "uptime"]);
}
