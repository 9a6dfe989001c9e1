//! The Nano relay against a stand-in node ([`support::nano_stub`]): what reaches the node,
//! in what form, and what the caller gets back. No QUIC: the tests call
//! [`Handler::handle`] directly.
//!
//! The relay and the stub talk over real loopback sockets, so the timing tests use the
//! real clock with short deadlines (a paused tokio clock would fire the relay's timeout
//! while the runtime waits on socket I/O).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nano_connect::nano::actions::{
    NANO_NODE_ACTIONS, OPT_IN_ACTIONS, READ_ONLY_ACTIONS, RETIRED_NANO_NODE_ACTIONS,
};
use nano_connect::nano::{NanoRelay, NanoRelayConfig, NanoRelayError, Policy, ProbeError};
use nano_connect::protocol::frame::{ErrorCode, WireError};
use nano_connect::service::{Handler, Reply, Request};
use serde_json::{json, Value};
use support::nano_stub::{fixtures, Mode, NanoStub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ACCOUNT: &str = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";
const ACCOUNT_2: &str = "nano_3cn3tj1ueynwgo7fj6d748kfsk435bpezaro3rdmisyqbuuc9bp7c87srszd";

fn config(node_url: &str) -> NanoRelayConfig {
    NanoRelayConfig {
        node_url: node_url.to_string(),
        ..NanoRelayConfig::default()
    }
}

fn relay(node_url: &str) -> NanoRelay {
    NanoRelay::new(config(node_url)).expect("relay")
}

fn request(body: impl Into<Vec<u8>>) -> Request {
    Request {
        key: "nano_rpc".to_string(),
        body: body.into(),
        peer: "192.0.2.7:4242".parse().expect("address"),
    }
}

async fn ask(relay: &NanoRelay, body: &Value) -> Reply {
    relay.handle(request(body.to_string())).await
}

#[track_caller]
fn failure(reply: Reply) -> WireError {
    match reply {
        Reply::Failure(error) => error,
        Reply::Answer { status, body } => panic!(
            "expected a failure, got HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        ),
    }
}

#[track_caller]
fn answer(reply: Reply) -> (u16, String) {
    match reply {
        Reply::Answer { status, body } => (status, String::from_utf8(body).expect("UTF-8")),
        Reply::Failure(error) => panic!("expected an answer, got {error:?}"),
    }
}

#[tokio::test]
async fn allowlisted_fixtures_pass_through_with_exact_status_and_body() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let relay = relay(&stub.url());
    let mut passed = 0;
    for fixture in fixtures() {
        let Some(action) = fixture.action() else {
            continue;
        };
        if !READ_ONLY_ACTIONS.contains(&action) {
            continue;
        }
        let reply = ask(&relay, &fixture.request).await;
        assert_eq!(
            reply,
            Reply::Answer {
                status: fixture.status,
                body: fixture.body.clone().into_bytes()
            },
            "{}",
            fixture.request
        );
        passed += 1;
    }
    // 41 fixtures: 36 with an allowlisted action (two of them 422s, two `{"error"}`s).
    assert!(passed >= 35, "only {passed} fixtures were allowlisted");
    assert_eq!(stub.received().len(), passed);
}

#[tokio::test]
async fn rsnano_422_and_node_error_answers_pass_through_unchanged() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let relay = relay(&stub.url());
    let (status, body) = answer(ask(&relay, &json!({ "action": "account_info" })).await);
    assert_eq!(status, 422);
    assert_eq!(
        body,
        "Failed to deserialize the JSON body into the target type: missing field `account`"
    );
    let (status, body) = answer(
        ask(
            &relay,
            &json!({ "action": "block_info", "hash": "0000000000000000000000000000000000000000000000000000000000000001" }),
        )
        .await,
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"error":"Block not found"}"#)
    );
}

#[tokio::test]
async fn fixtures_off_the_allowlist_are_refused_before_the_node() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let relay = relay(&stub.url());
    let mut refused = 0;
    for fixture in fixtures() {
        if fixture
            .action()
            .is_some_and(|a| READ_ONLY_ACTIONS.contains(&a))
        {
            continue;
        }
        let error = failure(ask(&relay, &fixture.request).await);
        let expected = if fixture.action().is_some() {
            ErrorCode::ActionNotAllowed
        } else {
            ErrorCode::InvalidRequest
        };
        assert_eq!(error.code, expected, "{}", fixture.request);
        refused += 1;
    }
    // key_expand, peers, unknown_action_xyz, and the request without an action.
    assert!(refused >= 4, "{refused}");
    assert!(stub.received().is_empty(), "{:?}", stub.actions_received());
}

#[tokio::test]
async fn every_node_action_off_the_allowlist_never_reaches_the_node() {
    let stub = NanoStub::start(Mode::NanoNode).await;
    let relay = relay(&stub.url());
    let mut refused = BTreeSet::new();
    for &action in NANO_NODE_ACTIONS.iter().chain(RETIRED_NANO_NODE_ACTIONS) {
        if READ_ONLY_ACTIONS.contains(&action) {
            continue;
        }
        let body = json!({ "action": action, "wallet": "000D1BAEC8EC208142C99059B393051BAC8380F9B5A2E6B2489A277D81789F3F" });
        let error = failure(ask(&relay, &body).await);
        assert_eq!(error.code, ErrorCode::ActionNotAllowed, "{action}");
        assert_eq!(
            error.message,
            format!("action \"{action}\" is not allowed by this relay (read-only allowlist)")
        );
        refused.insert(action);
    }
    for action in [
        "wallet_export",
        "sign",
        "key_expand",
        "peers",
        "bootstrap",
        "stats_clear",
        "stop",
        "send",
    ] {
        assert!(refused.contains(action), "{action} was not tried");
    }
    for action in OPT_IN_ACTIONS {
        assert!(
            refused.contains(action),
            "{action} is refused unless opted in"
        );
    }
    assert!(stub.received().is_empty(), "{:?}", stub.actions_received());
}

#[tokio::test]
async fn unknown_actions_are_refused_without_reaching_the_node() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let relay = relay(&stub.url());
    for action in [
        "unknown_action_xyz",
        "VERSION",
        "version\u{0}",
        "wallet_export ",
    ] {
        let error = failure(ask(&relay, &json!({ "action": action })).await);
        assert_eq!(error.code, ErrorCode::ActionNotAllowed, "{action:?}");
    }
    // A repeated `action`: the node would run the first, a serde reader checks the last.
    let error = failure(
        relay
            .handle(request(r#"{"action":"wallet_export","action":"version"}"#))
            .await,
    );
    assert_eq!(error.code, ErrorCode::InvalidRequest);
    for body in ["", "not json", "[]", r#"{"account":"x"}"#] {
        let error = failure(relay.handle(request(body)).await);
        assert_eq!(error.code, ErrorCode::InvalidRequest, "{body:?}");
    }
    assert!(stub.received().is_empty(), "{:?}", stub.actions_received());
}

#[tokio::test]
async fn opted_in_process_reaches_the_node_but_never_with_force() {
    let stub = NanoStub::start(Mode::NanoNode).await;
    let mut config = config(&stub.url());
    config
        .policy
        .allow("process")
        .expect("process is an opt-in");
    let relay = NanoRelay::new(config).expect("relay");

    let error = failure(
        ask(
            &relay,
            &json!({ "action": "process", "force": "true", "block": "{}" }),
        )
        .await,
    );
    assert_eq!(error.code, ErrorCode::ActionNotAllowed);
    assert!(stub.received().is_empty());

    let (status, body) = answer(ask(&relay, &json!({ "action": "process", "block": "{}" })).await);
    assert_eq!(status, 200);
    assert!(body.contains("Unknown command"), "{body}");
    assert_eq!(stub.actions_received(), ["process"]);
}

#[tokio::test]
async fn nano_node_error_answers_pass_through() {
    let stub = NanoStub::start(Mode::NanoNode).await;
    let relay = relay(&stub.url());
    // An allowlisted action no fixture matches: nano-node's own way to fail.
    let (status, body) = answer(
        ask(
            &relay,
            &json!({ "action": "block_count", "include_cemented": "true" }),
        )
        .await,
    );
    assert_eq!(status, 200);
    assert_eq!(body, "{\n    \"error\": \"Unknown command\"\n}\n");
    // Whatever the node says, status and bytes are passed on untouched.
    stub.set_answer(500, "\u{1}not json at all\r\n");
    let (status, body) = answer(ask(&relay, &json!({ "action": "version" })).await);
    assert_eq!((status, body.as_str()), (500, "\u{1}not json at all\r\n"));
}

#[tokio::test]
async fn a_stopped_node_is_unreachable_quickly() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let url = stub.url();
    let relay = relay(&url);
    // One exchange first, so the relay holds a pooled connection to the node.
    answer(ask(&relay, &json!({ "action": "version" })).await);
    stub.shutdown().await;

    let started = Instant::now();
    let error = failure(ask(&relay, &json!({ "action": "version" })).await);
    assert_eq!(
        error.code,
        ErrorCode::UpstreamUnreachable,
        "{}",
        error.message
    );
    assert!(
        error
            .message
            .starts_with(&format!("Nano node at {url}/ is unreachable: ")),
        "{}",
        error.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(
        relay.probe().await,
        Err(ProbeError::Unreachable { .. })
    ));
}

#[tokio::test]
async fn a_port_nobody_listens_on_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    let relay = relay(&format!("http://{addr}"));
    let started = Instant::now();
    let error = failure(ask(&relay, &json!({ "action": "block_count" })).await);
    assert_eq!(
        error.code,
        ErrorCode::UpstreamUnreachable,
        "{}",
        error.message
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_slow_node_times_out() {
    let stub = NanoStub::start(Mode::RsNano).await;
    stub.set_delay(Duration::from_secs(5));
    let relay = NanoRelay::new(NanoRelayConfig {
        timeout: Duration::from_millis(200),
        ..config(&stub.url())
    })
    .expect("relay");
    let started = Instant::now();
    let error = failure(ask(&relay, &json!({ "action": "block_count" })).await);
    let elapsed = started.elapsed();
    assert_eq!(error.code, ErrorCode::UpstreamTimeout, "{}", error.message);
    assert!(
        error.message.contains("did not answer within 200ms"),
        "{}",
        error.message
    );
    assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(stub.actions_received(), ["block_count"]);
    assert!(matches!(
        relay.probe().await,
        Err(ProbeError::Timeout { .. })
    ));
}

#[tokio::test]
async fn requests_go_to_path_root_with_no_extra_headers() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let relay = relay(&format!("{}/api/v2/?x=1", stub.url()));
    assert_eq!(relay.node_url(), format!("{}/", stub.url()));
    answer(ask(&relay, &json!({ "action": "block_count" })).await);
    answer(ask(&relay, &json!({ "action": "version" })).await);

    let received = stub.received();
    assert_eq!(received.len(), 2);
    for r in received {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/");
        assert_eq!(r.header("content-type"), Some("application/json"));
        for (name, _) in &r.headers {
            assert!(
                ["content-type", "host", "content-length", "accept"].contains(&name.as_str()),
                "unexpected header {name}: {:?}",
                r.headers
            );
        }
    }
}

#[tokio::test]
async fn unchanged_bodies_reach_the_node_byte_for_byte() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let relay = relay(&stub.url());
    let body = "{ \"count\" : \"5\",\n\t\"block\":\"8D8EDA98311516859B5DCDF05A268CDB2DBDC7D6E703943E1B544B1369FBE081\", \"action\":\"chain\" }";
    let (status, _) = answer(relay.handle(request(body)).await);
    assert_eq!(status, 200);
    assert_eq!(stub.received()[0].body, body.as_bytes());
}

#[tokio::test]
async fn account_filter_is_stripped_before_the_node() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let relay = relay(&stub.url());
    let reply = ask(
        &relay,
        &json!({ "action": "receivable", "account": ACCOUNT_2, "count": "5", "account_filter": [ACCOUNT] }),
    )
    .await;
    // Without the filter the request equals a fixture, whose answer comes back.
    assert_eq!(answer(reply), (200, r#"{"blocks":[]}"#.to_string()));
    let sent = stub.received()[0].json().expect("JSON");
    assert!(sent.get("account_filter").is_none(), "{sent}");
}

#[tokio::test]
async fn count_is_capped_before_the_node() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let relay = relay(&stub.url());
    ask(
        &relay,
        &json!({ "action": "account_history", "account": ACCOUNT, "count": "1000000" }),
    )
    .await;
    ask(
        &relay,
        &json!({ "action": "account_history", "account": ACCOUNT, "count": "-1" }),
    )
    .await;
    ask(
        &relay,
        &json!({ "action": "representatives", "count": 5000 }),
    )
    .await;
    let counts: Vec<Value> = stub
        .received()
        .iter()
        .map(|r| r.json().expect("JSON")["count"].clone())
        .collect();
    assert_eq!(counts, [json!("1000"), json!("1000"), json!(1000)]);

    // With a cap of 2 the `chain` fixture (count 5) is cut down, and no longer matches.
    let mut config = config(&stub.url());
    config.policy.set_max_count(2);
    let relay = NanoRelay::new(config).expect("relay");
    stub.clear_received();
    let (status, _) = answer(
        ask(
            &relay,
            &json!({ "action": "chain", "block": "8D8EDA98311516859B5DCDF05A268CDB2DBDC7D6E703943E1B544B1369FBE081", "count": "5" }),
        )
        .await,
    );
    assert_eq!(status, 422);
    assert_eq!(
        stub.received()[0].json().expect("JSON")["count"],
        json!("2")
    );
}

#[tokio::test]
async fn long_arrays_are_refused_before_the_node() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let relay = relay(&stub.url());
    let accounts: Vec<&str> =
        std::iter::repeat_n(ACCOUNT, Policy::read_only().max_array_len() + 1).collect();
    let error = failure(
        ask(
            &relay,
            &json!({ "action": "accounts_balances", "accounts": accounts }),
        )
        .await,
    );
    assert_eq!(error.code, ErrorCode::InvalidRequest);
    assert!(
        error.message.starts_with("\"accounts\" holds an array of"),
        "{}",
        error.message
    );
    assert!(stub.received().is_empty());
}

#[tokio::test]
async fn an_answer_over_the_limit_is_an_internal_failure() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let relay = NanoRelay::new(NanoRelayConfig {
        max_answer_bytes: 4096,
        ..config(&stub.url())
    })
    .expect("relay");
    stub.set_answer(200, vec![b'7'; 4096]);
    let (status, body) = answer(ask(&relay, &json!({ "action": "version" })).await);
    assert_eq!((status, body.len()), (200, 4096));
    stub.set_answer(200, vec![b'7'; 4097]);
    let error = failure(ask(&relay, &json!({ "action": "version" })).await);
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(
        error.message.contains("limit of 4096 bytes"),
        "{}",
        error.message
    );
}

/// A node that streams an endless chunked answer: the relay must stop at its limit
/// instead of buffering it all (the length is not announced, so only the read loop
/// can tell).
#[tokio::test]
async fn an_endless_answer_is_cut_off_at_the_limit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await;
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        if socket.write_all(head).await.is_err() {
            return 0usize;
        }
        let mut chunk = b"1000\r\n".to_vec();
        chunk.extend_from_slice(&[b'x'; 0x1000]);
        chunk.extend_from_slice(b"\r\n");
        let mut sent = 0;
        while socket.write_all(&chunk).await.is_ok() {
            sent += 0x1000;
            if sent > 256 * 1024 * 1024 {
                break;
            }
        }
        sent
    });
    let relay = NanoRelay::new(NanoRelayConfig {
        max_answer_bytes: 64 * 1024,
        ..config(&format!("http://{addr}"))
    })
    .expect("relay");
    let error = failure(ask(&relay, &json!({ "action": "version" })).await);
    assert_eq!(error.code, ErrorCode::Internal, "{}", error.message);
    let sent = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the relay hung up")
        .expect("server task");
    assert!(sent < 16 * 1024 * 1024, "the relay read {sent} bytes");
}

#[tokio::test]
async fn probe_tells_a_node_from_no_node() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let relay = relay(&stub.url());
    let version = relay.probe().await.expect("the stub answers version");
    assert_eq!(version.node_vendor.as_deref(), Some("RsNano 2.0"));
    assert_eq!(version.network.as_deref(), Some("dev"));
    assert_eq!(version.rpc_version.as_deref(), Some("1"));

    stub.set_answer(200, r#"{"error":"RPC control is disabled"}"#);
    assert!(matches!(
        relay.probe().await,
        Err(ProbeError::NotANode { .. })
    ));
    stub.set_answer(404, "Not Found");
    let error = relay.probe().await.expect_err("404 is no node");
    assert!(error.to_string().contains("HTTP 404"), "{error}");
}

#[test]
fn bad_node_urls_are_configuration_errors() {
    assert!(matches!(
        NanoRelay::new(config("https://127.0.0.1:7076")),
        Err(NanoRelayError::UnsupportedScheme { .. })
    ));
    assert!(matches!(
        NanoRelay::new(config("no url")),
        Err(NanoRelayError::InvalidUrl { .. })
    ));
}

/// nano-node reads a missing `count` as `u64::MAX` in `receivable` (and its alias
/// `pending`), `accounts_receivable` and `representatives` (`count_optional_impl ()`
/// in `nano/node/json_handler.cpp`): the relay must add its cap before the node sees
/// the request. `accounts_receivable` reads `count` per account, so its cap is shared
/// out over the accounts.
#[tokio::test]
async fn a_missing_count_reaches_the_node_as_the_cap() {
    let stub = NanoStub::start(Mode::NanoNode).await;
    let relay = relay(&stub.url());
    for action in ["receivable", "pending"] {
        answer(ask(&relay, &json!({ "action": action, "account": ACCOUNT })).await);
    }
    answer(ask(&relay, &json!({ "action": "representatives" })).await);
    let accounts: Vec<&str> = std::iter::repeat_n(ACCOUNT, 500).collect();
    answer(
        ask(
            &relay,
            &json!({ "action": "accounts_receivable", "accounts": accounts }),
        )
        .await,
    );
    answer(
        ask(
            &relay,
            &json!({ "action": "accounts_receivable", "accounts": [ACCOUNT, ACCOUNT_2], "count": "1000" }),
        )
        .await,
    );
    let counts: Vec<(String, Value)> = stub
        .received()
        .iter()
        .map(|r| {
            let sent = r.json().expect("JSON");
            (
                sent["action"].as_str().unwrap_or("?").to_string(),
                sent["count"].clone(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("receivable".to_string(), json!("1000")),
            ("pending".to_string(), json!("1000")),
            ("representatives".to_string(), json!("1000")),
            ("accounts_receivable".to_string(), json!("2")),
            ("accounts_receivable".to_string(), json!("500")),
        ]
    );
}

/// nano-node skips `offset` entries one ledger read at a time (`offset_optional_impl`
/// in `receivable`, `account_history`, `chain`), and `std::stoull` wraps `"-1"` to
/// 2^64 - 1: a large offset is work the relay does not offer, refused before the node.
#[tokio::test]
async fn a_huge_offset_never_reaches_the_node() {
    let stub = NanoStub::start(Mode::NanoNode).await;
    let relay = relay(&stub.url());
    for offset in [
        json!("18446744073709551615"),
        json!("-1"),
        json!(u64::MAX),
        json!("1000001"),
    ] {
        for body in [
            json!({ "action": "account_history", "account": ACCOUNT, "count": "10", "offset": offset }),
            json!({ "action": "receivable", "account": ACCOUNT, "count": "10", "offset": offset }),
            json!({ "action": "chain", "block": "8D8EDA98311516859B5DCDF05A268CDB2DBDC7D6E703943E1B544B1369FBE081", "count": "10", "offset": offset }),
        ] {
            let error = failure(ask(&relay, &body).await);
            assert_eq!(error.code, ErrorCode::InvalidRequest, "{body}");
            assert!(error.message.contains("\"offset\""), "{}", error.message);
        }
    }
    assert!(stub.received().is_empty(), "{:?}", stub.actions_received());
    // An offset within the cap goes through as it is.
    let body = r#"{"action":"account_history","account":"x","count":"10","offset":"20"}"#;
    answer(relay.handle(request(body)).await);
    assert_eq!(stub.received()[0].body, body.as_bytes());
}

/// nano-node iterates `accounts` and `hashes` with `get_child`, which walks an object's
/// members as it walks an array's entries: an object is capped like an array.
#[tokio::test]
async fn objects_over_the_array_cap_never_reach_the_node() {
    let stub = NanoStub::start(Mode::NanoNode).await;
    let relay = relay(&stub.url());
    let accounts: serde_json::Map<String, Value> = (0..850)
        .map(|i| (i.to_string(), Value::from(ACCOUNT)))
        .collect();
    let hashes: serde_json::Map<String, Value> = (0..850)
        .map(|i| {
            (
                i.to_string(),
                Value::from("8D8EDA98311516859B5DCDF05A268CDB2DBDC7D6E703943E1B544B1369FBE081"),
            )
        })
        .collect();
    for (body, key) in [
        (
            json!({ "action": "accounts_balances", "accounts": accounts }),
            "accounts",
        ),
        (
            json!({ "action": "blocks_info", "hashes": hashes }),
            "hashes",
        ),
    ] {
        let error = failure(ask(&relay, &body).await);
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert!(
            error
                .message
                .starts_with(&format!("\"{key}\" holds an object of 850 entries")),
            "{}",
            error.message
        );
    }
    assert!(stub.received().is_empty(), "{:?}", stub.actions_received());
}
