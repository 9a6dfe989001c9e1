//! Entry points for the fuzz targets in `fuzz/` and for the replay of their corpora in
//! `tests/fuzz_regressions.rs` (not a stable API).
//!
//! Every decoder that reads bytes from the network has one function here that takes
//! arbitrary bytes, runs them through the decoder as the network would, and checks what
//! must hold of the result (a decoded value re-encodes to itself, a limit is kept, an
//! accepted request obeys the policy's rules). The function panics when a check fails,
//! and the decoders must never panic at all, so a panic of any kind is a finding.
//!
//! `fuzz/fuzz_targets/<name>.rs` calls the function of the same name under libFuzzer
//! (nightly, `cargo fuzz run <name>`); the stable test suite calls the same functions on
//! every file of `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/`, so that what the
//! fuzzer found stays found. `docs/fuzzing.md` has the commands and the figures.
//!
//! | target | what it reads |
//! |---|---|
//! | [`frame`] | an RPC stream: `frame::{body_len, decode, decode_body}`, request and response |
//! | [`broker_datagram`] | a datagram on a QUIC socket: `broker::decode` (STUN, broker, relay, punch) |
//! | [`punch`] | punch and punch-echo datagrams (tags `0x32`, `0x33`) |
//! | [`stun`] | `stun::{transaction_id, parse_binding_response, respond}` |
//! | [`grape_http`] | raw HTTP/1.1 bytes to the grape's API (hyper's parser, axum, the grape's handlers) |
//! | [`policy`] | a Nano RPC body through `nano::Policy::check` (read-only, opt-ins, small caps) |
//! | [`record_wire`] | a MessagePack worker record through `WireRecord::verify` |
//! | [`record_body`] | a record body's JSON, signed here so that `verify` reads it |
//! | [`rendezvous`] | a sequence of broker messages through `broker::rendezvous::Rendezvous` |
//! | [`subscription`] | subscription frames (§8) both ways, and a wallet's websocket message to the gateway |

mod grape_http;
mod rendezvous;
mod seeds;

use std::net::SocketAddr;

use serde_json::Value;

use crate::nano::policy::{ITERATED_KEYS, OFFSET_ACTIONS, UNBOUNDED_WITHOUT_COUNT};
use crate::nano::Policy;
use crate::protocol::broker::{
    self, BrokerMessage, Datagram, MAX_BROKER_MESSAGE_BYTES, NONCE_LEN, TAG_PUNCH, TAG_PUNCH_ECHO,
};
use crate::protocol::frame::{
    self, Frame, FrameError, RequestFrame, ResponseFrame, LENGTH_PREFIX_LEN,
};
use crate::protocol::identity::NodeKey;
use crate::protocol::record::{Record, RecordError, WireRecord, MAX_CLOCK_SKEW, MAX_RECORD_TTL};
use crate::protocol::stun as stun_codec;

pub use grape_http::grape_http;
pub use rendezvous::rendezvous;
pub use seeds::seeds;

/// A target's entry: takes any bytes, panics on a finding.
pub type Entry = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/` and `fuzz/corpus/` name them.
pub const TARGETS: &[(&str, Entry)] = &[
    ("frame", frame),
    ("broker_datagram", broker_datagram),
    ("punch", punch),
    ("stun", stun),
    ("grape_http", grape_http),
    ("policy", policy),
    ("record_wire", record_wire),
    ("record_body", record_body),
    ("rendezvous", rendezvous),
    ("subscription", subscription),
];

/// The wall clock the record targets run at, ms since the Unix epoch (fixed, so that a
/// corpus file means the same thing on every run).
pub const NOW_MS: u64 = 1_795_317_760_000;

/// The request frame limit a worker reads with by default.
const FRAME_LIMIT: usize = crate::defaults::DEFAULT_MAX_REQUEST_BYTES;

/// A cursor over fuzz input that reads small numbers and slices, with zeros past the end.
pub(crate) struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(crate) fn u8(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        head
    }

    /// A slice whose length is the next byte.
    pub(crate) fn short_slice(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.take(n)
    }

    /// What is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        self.take(self.bytes.len())
    }
}

/// An RPC stream's bytes as the worker reads a request (`body_len` on the prefix, then
/// `decode_body`) and as a client reads a response (`decode` of the whole stream).
/// Whatever decodes re-encodes to a frame that decodes to the same value.
pub fn frame(data: &[u8]) {
    if let Some(prefix) = data.first_chunk::<LENGTH_PREFIX_LEN>() {
        match frame::body_len(*prefix, FRAME_LIMIT) {
            Ok(len) => {
                assert!(len <= FRAME_LIMIT);
                if let Some(body) = data.get(LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len) {
                    checked_frame::<RequestFrame>(frame::decode_body(body));
                }
            }
            Err(FrameError::TooLarge { len, limit }) => assert!(len > limit),
            Err(e) => panic!("body_len refuses only what is too large, not: {e}"),
        }
    }
    checked_frame::<RequestFrame>(frame::decode(data, FRAME_LIMIT));
    checked_frame::<ResponseFrame>(frame::decode(data, FRAME_LIMIT));
    checked_frame::<RequestFrame>(frame::decode_body(data));
    checked_frame::<ResponseFrame>(frame::decode_body(data));
}

fn checked_frame<F>(decoded: Result<F, FrameError>)
where
    F: Frame + PartialEq + std::fmt::Debug,
{
    match decoded {
        Ok(value) => {
            assert_eq!(value.version(), frame::PROTOCOL_VERSION);
            let bytes = frame::encode(&value, usize::MAX).expect("a decoded frame encodes");
            let again: F = frame::decode(&bytes, usize::MAX).expect("its encoding decodes");
            assert_eq!(again, value);
        }
        Err(e) => {
            // Every refusal maps to a wire code and prints.
            let _ = (e.code(), e.to_string());
        }
    }
}

/// A subscription session's frame body (docs/protocol.md §8) as a worker reads a caller's
/// and a caller reads a worker's, and the same bytes as a wallet's websocket message to
/// the gateway (`gateway::ws`): whatever decodes re-encodes to itself, a refusal has a
/// wire code, and `opens_session` only answers.
pub fn subscription(data: &[u8]) {
    use crate::protocol::subscription::{self as sub, ClientFrame, WorkerFrame};
    let _ = sub::opens_session(data);
    checked_frame::<ClientFrame>(sub::decode(data));
    checked_frame::<WorkerFrame>(sub::decode(data));
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(why) = crate::gateway::ws::parse_request(text) {
            assert!(!why.is_empty(), "a refusal says why");
        }
    }
}

/// A datagram on a QUIC socket: `protocol::broker::decode`, and each kind re-encoded.
pub fn broker_datagram(data: &[u8]) {
    match broker::decode(data) {
        Ok(Datagram::Stun(bytes)) => {
            assert_eq!(bytes, data);
            assert!(stun_codec::is_stun(bytes));
        }
        Ok(Datagram::Broker(message)) => {
            assert!(data.len() <= MAX_BROKER_MESSAGE_BYTES);
            let bytes = broker::encode_broker(&message);
            assert_eq!(bytes.len(), broker::encoded_len(&message));
            // A compact input (arrays for maps) may re-encode larger than the limit, so
            // the round trip reads the MessagePack directly.
            let again: BrokerMessage =
                rmp_serde::from_slice(&bytes[1..]).expect("its encoding decodes");
            assert_eq!(again, message);
            let _ = broker::encoded_len(&broker::padded(message));
        }
        Ok(Datagram::Relay { circuit, payload }) => {
            assert_eq!(broker::encode_relay(circuit, payload), data);
        }
        Ok(Datagram::Punch(nonce)) => {
            assert_eq!(
                &broker::encode_punch(&nonce, false)[..],
                &data[..1 + NONCE_LEN]
            );
        }
        Ok(Datagram::PunchEcho(nonce)) => {
            assert_eq!(
                &broker::encode_punch(&nonce, true)[..],
                &data[..1 + NONCE_LEN]
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Punch and punch-echo datagrams: the first input byte picks the tag, the rest follows
/// it. At least the nonce's 16 bytes make a punch; the nonce is the bytes after the tag.
pub fn punch(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let tag = if pick & 1 == 0 {
        TAG_PUNCH
    } else {
        TAG_PUNCH_ECHO
    };
    let mut datagram = vec![tag];
    datagram.extend_from_slice(rest);
    match broker::decode(&datagram) {
        Ok(Datagram::Punch(nonce)) if tag == TAG_PUNCH => {
            assert_eq!(&nonce[..], &rest[..NONCE_LEN]);
        }
        Ok(Datagram::PunchEcho(nonce)) if tag == TAG_PUNCH_ECHO => {
            assert_eq!(&nonce[..], &rest[..NONCE_LEN]);
        }
        Ok(other) => panic!("tag {tag:#x} decoded as {other:?}"),
        Err(broker::ProtoError::Truncated) => assert!(rest.len() < NONCE_LEN),
        Err(e) => panic!("a punch of {} bytes refused: {e}", datagram.len()),
    }
}

/// STUN bytes as a broker port reads a request and a peer reads a response.
pub fn stun(data: &[u8]) {
    let tx = stun_codec::transaction_id(data);
    assert_eq!(tx.is_some(), stun_codec::is_stun(data));
    if let Some(tx) = tx {
        assert_eq!(&tx[..], &data[8..20]);
    }
    let tx = tx.unwrap_or_default();
    if stun_codec::parse_binding_response(data, &tx).is_ok() {
        let mut other = tx;
        other[0] ^= 1;
        assert!(
            stun_codec::parse_binding_response(data, &other).is_err(),
            "a response is taken for another transaction"
        );
    }
    let sources: [SocketAddr; 2] = [
        SocketAddr::from(([203, 0, 113, 7], 40123)),
        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 7], 443)),
    ];
    for source in sources {
        if let Some(response) = stun_codec::respond(data, source) {
            assert!(stun_codec::is_stun(data), "answered what is not STUN");
            let id = stun_codec::transaction_id(&response).expect("the response is STUN");
            assert_eq!(Some(id), stun_codec::transaction_id(data));
            assert_eq!(
                stun_codec::parse_binding_response(&response, &id),
                Ok(source)
            );
            assert_eq!(stun_codec::respond(&response, source), None);
        }
    }
}

/// The policies [`policy`] checks with, picked by the input's first byte: bits 0 to 2
/// add `process`, `work_generate` and `block_confirm`; bit 3 sets small caps (count 5,
/// arrays 3, offset 7), so that the fuzzer reaches every cap with short inputs.
fn policy_of(pick: u8) -> Policy {
    let mut policy = Policy::read_only();
    for (bit, action) in [(0, "process"), (1, "work_generate"), (2, "block_confirm")] {
        if pick & (1 << bit) != 0 {
            // Opt-in actions are always accepted by `allow`.
            let _ = policy.allow(action);
        }
    }
    if pick & 8 != 0 {
        policy
            .set_max_count(5)
            .set_max_array_len(3)
            .set_max_offset(7);
    }
    policy
}

/// A Nano RPC body through `Policy::check`: the first byte picks the policy
/// ([`policy_of`]), the rest is the body. What the policy lets through must obey its
/// rules as the node would read the bytes posted.
pub fn policy(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let policy = policy_of(pick);
    let checked = match policy.check(body) {
        Ok(checked) => checked,
        Err(refusal) => {
            assert!(
                refusal.message.len() <= 2048,
                "a refusal of {} bytes",
                refusal.message.len()
            );
            return;
        }
    };
    let action = checked.action();
    assert!(policy.is_allowed(action), "{action:?} passed");
    let posted: Value = serde_json::from_slice(checked.body()).expect("the posted body is JSON");
    let Value::Object(request) = &posted else {
        panic!("the posted body is not an object");
    };
    assert_eq!(
        request,
        checked.request(),
        "posted bytes and request differ"
    );
    assert_eq!(request.get("action").and_then(Value::as_str), Some(action));
    assert!(!request.contains_key("account_filter"));
    assert!(!request.contains_key(crate::nano::checked::UNCACHED_FIELD));
    if action == "process" {
        if let Some(force) = request.get("force") {
            let falsy = matches!(force, Value::Bool(false))
                || force.as_str().is_some_and(|s| s == "false" || s == "0")
                || force.as_u64() == Some(0);
            assert!(falsy, "process with force {force}");
        }
    }
    for (key, value) in request {
        assert_bounded(value, ITERATED_KEYS.contains(&key.as_str()), &policy);
    }
    let cap = if action == "accounts_receivable" {
        let accounts = match request.get("accounts") {
            Some(Value::Array(items)) => items.len(),
            Some(Value::Object(members)) => members.len(),
            _ => 1,
        };
        (policy.max_count() / accounts.max(1) as u64).max(1)
    } else {
        policy.max_count()
    };
    match request.get("count") {
        None => assert!(
            !UNBOUNDED_WITHOUT_COUNT.contains(&action),
            "{action} without a count"
        ),
        Some(count) => {
            let value = plain_integer(count).expect("count is plain digits or an integer");
            assert!(value <= cap, "count {value} over the cap {cap}");
        }
    }
    if OFFSET_ACTIONS.contains(&action) {
        if let Some(offset) = request.get("offset").and_then(plain_integer) {
            assert!(
                offset <= policy.max_offset(),
                "offset {offset} over the cap"
            );
        }
    }
    let _ = (
        checked.cache_key(),
        checked.ledger_keys(),
        checked.touched_keys(),
        checked.uncached(),
    );
}

/// A count or offset as the node reads plain digits or a JSON integer; `None` for other
/// text.
fn plain_integer(value: &Value) -> Option<u64> {
    match value {
        Value::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse().ok()
        }
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// No array in `value` is over the policy's cap, nor an object when `objects`.
fn assert_bounded(value: &Value, objects: bool, policy: &Policy) {
    match value {
        Value::Array(items) => {
            assert!(items.len() <= policy.max_array_len(), "an array passed");
            for item in items {
                assert_bounded(item, objects, policy);
            }
        }
        Value::Object(members) => {
            if objects {
                assert!(members.len() <= policy.max_array_len(), "an object passed");
            }
            for member in members.values() {
                assert_bounded(member, objects, policy);
            }
        }
        _ => {}
    }
}

/// What a believed record must satisfy at `now_ms` (the module doc of `record`).
fn assert_believable(record: &Record, wire: &WireRecord, service: &str, now_ms: u64) {
    assert_eq!(&record.wire, wire);
    assert_eq!(record.service, service);
    assert!(
        wire.salt.len() <= 64 && wire.v.len() <= 1000,
        "over BEP 44's sizes"
    );
    assert_eq!(record.node.as_bytes(), &wire.k);
    assert_eq!(record.body.v, crate::protocol::record::RECORD_VERSION);
    let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
    assert!(record.seq <= now + MAX_CLOCK_SKEW.as_millis() as i64);
    let exp = i64::try_from(record.body.exp).unwrap_or(i64::MAX);
    assert!(exp >= now, "an expired record believed");
    assert!(exp.saturating_sub(record.seq) <= MAX_RECORD_TTL.as_millis() as i64);
    let json = serde_json::to_vec(&record.body).expect("a body serializes");
    let again: crate::protocol::record::RecordBody =
        serde_json::from_slice(&json).expect("and reads back");
    assert_eq!(again, record.body);
}

/// `wire` through `verify` for its own salt at `now_ms`; a believed record must also be
/// believed for its signer and refused for another node and (when `thorough`, which
/// costs three more signature checks) for another service.
fn verify_every_way(wire: &WireRecord, now_ms: u64, thorough: bool) {
    let record = match wire.verify(&wire.salt, None, now_ms) {
        Ok(record) => record,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert_believable(&record, wire, &wire.salt, now_ms);
    if !thorough {
        return;
    }
    let same = wire.verify(&wire.salt, Some(&record.node), now_ms);
    assert_eq!(same.as_ref(), Ok(&record));
    let other = NodeKey::from_seed([0xee; 32]).node_id();
    if other != record.node {
        assert!(matches!(
            wire.verify(&wire.salt, Some(&other), now_ms),
            Err(RecordError::WrongNode { .. })
        ));
    }
    if wire.salt != "nano_rpc" {
        assert!(matches!(
            wire.verify("nano_rpc", None, now_ms),
            Err(RecordError::WrongService { .. })
        ));
    }
}

/// A worker record as a broker message carries it (MessagePack), through
/// `WireRecord::verify` for its own salt and for `nano_rpc`, at [`NOW_MS`].
pub fn record_wire(data: &[u8]) {
    let Ok(wire) = rmp_serde::from_slice::<WireRecord>(data) else {
        return;
    };
    let bytes = rmp_serde::to_vec_named(&wire).expect("a record encodes");
    assert_eq!(
        rmp_serde::from_slice::<WireRecord>(&bytes).ok(),
        Some(wire.clone())
    );
    verify_every_way(&wire, NOW_MS, true);
}

/// A record body's JSON, signed here with a fixed key so that `verify` gets past the
/// signature to the body parser and the time rules. Input: a byte for the salt's length,
/// the salt, two bytes for where `seq` lies relative to [`NOW_MS`] (signed, in seconds),
/// then the body.
pub fn record_body(data: &[u8]) {
    let mut input = Input::new(data);
    let salt = String::from_utf8_lossy(input.short_slice()).into_owned();
    let offset_s = i64::from(input.u16() as i16);
    let v = input.rest();
    let seq = NOW_MS as i64 + offset_s * 1000;
    let key = record_key();
    let item = mainline::MutableItem::new(key.signing_key().clone(), v, seq, Some(salt.as_bytes()));
    let wire = WireRecord {
        k: *item.key(),
        salt,
        seq,
        v: v.to_vec(),
        sig: *item.signature(),
    };
    verify_every_way(&wire, NOW_MS, false);
}

/// The key [`record_body`] signs with (made once: deriving it costs a scalar product).
fn record_key() -> &'static NodeKey {
    static KEY: std::sync::OnceLock<NodeKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| NodeKey::from_seed([0x5e; 32]))
}
