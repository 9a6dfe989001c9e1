//! The worker's Nano handler stack (`nano::config::build`: metrics, rate limit, cache,
//! work routing, relay) against the node stand-in ([`support::nano_stub`]), which records
//! what reached it: identical concurrent misses share one node request.
//! No QUIC: the tests call [`Handler::handle`] on the stack directly.

mod support;

use std::sync::Arc;
use std::time::Duration;

use nano_connect::metrics::WorkerMetrics;
use nano_connect::nano::config::{self as nano_config, NanoService, NanoServiceConfig};
use nano_connect::nano::NanoRelayConfig;
use nano_connect::service::{Handler, Reply, Request};
use serde_json::{json, Value};
use support::nano_stub::{Mode, NanoStub};

const ACCOUNT: &str = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";
const ACCOUNT_2: &str = "nano_3cn3tj1ueynwgo7fj6d748kfsk435bpezaro3rdmisyqbuuc9bp7c87srszd";

/// The worker's stack relaying to `stub`, with `process` allowed and the default cache.
fn service(stub: &NanoStub) -> NanoService {
    let mut relay = NanoRelayConfig {
        node_url: stub.url(),
        ..NanoRelayConfig::default()
    };
    relay.policy.allow("process").expect("process is an opt-in");
    let config = NanoServiceConfig {
        relay,
        ..NanoServiceConfig::default()
    };
    nano_config::build(config, Arc::new(WorkerMetrics::new())).expect("stack")
}

fn request(body: &Value) -> Request {
    Request {
        key: "nano_rpc".to_string(),
        body: body.to_string().into_bytes(),
        peer: "192.0.2.7:4242".parse().expect("address"),
    }
}

/// The body of an answer, which must be a 200.
#[track_caller]
fn body(reply: Reply) -> String {
    match reply {
        Reply::Answer { status: 200, body } => String::from_utf8(body).expect("UTF-8"),
        other => panic!("expected a 200 answer, got {other:?}"),
    }
}

/// 1,000 concurrent identical `block_count` misses used to reach the node up to 36 times
/// (each miss asked on its own); they must share one node request. The stand-in answers
/// after 300 ms, so that all of them are in flight before the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_misses_share_one_node_request() {
    let stub = NanoStub::start(Mode::RsNano).await;
    stub.set_delay(Duration::from_millis(300));
    let service = Arc::new(service(&stub));
    let count = json!({ "action": "block_count" });
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (service, request) = (service.clone(), request(&count));
            tokio::spawn(async move { service.handle(request).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            body(task.await.expect("task")),
            r#"{"count":"3","unchecked":"0","cemented":"3"}"#
        );
    }
    let asked = stub.actions_received();
    assert_eq!(
        asked.len(),
        1,
        "1000 identical misses asked the node {} times",
        asked.len()
    );

    // Different parameters are different requests, each asked once.
    stub.clear_received();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let account = [ACCOUNT, ACCOUNT_2][i % 2];
            let request = request(&json!({ "action": "account_balance", "account": account }));
            let service = service.clone();
            tokio::spawn(async move { service.handle(request).await })
        })
        .collect();
    for task in tasks {
        // No fixture for ACCOUNT_2's balance: the stand-in's 422, passed through.
        let reply = task.await.expect("task");
        assert!(matches!(reply, Reply::Answer { .. }), "{reply:?}");
    }
    let mut asked: Vec<Value> = stub
        .received()
        .iter()
        .map(|r| r.json().expect("JSON")["account"].clone())
        .collect();
    asked.sort_by_key(|a| a.to_string());
    assert_eq!(asked, [json!(ACCOUNT_2), json!(ACCOUNT)]);
}
