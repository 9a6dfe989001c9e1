//! Worker records: what a worker says about itself, signed with its node key, in the
//! shape of a BEP 44 mutable item so that the same bytes go into the DHT and through
//! brokers (pure; docs/protocol.md §6).
//!
//! A record is a BEP 44 mutable item (<https://www.bittorrent.org/beps/bep_0044.html>):
//!
//! - `k`: the worker's node id (its Ed25519 public key);
//! - `salt`: the service key (`nano_rpc`), so one worker can serve several keys and
//!   its record for a key is found at `SHA-1(k ‖ salt)`;
//! - `seq`: when it was signed, in milliseconds since the Unix epoch (so a newer record
//!   always wins, as BEP 44 requires of `seq`);
//! - `v`: [`RecordBody`] as compact JSON, at most 1000 bytes;
//! - `sig`: Ed25519 over BEP 44's bencoded `4:salt…3:seqi…e1:v…` string.
//!
//! A record is **believed** ([`WireRecord::verify`]) only when it keeps BEP 44's sizes
//! (a salt of at most 64 bytes, a `v` of at most 1000), the signature verifies
//! over exactly those bytes, the salt is the service key asked for, `seq` is not more
//! than [`MAX_CLOCK_SKEW`] ahead of the reader's clock, the body's `exp` has not passed
//! and lies at most [`MAX_RECORD_TTL`] after `seq`, and, when the reader asked for a
//! particular node, `k` is that node. So no grape, broker or host on the path can alter
//! a record, and one replayed after its worker left dies at its `exp`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::identity::{NodeId, NodeKey};

/// The service key under which a worker answers, on its own RPC face, with its current
/// record for the service key in the request's body (MessagePack [`WireRecord`]).
pub const RECORD_SERVICE: &str = "nano-connect/record";

/// Version of the record body format.
pub const RECORD_VERSION: u8 = 1;

/// Longest a record may claim to live (`exp − seq`): a record replayed from an old copy
/// is dead within this long of being signed, whatever it says.
pub const MAX_RECORD_TTL: Duration = Duration::from_secs(3600);

/// How far a record's `seq` may lie ahead of the reader's clock (clocks disagree).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Largest service key a record can carry: BEP 44 salts are at most 64 bytes.
pub const MAX_SERVICE_KEY_BYTES: usize = grape::bep44::MAX_SALT_LEN;

/// A broker a worker behind a NAT is registered with, and the worker's reflexive address
/// as that broker sees it (RFC 8489: the server-reflexive address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Via {
    /// The broker's UDP address.
    pub broker: SocketAddr,
    /// The worker's QUIC socket as the broker sees it.
    pub reflexive: SocketAddr,
}

/// What a worker says about how to reach it (the BEP 44 `v`, as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBody {
    /// Body format version, [`RECORD_VERSION`].
    pub v: u8,
    /// When the record stops being true, ms since the Unix epoch.
    pub exp: u64,
    /// QUIC addresses that take connections from anyone (a public worker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<SocketAddr>,
    /// The QUIC socket's addresses on its own host, for callers on the same LAN.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local: Vec<SocketAddr>,
    /// Brokers the worker is registered with (a worker behind a NAT).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<Via>,
    /// Whether the worker's NAT maps endpoint-dependently (RFC 4787 §4.1, "symmetric").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sym: bool,
    /// Where browsers reach the worker over WebTransport, and the certificates they may
    /// accept there (docs/protocol.md §9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebFace>,
}

/// A worker's WebTransport face as its record gives it: `https://ADDR/nano-connect` for
/// each address, with the certificate hashes a page passes as `serverCertificateHashes`
/// (W3C WebTransport): the one served now and the next one, so that a page holding the
/// record connects across a rotation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebFace {
    /// UDP addresses of the WebTransport (HTTP/3) endpoint.
    pub addrs: Vec<SocketAddr>,
    /// SHA-256 of each certificate, 64 lowercase hex digits; at most 4.
    pub sha256: Vec<String>,
}

/// A record as it travels: the BEP 44 fields, unverified (MessagePack in broker
/// messages, hex and text in the grape's HTTP API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRecord {
    /// The node id's 32 bytes (BEP 44 `k`).
    #[serde(with = "serde_bytes")]
    pub k: [u8; 32],
    /// The service key (BEP 44 `salt`).
    pub salt: String,
    /// Signing time, ms since the Unix epoch (BEP 44 `seq`).
    pub seq: i64,
    /// The body's JSON bytes (BEP 44 `v`).
    #[serde(with = "serde_bytes")]
    pub v: Vec<u8>,
    /// Ed25519 signature (BEP 44 `sig`).
    #[serde(with = "serde_bytes")]
    pub sig: [u8; 64],
}

/// A record whose signature and freshness were checked ([`WireRecord::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Who signed it.
    pub node: NodeId,
    /// The service key it is for.
    pub service: String,
    /// Signing time, ms since the Unix epoch.
    pub seq: i64,
    /// What it says.
    pub body: RecordBody,
    /// The signed bytes, to pass on unchanged.
    pub wire: WireRecord,
}

/// Why a record is not believed (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The signature does not verify over salt, seq and v with key k (BEP 44), or k is
    /// not an Ed25519 key: the record was altered or forged.
    #[error("record signature does not verify (altered or forged): {0}")]
    Signature(String),
    /// The record is for another service key.
    #[error("record is for service {got:?}, not {want:?}")]
    WrongService {
        /// The salt it carries.
        got: String,
        /// The key asked for.
        want: String,
    },
    /// The record is signed by another node than the one asked for.
    #[error("record is signed by node {got}, not the expected {want}")]
    WrongNode {
        /// Who signed it.
        got: NodeId,
        /// Who was asked for.
        want: NodeId,
    },
    /// `exp` has passed (an old record, possibly replayed).
    #[error("record expired {ago_ms} ms ago (a stale or replayed record)")]
    Expired {
        /// How long ago.
        ago_ms: u64,
    },
    /// `seq` lies too far ahead of the reader's clock, or `exp` too far after `seq`.
    #[error("record times are out of bounds: {0}")]
    Times(String),
    /// The body is not the JSON of a [`RecordBody`] of a known version.
    #[error("record body is malformed: {0}")]
    Body(String),
    /// The body is over BEP 44's 1000 bytes, or the service key over 64.
    #[error("record too large: {0}")]
    TooLarge(String),
}

fn unix_ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

impl Record {
    /// Signs `body` for `service` with `key` at `now_ms` (ms since the Unix epoch),
    /// which becomes `seq`.
    ///
    /// Errors: [`RecordError::TooLarge`] when the body's JSON is over 1000 bytes or the
    /// service key over 64 bytes (BEP 44's limits).
    pub fn sign(
        key: &NodeKey,
        service: &str,
        now_ms: u64,
        body: RecordBody,
    ) -> Result<Self, RecordError> {
        if service.len() > MAX_SERVICE_KEY_BYTES {
            return Err(RecordError::TooLarge(format!(
                "service key of {} bytes; at most {MAX_SERVICE_KEY_BYTES}",
                service.len()
            )));
        }
        let v = serde_json::to_vec(&body).map_err(|e| RecordError::Body(e.to_string()))?;
        if v.len() > grape::bep44::MAX_VALUE_LEN {
            return Err(RecordError::TooLarge(format!(
                "body of {} bytes; at most {} (list fewer addresses)",
                v.len(),
                grape::bep44::MAX_VALUE_LEN
            )));
        }
        let seq = unix_ms_i64(now_ms);
        let item = mainline::MutableItem::new(
            key.signing_key().clone(),
            &v,
            seq,
            Some(service.as_bytes()),
        );
        let wire = WireRecord {
            k: *item.key(),
            salt: service.to_string(),
            seq,
            v,
            sig: *item.signature(),
        };
        Ok(Self {
            node: key.node_id(),
            service: service.to_string(),
            seq,
            body,
            wire,
        })
    }

    /// The BEP 44 mutable item of this record, for a DHT put.
    pub fn to_mutable_item(&self) -> mainline::MutableItem {
        mainline::MutableItem::new_signed_unchecked(
            self.wire.k,
            self.wire.sig,
            &self.wire.v,
            self.wire.seq,
            Some(self.wire.salt.as_bytes()),
        )
    }

    /// Whether the worker takes direct connections (it lists public addresses).
    pub fn is_public(&self) -> bool {
        !self.body.addrs.is_empty()
    }
}

impl WireRecord {
    /// The record as the grape's HTTP API (`/put`, `/get`) and its WebTransport lookup
    /// carry it: `{"k": hex, "salt": text, "seq": int, "v": text, "sig": hex}`. `None`
    /// when `v` is not UTF-8 (no record of this crate's making).
    pub fn to_json(&self) -> Option<serde_json::Value> {
        let v = std::str::from_utf8(&self.v).ok()?;
        Some(serde_json::json!({
            "v": v,
            "k": hex::encode(self.k),
            "sig": hex::encode(self.sig),
            "seq": self.seq,
            "salt": self.salt,
        }))
    }

    /// The wire form of a BEP 44 mutable item fetched from the DHT (its salt must be
    /// UTF-8: a service key).
    pub fn from_mutable_item(item: &mainline::MutableItem) -> Option<Self> {
        Some(Self {
            k: *item.key(),
            salt: String::from_utf8(item.salt()?.to_vec()).ok()?,
            seq: item.seq(),
            v: item.value().to_vec(),
            sig: *item.signature(),
        })
    }

    /// Checks the record and reads it (see the module doc for every rule): signed by `k`
    /// over BEP 44's signable string, for `service`, by `expect` when given, fresh at
    /// `now_ms` (ms since the Unix epoch).
    pub fn verify(
        &self,
        service: &str,
        expect: Option<&NodeId>,
        now_ms: u64,
    ) -> Result<Record, RecordError> {
        // No DHT node stores an item over these, so only a broker path could carry one.
        if self.salt.len() > MAX_SERVICE_KEY_BYTES || self.v.len() > grape::bep44::MAX_VALUE_LEN {
            return Err(RecordError::TooLarge(format!(
                "service key of {} bytes and body of {} bytes; BEP 44 allows {} and {}",
                self.salt.len(),
                self.v.len(),
                MAX_SERVICE_KEY_BYTES,
                grape::bep44::MAX_VALUE_LEN
            )));
        }
        let node = NodeId::from_bytes(self.k).map_err(|e| RecordError::Signature(e.to_string()))?;
        grape::bep44::verify_mutable(
            &self.k,
            &self.sig,
            &self.v,
            self.seq,
            Some(self.salt.as_bytes()),
        )
        .map_err(|e| RecordError::Signature(e.to_string()))?;
        if self.salt != service {
            return Err(RecordError::WrongService {
                got: self.salt.chars().take(64).collect(),
                want: service.to_string(),
            });
        }
        if let Some(want) = expect {
            if *want != node {
                return Err(RecordError::WrongNode {
                    got: node,
                    want: *want,
                });
            }
        }
        let body: RecordBody =
            serde_json::from_slice(&self.v).map_err(|e| RecordError::Body(e.to_string()))?;
        if body.v != RECORD_VERSION {
            return Err(RecordError::Body(format!(
                "version {}; this reader knows {RECORD_VERSION}",
                body.v
            )));
        }
        let now = unix_ms_i64(now_ms);
        let skew = MAX_CLOCK_SKEW.as_millis() as i64;
        if self.seq > now.saturating_add(skew) {
            return Err(RecordError::Times(format!(
                "signed {} ms in the future",
                self.seq - now
            )));
        }
        let exp = unix_ms_i64(body.exp);
        if exp.saturating_sub(self.seq) > MAX_RECORD_TTL.as_millis() as i64 {
            return Err(RecordError::Times(format!(
                "claims to live {} s, at most {} s",
                exp.saturating_sub(self.seq) / 1000,
                MAX_RECORD_TTL.as_secs()
            )));
        }
        if exp < now {
            return Err(RecordError::Expired {
                ago_ms: (now - exp) as u64,
            });
        }
        Ok(Record {
            node,
            service: self.salt.clone(),
            seq: self.seq,
            body,
            wire: self.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_317_760_000;

    fn body(exp: u64) -> RecordBody {
        RecordBody {
            v: RECORD_VERSION,
            exp,
            addrs: vec!["203.0.113.5:4433".parse().unwrap()],
            local: vec![],
            via: vec![Via {
                broker: "203.0.113.11:30001".parse().unwrap(),
                reflexive: "198.51.100.7:41234".parse().unwrap(),
            }],
            sym: false,
            web: None,
        }
    }

    fn signed() -> Record {
        Record::sign(
            &NodeKey::from_seed([5; 32]),
            "nano_rpc",
            NOW,
            body(NOW + 240_000),
        )
        .unwrap()
    }

    #[test]
    fn a_signed_record_verifies_and_reads_back() {
        let record = signed();
        let read = record
            .wire
            .verify("nano_rpc", Some(&record.node), NOW + 1)
            .unwrap();
        assert_eq!(read, record);
        assert!(read.is_public());
        // It is a valid BEP 44 mutable item of the node's key with the service as salt.
        let item = record.to_mutable_item();
        assert_eq!(item.key(), record.node.as_bytes());
        assert_eq!(item.salt(), Some(&b"nano_rpc"[..]));
        assert_eq!(WireRecord::from_mutable_item(&item).unwrap(), record.wire);
        grape::bep44::verify_mutable(
            item.key(),
            item.signature(),
            item.value(),
            item.seq(),
            item.salt(),
        )
        .expect("the DHT's own check passes");
    }

    #[test]
    fn an_altered_record_is_refused() {
        let record = signed();
        let mut wire = record.wire.clone();
        // A broker that swaps in its own address for the worker's.
        let forged = String::from_utf8(wire.v.clone())
            .unwrap()
            .replace("203.0.113.5", "203.0.113.66");
        wire.v = forged.into_bytes();
        assert!(matches!(
            wire.verify("nano_rpc", None, NOW),
            Err(RecordError::Signature(_))
        ));
        let mut wire = record.wire.clone();
        wire.seq += 1;
        assert!(matches!(
            wire.verify("nano_rpc", None, NOW),
            Err(RecordError::Signature(_))
        ));
        let mut wire = record.wire.clone();
        wire.salt = "other".into();
        assert!(matches!(
            wire.verify("other", None, NOW),
            Err(RecordError::Signature(_))
        ));
    }

    #[test]
    fn a_record_of_another_service_or_node_is_refused() {
        let record = signed();
        assert!(matches!(
            record.wire.verify("echo", None, NOW),
            Err(RecordError::WrongService { .. })
        ));
        let other = NodeKey::from_seed([6; 32]).node_id();
        let e = record
            .wire
            .verify("nano_rpc", Some(&other), NOW)
            .unwrap_err();
        assert!(e.to_string().contains(&other.to_string()), "{e}");
    }

    #[test]
    fn a_replayed_record_dies_at_its_expiry() {
        let record = signed();
        let exp = record.body.exp;
        assert!(record.wire.verify("nano_rpc", None, exp).is_ok());
        assert!(matches!(
            record.wire.verify("nano_rpc", None, exp + 1),
            Err(RecordError::Expired { ago_ms: 1 })
        ));
    }

    #[test]
    fn records_from_the_future_or_claiming_long_lives_are_refused() {
        let key = NodeKey::from_seed([5; 32]);
        let future = Record::sign(&key, "nano_rpc", NOW + 61_000, body(NOW + 200_000)).unwrap();
        assert!(matches!(
            future.wire.verify("nano_rpc", None, NOW),
            Err(RecordError::Times(_))
        ));
        let near = Record::sign(&key, "nano_rpc", NOW + 59_000, body(NOW + 200_000)).unwrap();
        assert!(near.wire.verify("nano_rpc", None, NOW).is_ok());
        let eternal = Record::sign(&key, "nano_rpc", NOW, body(NOW + 3_600_001)).unwrap();
        assert!(matches!(
            eternal.wire.verify("nano_rpc", None, NOW),
            Err(RecordError::Times(_))
        ));
    }

    #[test]
    fn limits_are_bep_44_s() {
        let key = NodeKey::from_seed([5; 32]);
        let long_key = "k".repeat(65);
        assert!(matches!(
            Record::sign(&key, &long_key, NOW, body(NOW + 1)),
            Err(RecordError::TooLarge(_))
        ));
        let mut big = body(NOW + 1);
        big.local = (0..60)
            .map(|i| SocketAddr::from(([10, 0, 0, i as u8], 40000 + i)))
            .collect();
        assert!(matches!(
            Record::sign(&key, "nano_rpc", NOW, big),
            Err(RecordError::TooLarge(_))
        ));
        // A typical record stays far below the limit.
        assert!(signed().wire.v.len() < 300, "{}", signed().wire.v.len());
    }

    #[test]
    fn records_over_bep_44_s_sizes_are_not_believed() {
        // Signed by their node, but no DHT node would store them: a broker must not
        // take a 65-byte service key or a body over 1000 bytes either.
        let key = NodeKey::from_seed([5; 32]);
        let sign_raw = |salt: &str, v: &[u8]| {
            let item = mainline::MutableItem::new(
                key.signing_key().clone(),
                v,
                NOW as i64,
                Some(salt.as_bytes()),
            );
            WireRecord::from_mutable_item(&item).unwrap()
        };
        let long_key = "k".repeat(65);
        let body = br#"{"v":1,"exp":1795317800000}"#;
        assert!(sign_raw(&"k".repeat(64), body)
            .verify(&"k".repeat(64), None, NOW)
            .is_ok());
        assert!(matches!(
            sign_raw(&long_key, body).verify(&long_key, None, NOW),
            Err(RecordError::TooLarge(_))
        ));
        let mut big = br#"{"v":1,"exp":1795317800000,"pad":""#.to_vec();
        big.resize(1001 - 2, b'x');
        big.extend_from_slice(br#""}"#);
        assert_eq!(big.len(), 1001);
        assert!(matches!(
            sign_raw("nano_rpc", &big).verify("nano_rpc", None, NOW),
            Err(RecordError::TooLarge(_))
        ));
    }

    #[test]
    fn unknown_body_fields_are_ignored_and_other_versions_refused() {
        let key = NodeKey::from_seed([5; 32]);
        let sign_raw = |v: &[u8]| {
            let item = mainline::MutableItem::new(
                key.signing_key().clone(),
                v,
                NOW as i64,
                Some(b"nano_rpc"),
            );
            WireRecord::from_mutable_item(&item).unwrap()
        };
        let newer = sign_raw(br#"{"v":1,"exp":1795317800000,"addrs":["1.2.3.4:5"],"new":true}"#);
        assert_eq!(
            newer
                .verify("nano_rpc", None, NOW)
                .unwrap()
                .body
                .addrs
                .len(),
            1
        );
        let v2 = sign_raw(br#"{"v":2,"exp":1795317800000}"#);
        assert!(matches!(
            v2.verify("nano_rpc", None, NOW),
            Err(RecordError::Body(_))
        ));
        let junk = sign_raw(b"not json");
        assert!(matches!(
            junk.verify("nano_rpc", None, NOW),
            Err(RecordError::Body(_))
        ));
    }
}
