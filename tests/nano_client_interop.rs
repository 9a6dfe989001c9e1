//! An unmodified Nano RPC client library from npm (`nano-node-rpc`, pinned by
//! `tests/js-nano/package-lock.json`) against a `nano-connect gateway` with a worker and a
//! Nano node stand-in behind the mesh. Needs Node.js and npm (CI installs them and runs
//! `npm ci` in tests/js-nano; this test runs it when the package is missing).

mod support;

use serde_json::Value;
use support::mesh::{self, two_grapes, wait_announced, Process};
use support::nano_stub::{fixtures, Mode, NanoStub};
use support::npm;

const ACCOUNT: &str = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";

/// The stand-in's recorded answer to `request`, as JSON.
fn fixture(request: Value) -> Value {
    let body = fixtures()
        .into_iter()
        .find(|f| f.request == request)
        .map(|f| f.body)
        .expect("fixture");
    serde_json::from_str(&body).expect("fixture body is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nano_node_rpc_from_npm_works_against_the_gateway() {
    tokio::task::block_in_place(|| npm::ensure_installed("js-nano", "nano-node-rpc"));
    let (a, b) = tokio::task::block_in_place(|| two_grapes(120.0));
    let stub = NanoStub::start(Mode::RsNano).await;
    let stub_url = stub.url();
    let (_worker, port) = tokio::task::block_in_place(|| {
        mesh::worker(&a.url, "nano_rpc", &["--nano-rpc", &stub_url])
    });
    wait_announced(&b.url, "nano_rpc", &[port]).await;
    let gateway = tokio::task::block_in_place(|| {
        Process::start(&["gateway", "--listen", "127.0.0.1:0", "--grape", &b.url])
    });
    let url = format!("http://{}", gateway.field("addr"));
    stub.clear_received();

    let output = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new("node")
            .arg(npm::js_dir("js-nano").join("client.js"))
            .args([&url, ACCOUNT])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("client.js finishes within 30 s")
    .expect("node must be installed to run this test (apt-get install nodejs)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client.js failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");

    assert_eq!(
        result["block_count"],
        fixture(serde_json::json!({"action": "block_count"}))
    );
    for action in ["account_balance", "account_block_count", "account_key"] {
        assert_eq!(
            result[action],
            fixture(serde_json::json!({"action": action, "account": ACCOUNT})),
            "{action}"
        );
    }
    let refused = result["ledger"]["error"].as_str().expect("ledger refused");
    assert!(refused.contains("\"ledger\""), "{refused}");
    assert!(refused.contains("action_not_allowed"), "{refused}");
    // What the library asked reached the node, and the refused action did not.
    assert_eq!(
        stub.actions_received(),
        [
            "block_count",
            "account_balance",
            "account_block_count",
            "account_key"
        ]
    );
}
