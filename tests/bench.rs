//! `nano-connect bench` against real processes: an echo worker measured directly and
//! through two grapes, a fibonacci worker with a fixed body, the HTTP baseline against the
//! Nano node stand-in, and the idle-connections mode. Figures are not asserted (speed is
//! measured by benches/mesh.sh, never by tests); counts, sizes and errors are.

mod support;

use serde_json::Value;
use support::mesh;
use support::nano_stub::{Mode, NanoStub};

/// Runs `nano-connect bench ARGS --json`, asserts success, returns the report.
async fn bench(args: &[&str]) -> Value {
    let mut all = vec!["bench", "--json", "--duration", "20"];
    all.extend_from_slice(args);
    let output = mesh::run(&all, "").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_worker_answers_every_request_with_the_size_asked_for() {
    let (_worker, port) = mesh::worker("http://127.0.0.1:9", "echo", &["--service", "echo"]);
    let addr = format!("127.0.0.1:{port}");
    for (concurrency, answer) in [("1", "200"), ("16", "65536")] {
        let report = bench(&[
            "--worker",
            &addr,
            "-c",
            concurrency,
            "-n",
            "200",
            "--answer",
            answer,
        ])
        .await;
        assert_eq!(report["ok"], 200, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        let answer: u64 = answer.parse().unwrap();
        assert_eq!(report["answer_bytes"], 200 * answer, "{report}");
        assert_eq!(report["request_bytes"], 100, "{report}");
        assert!(
            report["latency"]["p50_us"].as_u64().unwrap() > 0,
            "{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_by_key_goes_through_the_grapes() {
    let (a, b) = mesh::two_grapes(30.0);
    let (_worker, port) = mesh::worker(
        &a.url,
        "fibonacci_worker",
        &["--service", "fibonacci", "--announce-interval", "1"],
    );
    mesh::wait_announced(&b.url, "fibonacci_worker", &[port]).await;
    let report = bench(&[
        "--grape",
        &b.url,
        "--service",
        "fibonacci_worker",
        "--body",
        r#"{"length":10}"#,
        "-c",
        "8",
        "--connections",
        "2",
        "-n",
        "300",
    ])
    .await;
    assert_eq!(report["ok"], 300, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["connections"], 2, "{report}");
    // [0,1,1,2,3,5,8,13,21,34] is 24 bytes of JSON.
    assert_eq!(report["answer_bytes"], 300 * 24, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_kind_and_fail_the_run() {
    let (_worker, port) = mesh::worker("http://127.0.0.1:9", "echo", &["--service", "echo"]);
    let addr = format!("127.0.0.1:{port}");
    // The worker serves "echo" only: warm-up is refused, so nothing is measured.
    let output = mesh::run(
        &["bench", "--worker", &addr, "--service", "other", "-n", "10"],
        "",
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("warm-up request failed"), "{stderr}");
    assert!(stderr.contains("unknown_service"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_baseline_posts_to_the_node_stand_in() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let report = bench(&[
        "--http",
        &stub.url(),
        "--body",
        r#"{"action":"block_count"}"#,
        "-c",
        "4",
        "-n",
        "100",
        "--warmup",
        "1",
    ])
    .await;
    assert_eq!(report["ok"], 100, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    // One warm-up request and the 100 measured ones, all of them POSTs to the node.
    assert_eq!(stub.actions_received().len(), 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_starts_requests_on_a_fixed_schedule() {
    let stub = NanoStub::start(Mode::RsNano).await;
    // 60 requests at 40 per second: the last one starts 59/40 s after the first.
    let report = bench(&[
        "--http",
        &stub.url(),
        "--body",
        r#"{"action":"block_count"}"#,
        "-c",
        "8",
        "-n",
        "60",
        "--warmup",
        "1",
        "--rate",
        "40",
    ])
    .await;
    assert_eq!(report["ok"], 60, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let elapsed = report["elapsed_s"].as_f64().unwrap_or(0.0);
    assert!(elapsed >= 59.0 / 40.0, "{report}");
    let refused = mesh::run(&["bench", "--http", &stub.url(), "--rate", "0"], "").await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--rate"),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_opened_held_and_closed() {
    // All 300 come from one address: lift the worker's per-address cap (64).
    let (_worker, port) = mesh::worker(
        "http://127.0.0.1:9",
        "echo",
        &["--service", "echo", "--max-connections-per-ip", "1000"],
    );
    let addr = format!("127.0.0.1:{port}");
    let output = mesh::run(
        &[
            "bench",
            "--worker",
            &addr,
            "--idle-connections",
            "300",
            "--hold",
            "0.2",
        ],
        "",
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "idle_open", "{stdout}");
    assert_eq!(events[0]["connections"], 300, "{stdout}");
    assert_eq!(events[1]["event"], "idle_closed", "{stdout}");
}
