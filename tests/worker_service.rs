//! The worker's service rules end to end, with a real worker process and a Nano node
//! stand-in that records what reached it: the TOML config and flags (opt-ins, caps, size
//! limits, a separate work server), the per-client rate limit, the response cache, the
//! Prometheus metrics, and announcing only while the node answers.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use nano_connect::protocol::frame::ErrorCode;
use nano_connect::route::{Answer, CallError, Discovery, RpcClient, RpcClientConfig};
use serde_json::{json, Value};
use support::mesh::{self, poll, wait_announced};
use support::nano_stub::{Mode, NanoStub};

const ACCOUNT: &str = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";
const ACCOUNT_2: &str = "nano_3cn3tj1ueynwgo7fj6d748kfsk435bpezaro3rdmisyqbuuc9bp7c87srszd";

/// Two grapes, a worker relaying to a fresh stub with `extra` flags, and a client that
/// talks to the worker directly (no failover, so each refusal is seen as it is).
struct Setup {
    _grapes: (mesh::GrapeProcess, mesh::GrapeProcess),
    worker: mesh::Process,
    addr: SocketAddr,
    stub: NanoStub,
    client: RpcClient,
}

async fn setup(extra: &[&str]) -> Setup {
    let stub = NanoStub::start(Mode::RsNano).await;
    setup_with(stub, extra).await
}

async fn setup_with(stub: NanoStub, extra: &[&str]) -> Setup {
    let grapes = tokio::task::block_in_place(|| mesh::two_grapes(120.0));
    let url = stub.url();
    let mut args = vec!["--nano-rpc", url.as_str()];
    args.extend_from_slice(extra);
    let (worker, port) =
        tokio::task::block_in_place(|| mesh::worker(&grapes.0.url, "nano_rpc", &args));
    stub.clear_received();
    let client = RpcClient::new(Discovery::None, RpcClientConfig::default()).expect("client");
    Setup {
        _grapes: grapes,
        worker,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        stub,
        client,
    }
}

impl Setup {
    async fn ask(&self, body: Value) -> Result<Answer, CallError> {
        self.client
            .request_addr(self.addr, "nano_rpc", body.to_string().as_bytes())
            .await
    }

    async fn metrics(&self) -> String {
        let addr = self.worker.field("metrics");
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }
}

#[track_caller]
fn refusal(result: Result<Answer, CallError>) -> nano_connect::protocol::frame::WireError {
    match result {
        Err(CallError::Refused { error, .. }) => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The value of the sample `name` (with its labels, as printed) in a scrape.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_sets_the_policy_and_flags_override_it() {
    let work = NanoStub::start(Mode::RsNano).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("worker.toml");
    std::fs::write(
        &path,
        format!(
            "[node]\nwork_server = \"{}\"\n\n[policy]\nallow = [\"process\"]\nmax_count = 7\nmax_array_len = 2\n\n[limits]\nmax_request_bytes = 2048\n",
            work.url()
        ),
    )
    .expect("write config");
    let config = path.to_string_lossy().to_string();
    let s = setup(&["--config", &config, "--max-count", "3"]).await;

    // process (opted in by the file) reaches the node; force never does.
    s.ask(json!({"action": "process", "block": "{}"}))
        .await
        .expect("answer");
    let forced = refusal(
        s.ask(json!({"action": "process", "force": "true", "block": "{}"}))
            .await,
    );
    assert_eq!(forced.code, ErrorCode::ActionNotAllowed);
    // block_confirm was not opted in.
    let error = refusal(
        s.ask(json!({"action": "block_confirm", "hash": "00"}))
            .await,
    );
    assert_eq!(error.code, ErrorCode::ActionNotAllowed);
    // The flag's count cap (3) wins over the file's (7).
    s.ask(json!({"action": "account_history", "account": ACCOUNT, "count": "10"}))
        .await
        .expect("answer");
    // The file's array cap (2).
    let error = refusal(
        s.ask(json!({"action": "accounts_balances", "accounts": [ACCOUNT, ACCOUNT_2, ACCOUNT]}))
            .await,
    );
    assert_eq!(error.code, ErrorCode::InvalidRequest);
    // The file's request size limit (2048 bytes).
    let pad = "x".repeat(3000);
    let error = refusal(s.ask(json!({"action": "block_count", "pad": pad})).await);
    assert_eq!(error.code, ErrorCode::FrameTooLarge);
    // work_generate goes to the work server, not the node.
    s.ask(json!({"action": "work_generate", "hash": "8D8EDA98311516859B5DCDF05A268CDB2DBDC7D6E703943E1B544B1369FBE081"}))
        .await
        .expect("answer");

    assert_eq!(s.stub.actions_received(), ["process", "account_history"]);
    assert_eq!(
        s.stub.received()[1].json().expect("JSON")["count"],
        json!("3")
    );
    assert_eq!(work.actions_received(), ["work_generate"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_size_and_node_timeout_flags_hold() {
    let s = setup(&["--max-answer-bytes", "10", "--node-timeout", "200"]).await;
    let error = refusal(s.ask(json!({"action": "block_count"})).await);
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(
        error.message.contains("limit of 10 bytes"),
        "{}",
        error.message
    );
    s.stub.set_delay(Duration::from_millis(1000));
    let error = refusal(s.ask(json!({"action": "version"})).await);
    assert_eq!(error.code, ErrorCode::UpstreamTimeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_is_told_when_to_retry() {
    let s = setup(&["--rate", "1", "--burst", "3", "--cache-entries", "0"]).await;
    // A burst of 3, refilled at 1/s: within a few quick requests one is refused (a
    // slow machine may get one more token in between, hence the bounded loop).
    let mut answered = 0;
    let error = loop {
        match s.ask(json!({"action": "block_count"})).await {
            Ok(_) => answered += 1,
            Err(CallError::Refused { error, .. }) => break error,
            Err(e) => panic!("unexpected failure {e}"),
        }
        assert!(answered < 10, "never rate limited");
    };
    assert!(answered >= 3, "the burst is allowed: {answered}");
    assert_eq!(error.code, ErrorCode::Busy);
    let ms: u64 = error
        .message
        .split("retry after ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry time in {:?}", error.message));
    assert!((1..=1000).contains(&ms), "{ms}");
    // The refused request never reached the node.
    assert_eq!(s.stub.received().len(), answered);
    // After the time it named, the client is served again.
    tokio::time::sleep(Duration::from_millis(ms + 20)).await;
    s.ask(json!({"action": "block_count"}))
        .await
        .expect("after the wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keys_on_parameters_and_is_counted_in_metrics() {
    let s = setup(&["--metrics", "127.0.0.1:0", "--allow", "process"]).await;
    let balance = |account: &str| json!({"action": "account_balance", "account": account});
    let first = s.ask(balance(ACCOUNT)).await.expect("answer");
    let second = s.ask(balance(ACCOUNT)).await.expect("answer");
    assert_eq!(first.body, second.body);
    // The same request with its keys in another order is the same entry.
    let reordered = format!(r#"{{"account":"{ACCOUNT}","action":"account_balance"}}"#);
    s.client
        .request_addr(s.addr, "nano_rpc", reordered.as_bytes())
        .await
        .expect("answer");
    // Another account is another entry.
    s.ask(balance(ACCOUNT_2)).await.expect("answer");
    // process is never cached.
    for _ in 0..2 {
        s.ask(json!({"action": "process", "block": "{}"}))
            .await
            .expect("answer");
    }
    assert_eq!(
        s.stub.actions_received(),
        ["account_balance", "account_balance", "process", "process"]
    );
    let text = s.metrics().await;
    assert_eq!(
        sample(
            &text,
            "nano_connect_cache_hits_total{action=\"account_balance\"}"
        ),
        Some(2.0),
        "{text}"
    );

    // block_count lives 1 s: asked again and again, it reaches the node again soon after.
    s.stub.clear_received();
    poll(
        Duration::from_secs(5),
        "block_count expired from the cache",
        || async {
            s.ask(json!({"action": "block_count"}))
                .await
                .expect("answer");
            (s.stub.actions_received().len() >= 2).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_refusals_latency_and_connections() {
    let s = setup(&["--metrics", "127.0.0.1:0", "--cache-entries", "0"]).await;
    s.ask(json!({"action": "block_count"}))
        .await
        .expect("answer");
    s.ask(json!({"action": "version"})).await.expect("answer");
    refusal(s.ask(json!({"action": "wallet_create"})).await);
    let text = s.metrics().await;
    let value = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name} in {text}"));
    assert_eq!(
        value("nano_connect_requests_total{outcome=\"answered\"}"),
        2.0
    );
    assert_eq!(
        value("nano_connect_requests_total{outcome=\"refused\"}"),
        1.0
    );
    assert_eq!(
        value("nano_connect_refusals_total{code=\"action_not_allowed\"}"),
        1.0
    );
    assert_eq!(value("nano_connect_node_latency_seconds_count"), 2.0);
    assert_eq!(value("nano_connect_open_connections"), 1.0);
}

/// Two grapes with a 2 s window and workers announcing every 1 s, as in tests/mesh.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_node_stops_answering_stops_announcing_until_it_answers_again() {
    let (a, b) = tokio::task::block_in_place(|| mesh::two_grapes(2.0));
    let stub = NanoStub::start(Mode::RsNano).await;
    let node = stub.addr();
    let url = stub.url();
    let (_worker, port) = tokio::task::block_in_place(|| {
        mesh::worker(
            &a.url,
            "nano_rpc",
            &[
                "--nano-rpc",
                &url,
                "--announce-interval",
                "1",
                "--health-interval",
                "0.2",
            ],
        )
    });
    wait_announced(&b.url, "nano_rpc", &[port]).await;
    let me = format!("127.0.0.1:{port}");

    stub.shutdown().await;
    poll(
        Duration::from_secs(15),
        "worker withdrawn after its node stopped",
        || async { (!mesh::lookup(&b.url, "nano_rpc").await.contains(&me)).then_some(()) },
    )
    .await;

    let stub = NanoStub::start_at(Mode::RsNano, node).await;
    wait_announced(&b.url, "nano_rpc", &[port]).await;
    assert!(
        stub.actions_received().iter().all(|a| a == "version"),
        "only health probes reached the node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grape_metrics_count_announces_and_lookups() {
    let a = tokio::task::block_in_place(|| mesh::grape(None, 120.0));
    let b = tokio::task::block_in_place(|| {
        mesh::Process::start(&[
            "grape",
            "--dp",
            "0",
            "--aph",
            "0",
            "--bind",
            "127.0.0.1",
            "--bn",
            &a.dht,
            "--metrics",
            "127.0.0.1:0",
        ])
    });
    let b_url = format!("http://{}", b.field("api"));
    let stub = NanoStub::start(Mode::RsNano).await;
    let url = stub.url();
    let (_worker, port) =
        tokio::task::block_in_place(|| mesh::worker(&b_url, "nano_rpc", &["--nano-rpc", &url]));
    wait_announced(&b_url, "nano_rpc", &[port]).await;
    let text = reqwest::get(format!("http://{}/metrics", b.field("metrics")))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    let value = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name} in {text}"));
    assert!(value("grape_announces_total{outcome=\"stored\"}") >= 1.0);
    assert!(value("grape_lookups_total{found=\"some\"}") >= 1.0);
    assert!(value("grape_lookup_latency_seconds_count") >= 1.0);
    assert!(value("grape_announce_latency_seconds_count") >= 1.0);
}

/// With `--max-streams 1`, a connection carries one request at a time: two concurrent
/// requests to a node that takes 400 ms each take at least 800 ms (a lower bound, so a
/// slow machine cannot make it fail), and the node never sees them overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_streams_bounds_requests_in_flight_per_connection() {
    let s = setup(&["--max-streams", "1", "--cache-entries", "0"]).await;
    // Open the connection first, so both requests share it.
    s.ask(json!({"action": "block_count"}))
        .await
        .expect("answer");
    s.stub.clear_received();
    let delay = Duration::from_millis(400);
    s.stub.set_delay(delay);
    let started = std::time::Instant::now();
    let (a, b) = tokio::join!(
        s.ask(json!({"action": "block_count"})),
        s.ask(json!({"action": "version"}))
    );
    a.expect("first answer");
    b.expect("second answer");
    assert!(
        started.elapsed() >= delay * 2,
        "two requests overlapped on one connection: {:?}",
        started.elapsed()
    );
    assert_eq!(s.stub.received().len(), 2);
}
