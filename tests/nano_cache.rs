//! The worker's Nano handler stack (`nano::config::build`: metrics, rate limit, cache,
//! work routing, relay) against the node stand-in ([`support::nano_stub`]), which records
//! what reached it: identical concurrent misses share one node request, a `process`
//! makes the accounts it touches read afresh, and a caller can ask for an uncached read.
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
/// [`ACCOUNT_2`]'s public key.
const ACCOUNT_2_KEY: &str = "AA81D441B67A9C754AD8916511A4DCC8411A6CCFA3150E173867D74EF6A3A6C5";
const ACCOUNT_3: &str = "nano_1111111111111111111111111111111111111111111111111111hifc8npp";
const HASH: &str = "8D8EDA98311516859B5DCDF05A268CDB2DBDC7D6E703943E1B544B1369FBE081";
/// The representative of the test blocks (touched by them too): a key no read names.
const REPRESENTATIVE: &str = "1111111111111111111111111111111111111111111111111111111111111111";

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

/// A `process` of a state block by `account` with `link` (hex), as a wallet sends it.
fn process(account: &str, link: &str, subtype: Option<&str>) -> Value {
    let mut request = json!({
        "action": "process",
        "json_block": "true",
        "block": {
            "type": "state",
            "account": account,
            "previous": HASH,
            "representative": REPRESENTATIVE,
            "balance": "1",
            "link": link,
            "signature": "0".repeat(128),
            "work": "0000000000000000",
        },
    });
    if let Some(subtype) = subtype {
        request["subtype"] = json!(subtype);
    }
    request
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

/// A wallet that publishes a send and builds its next block within the cache's second
/// must read the new frontier: after a `process` (answered or refused by the node), the
/// block's `account` and the account its `link` names are read from the node again,
/// and accounts the block does not name stay cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_makes_the_accounts_it_touches_read_afresh() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let service = service(&stub);
    let info = |account: &str| json!({ "action": "account_info", "account": account });
    let receivable = json!({ "action": "receivable", "account": ACCOUNT_2, "count": "5" });
    let history = json!({ "action": "account_history", "account": ACCOUNT, "count": "5" });
    let balances = json!({ "action": "accounts_balances", "accounts": [ACCOUNT_3, ACCOUNT] });
    let untouched = info(ACCOUNT_3);

    stub.set_answer(200, r#"{"frontier":"OLD"}"#);
    for read in [&info(ACCOUNT), &receivable, &history, &balances, &untouched] {
        assert_eq!(
            body(service.handle(request(read)).await),
            r#"{"frontier":"OLD"}"#
        );
        // The second time from the cache.
        assert_eq!(
            body(service.handle(request(read)).await),
            r#"{"frontier":"OLD"}"#
        );
    }
    assert_eq!(stub.received().len(), 5);

    // A send from ACCOUNT to ACCOUNT_2 (link is ACCOUNT_2's key), which the node refuses:
    // it may have been published all the same (through another node), so it counts.
    stub.set_answer(200, r#"{"error":"Fork"}"#);
    let send = process(ACCOUNT, ACCOUNT_2_KEY, Some("send"));
    assert_eq!(
        body(service.handle(request(&send)).await),
        r#"{"error":"Fork"}"#
    );
    stub.set_answer(200, r#"{"frontier":"NEW"}"#);
    stub.clear_received();
    for read in [&info(ACCOUNT), &receivable, &history, &balances] {
        assert_eq!(
            body(service.handle(request(read)).await),
            r#"{"frontier":"NEW"}"#,
            "{read}"
        );
    }
    assert_eq!(stub.received().len(), 4);
    // Asked afresh, the answers are cached again; the untouched account never left.
    for read in [&info(ACCOUNT), &receivable, &history, &balances] {
        assert_eq!(
            body(service.handle(request(read)).await),
            r#"{"frontier":"NEW"}"#
        );
    }
    assert_eq!(
        body(service.handle(request(&untouched)).await),
        r#"{"frontier":"OLD"}"#
    );
    assert_eq!(stub.received().len(), 4);

    // The block as a JSON string (json_block false), a receive with no subtype: its
    // account is ACCOUNT_2, its link the source block's hash.
    let pending_exists = json!({ "action": "receivable_exists", "hash": HASH });
    for _ in 0..2 {
        body(service.handle(request(&pending_exists)).await);
    }
    let mut receive = process(ACCOUNT_2, HASH, None);
    receive["block"] = Value::String(receive["block"].to_string());
    receive
        .as_object_mut()
        .expect("object")
        .remove("json_block");
    stub.set_answer(200, r#"{"hash":"AB"}"#);
    body(service.handle(request(&receive)).await);
    stub.set_answer(200, r#"{"frontier":"NEWER"}"#);
    stub.clear_received();
    for read in [&info(ACCOUNT_2), &receivable, &pending_exists] {
        assert_eq!(
            body(service.handle(request(read)).await),
            r#"{"frontier":"NEWER"}"#,
            "{read}"
        );
    }
    // ACCOUNT was not touched by the receive.
    assert_eq!(
        body(service.handle(request(&info(ACCOUNT))).await),
        r#"{"frontier":"NEW"}"#
    );
    assert_eq!(stub.received().len(), 3);
}

/// A caller asks for an uncached read with `"uncached": "true"`; the relay strips the
/// field (the node never sees it), asks the node, and keeps the fresh answer for the
/// next plain read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncached_read_asks_the_node_and_the_node_never_sees_the_field() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let service = service(&stub);
    let info = json!({ "action": "account_info", "account": ACCOUNT });
    stub.set_answer(200, r#"{"frontier":"OLD"}"#);
    body(service.handle(request(&info)).await);
    stub.set_answer(200, r#"{"frontier":"NEW"}"#);
    assert_eq!(
        body(service.handle(request(&info)).await),
        r#"{"frontier":"OLD"}"#
    );
    for uncached in [json!("true"), json!(true)] {
        let mut fresh = info.clone();
        fresh["uncached"] = uncached;
        assert_eq!(
            body(service.handle(request(&fresh)).await),
            r#"{"frontier":"NEW"}"#
        );
    }
    assert_eq!(
        body(service.handle(request(&info)).await),
        r#"{"frontier":"NEW"}"#
    );
    let received = stub.received();
    assert_eq!(received.len(), 3);
    for r in &received {
        assert_eq!(r.json().expect("JSON"), info, "the node saw {:?}", r.json());
    }
}
