//! Seed inputs per target: well-formed examples of what each decoder reads, from which
//! the fuzzer mutates. `fuzz/corpus/<target>/` began as these (written by the ignored
//! test `write_seed_corpora` in `tests/fuzz_regressions.rs`), and the replay test runs
//! them too.

use std::net::SocketAddr;

use super::NOW_MS;
use crate::protocol::broker::{self, BrokerMessage, RefusalCode, Role, NONCE_LEN};
use crate::protocol::frame::{self, ErrorCode, RequestFrame, ResponseFrame, WireError};
use crate::protocol::identity::NodeKey;
use crate::protocol::record::{Record, RecordBody, Via, WebFace, WireRecord, RECORD_VERSION};
use crate::protocol::stun;

/// The seeds of `target` (empty for an unknown name).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "frame" => frames(),
        "broker_datagram" => datagrams(),
        "punch" => vec![
            [&[0u8][..], &[7; NONCE_LEN]].concat(),
            [&[1u8][..], &[9; NONCE_LEN]].concat(),
            vec![0, 1, 2, 3],
        ],
        "stun" => stun_messages(),
        "grape_http" => http_requests(),
        "policy" => policy_bodies(),
        "record_wire" => vec![
            rmp_serde::to_vec_named(&record("nano_rpc", 0, 240_000)).unwrap_or_default(),
            rmp_serde::to_vec_named(&record("echo", 0, -1)).unwrap_or_default(),
            rmp_serde::to_vec(&record("nano_rpc", 30_000, 600_000)).unwrap_or_default(),
        ],
        "record_body" => record_bodies(),
        "rendezvous" => programs(),
        "subscription" => subscription_frames(),
        _ => Vec::new(),
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1)))
}

/// A worker's record for `salt`, signed `seq_ms` after [`NOW_MS`], living `life_ms`.
fn record(salt: &str, seq_ms: i64, life_ms: i64) -> WireRecord {
    let seq = (NOW_MS as i64 + seq_ms) as u64;
    let body = RecordBody {
        v: RECORD_VERSION,
        exp: (seq as i64 + life_ms) as u64,
        addrs: vec![addr("203.0.113.5:4433")],
        local: vec![addr("10.0.1.2:41234")],
        via: vec![Via {
            broker: addr("203.0.113.11:30001"),
            reflexive: addr("203.0.113.101:41234"),
        }],
        sym: true,
        web: Some(WebFace {
            addrs: vec![addr("203.0.113.5:24433")],
            sha256: vec!["ab".repeat(32), "cd".repeat(32)],
        }),
    };
    let key = NodeKey::from_seed([4; 32]);
    match Record::sign(&key, salt, seq, body) {
        Ok(record) => record.wire,
        Err(e) => unreachable!("a small record signs: {e}"),
    }
}

fn frames() -> Vec<Vec<u8>> {
    let limit = usize::MAX;
    let request = RequestFrame {
        v: frame::PROTOCOL_VERSION,
        id: 7,
        key: "nano_rpc".into(),
        body: br#"{"action":"block_count"}"#.to_vec(),
    };
    let mut future = request.clone();
    future.v = 2;
    let answer = ResponseFrame::answer(3, 200, br#"{"count":"1","unchecked":"0"}"#.to_vec());
    let failure = ResponseFrame::failure(
        4,
        WireError::new(ErrorCode::ActionNotAllowed, "wallet_export is not allowed"),
    );
    let mut out: Vec<Vec<u8>> = [
        frame::encode(&request, limit),
        frame::encode(&future, limit),
        frame::encode(&answer, limit),
        frame::encode(&failure, limit),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(whole) = out.first().cloned() {
        out.push(whole[..whole.len() / 2].to_vec());
    }
    out
}

fn datagrams() -> Vec<Vec<u8>> {
    let a = addr("198.51.100.4:5000");
    let v6 = addr("[2001:db8::7]:443");
    let messages = vec![
        BrokerMessage::Ping { tx: 1 },
        BrokerMessage::Pong {
            tx: 1,
            reflexive: a,
            alt: Some(v6),
        },
        BrokerMessage::Register {
            tx: 2,
            record: record("nano_rpc", 0, 240_000),
            rtt_ms: 3,
        },
        BrokerMessage::Unregister {
            tx: 2,
            record: record("nano_rpc", 1000, 240_000),
        },
        BrokerMessage::Registered {
            tx: 2,
            reflexive: a,
            expires_ms: 45_000,
        },
        broker::padded(BrokerMessage::Connect {
            tx: 5,
            key: "nano_rpc".into(),
            node: Some([9; 32]),
            local: vec![a, v6],
            rtt_ms: 5,
            symmetric: true,
            pad: Vec::new(),
        }),
        BrokerMessage::Introduce {
            tx: 3,
            role: Role::Punch,
            peer_reflexive: a,
            peer_local: vec![v6],
            nonce: [7; NONCE_LEN],
            delay_ms: 12,
            peer_symmetric: true,
            record: Some(record("nano_rpc", 0, 240_000)),
        },
        broker::padded(BrokerMessage::List {
            tx: 4,
            key: "nano_rpc".into(),
            skip: 1,
            pad: Vec::new(),
        }),
        BrokerMessage::Listed {
            tx: 4,
            records: vec![record("nano_rpc", 0, 240_000)],
            total: 2,
        },
        BrokerMessage::RelayRequest {
            tx: 6,
            nonce: [7; NONCE_LEN],
        },
        BrokerMessage::RelayGranted {
            tx: 6,
            circuit: 99,
            max_bytes: 1 << 24,
            max_ms: 600_000,
        },
        BrokerMessage::Refused {
            tx: 0,
            circuit: Some(9),
            code: RefusalCode::RelayBytesExceeded,
            message: "over".into(),
        },
    ];
    let mut out: Vec<Vec<u8>> = messages.iter().map(broker::encode_broker).collect();
    out.push(broker::encode_relay(0xdead_beef, &[0x40, 1, 2, 3]));
    out.push(broker::encode_punch(&[1; NONCE_LEN], false).to_vec());
    out.push(broker::encode_punch(&[2; NONCE_LEN], true).to_vec());
    out.extend(stun_messages());
    out
}

fn stun_messages() -> Vec<Vec<u8>> {
    let Ok((_, request)) = stun::binding_request() else {
        return Vec::new();
    };
    let mut out = vec![request.clone()];
    for source in [addr("203.0.113.7:40123"), addr("[2001:db8::1]:3478")] {
        out.extend(stun::respond(&request, source));
    }
    out
}

fn http_post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn http_requests() -> Vec<Vec<u8>> {
    let item = mainline::MutableItem::new(
        mainline::SigningKey::from_bytes(&[9; 32]),
        b"hello",
        3,
        Some(b"salty"),
    );
    let mutable = serde_json::json!({"rid": "r", "data": {
        "v": "hello",
        "k": hex::encode(item.key()),
        "sig": hex::encode(item.signature()),
        "seq": 3,
        "salt": "salty",
    }});
    let mut out = vec![
        http_post("/lookup", r#"{"rid":"r-1","data":"nano_rpc"}"#),
        http_post("/announce", r#"{"rid":"r-2","data":["nano_rpc",4433]}"#),
        http_post("/put", r#"{"rid":"r-3","data":{"v":"hello"}}"#),
        http_post("/put", &mutable.to_string()),
        http_post(
            "/get",
            r#"{"data":"0123456789abcdef0123456789abcdef01234567"}"#,
        ),
        http_post(
            "/get",
            &format!(
                r#"{{"data":{{"k":"{}","salt":"salty"}}}}"#,
                hex::encode(item.key())
            ),
        ),
        http_post("/nope", r#"{"data":1}"#),
        b"GET /lookup HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
        b"POST /lookup HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\n{\"dat\r\n11\r\na\":\"nano_rpc\"}\r\n0\r\n\r\n"
            .to_vec(),
        b"POST /lookup HTTP/1.1\r\ncontent-length: 99999999\r\n\r\n{".to_vec(),
    ];
    // Two requests on one connection.
    let mut two = http_post("/lookup", r#"{"data":"a"}"#);
    two.extend(http_post("/lookup", r#"{"data":""}"#));
    out.push(two);
    out
}

fn policy_bodies() -> Vec<Vec<u8>> {
    const ACCOUNT: &str = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";
    let hash = "A".repeat(64);
    let bodies = [
        r#"{"action":"block_count"}"#.to_string(),
        format!(
            r#"{{"action":"account_history","account":"{ACCOUNT}","count":"10","offset":"5"}}"#
        ),
        format!(r#"{{"action":"accounts_balances","accounts":["{ACCOUNT}","{ACCOUNT}"]}}"#),
        format!(
            r#"{{"action":"accounts_receivable","accounts":{{"a":"{ACCOUNT}"}},"count":"-1"}}"#
        ),
        format!(
            r#"{{"action":"receivable","account":"{ACCOUNT}","account_filter":["{ACCOUNT}"]}}"#
        ),
        format!(r#"{{"action":"blocks_info","hashes":["{hash}"],"uncached":"true"}}"#),
        r#"{"action":"representatives","count":" +12"}"#.to_string(),
        format!(
            r#"{{"action":"process","json_block":"true","force":"false","block":{{"type":"state","account":"{ACCOUNT}","previous":"{hash}","link":"{hash}","representative":"{ACCOUNT}"}}}}"#
        ),
        r#"{"action":"action","action":"wallet_export"}"#.to_string(),
        r#"{"\u0061ction":"block_count","x":[1.5e300,{"y":[]}]}"#.to_string(),
    ];
    let mut out = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        out.push([&[(i as u8 * 3) % 16][..], body.as_bytes()].concat());
    }
    out
}

fn record_bodies() -> Vec<Vec<u8>> {
    let body = |exp: u64| {
        serde_json::to_vec(&RecordBody {
            v: RECORD_VERSION,
            exp,
            addrs: vec![addr("203.0.113.5:4433")],
            local: vec![addr("[fe80::1]:9")],
            via: vec![Via {
                broker: addr("203.0.113.11:30001"),
                reflexive: addr("198.51.100.7:41234"),
            }],
            sym: true,
            web: None,
        })
        .unwrap_or_default()
    };
    let entry = |salt: &[u8], offset_s: i16, v: &[u8]| {
        let mut out = vec![salt.len() as u8];
        out.extend_from_slice(salt);
        out.extend_from_slice(&offset_s.to_be_bytes());
        out.extend_from_slice(v);
        out
    };
    vec![
        entry(b"nano_rpc", 0, &body(NOW_MS + 240_000)),
        entry(b"nano_rpc", -30, &body(NOW_MS + 1)),
        entry(b"echo", 59, &body(NOW_MS + 3_000_000)),
        entry(b"", 0, br#"{"v":1,"exp":1795317800000,"new":true}"#),
        entry(b"k", 0, br#"{"v":2,"exp":1795317800000}"#),
    ]
}

fn programs() -> Vec<Vec<u8>> {
    // Steps as `rendezvous` reads them; `from` is the second byte of each.
    let register = |from: u8, node: u8| vec![2, from, 1, node, 0, from, 0, 0, 3, 0, 20];
    let connect = |from: u8| vec![4, from, 5, 0, 2, 42, 0, 10, 1, 1, 144];
    let list = |from: u8| vec![5, from, 9, 0, 0, 1, 144];
    vec![
        [
            register(0, 0),
            connect(3),
            vec![7, 3, 0, 11],
            vec![8, 3, 0, 4, 0],
        ]
        .concat(),
        [register(0, 0), register(1, 1), register(2, 2), list(6)].concat(),
        [
            register(4, 3),
            vec![0, 0, 0x40, 0],
            vec![9, 0, 1],
            vec![6, 5, 1],
            vec![3, 4, 1, 3, 0, 4, 1, 0, 0],
        ]
        .concat(),
    ]
}

/// Subscription frame bodies of both directions (MessagePack maps with named fields, as
/// docs/protocol.md §8 writes them) and wallets' websocket messages (JSON).
fn subscription_frames() -> Vec<Vec<u8>> {
    let account = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";
    let maps = [
        serde_json::json!({"kind": "subscribe", "v": 1, "id": 1, "key": "nano_rpc",
            "topic": "confirmation", "accounts": [account], "include_block": true,
            "include_election_info": false, "confirmation_type": "all", "heartbeat_ms": 2000}),
        serde_json::json!({"kind": "update", "v": 1, "id": 2, "accounts_add": [account],
            "accounts_del": []}),
        serde_json::json!({"kind": "ack", "v": 1, "id": 1, "accounts": 1, "max_accounts": 500,
            "max_rate": 100, "heartbeat_ms": 2000}),
        serde_json::json!({"kind": "refused", "v": 1, "id": 1, "code": "too_many_accounts",
            "message": "over 500"}),
        serde_json::json!({"kind": "notice", "v": 1, "lost": 3, "total_lost": 5,
            "reason": "slow_reader", "message": "dropped"}),
        serde_json::json!({"kind": "heartbeat", "v": 1}),
        serde_json::json!({"kind": "closing", "v": 1, "code": "shutting_down", "message": "bye"}),
    ];
    let mut out: Vec<Vec<u8>> = maps
        .iter()
        .filter_map(|m| rmp_serde::to_vec_named(m).ok())
        .collect();
    for text in [
        format!(
            r#"{{"action":"subscribe","topic":"confirmation","ack":true,"id":"1","options":{{"accounts":["{account}"],"include_block":"true"}}}}"#
        ),
        format!(
            r#"{{"action":"update","topic":"confirmation","ack":true,"options":{{"accounts_add":["{account}"],"accounts_del":[]}}}}"#
        ),
        r#"{"action":"unsubscribe","topic":"confirmation","ack":true}"#.to_owned(),
        r#"{"action":"ping","id":"7"}"#.to_owned(),
    ] {
        out.push(text.into_bytes());
    }
    out
}
