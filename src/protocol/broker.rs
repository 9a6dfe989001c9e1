//! The NAT-traversal datagrams that share a UDP socket with QUIC (pure codec).
//!
//! Every kind starts with a byte below 0x40, so it never looks like QUIC: QUIC v1 sets
//! the fixed bit 0x40 in every packet (RFC 9000 §17, greasing it is off here, RFC 9287),
//! and STUN (RFC 8489 §5) starts with two zero bits and carries its magic cookie.
//!
//! | first byte | kind | rest |
//! |---|---|---|
//! | 0x00–0x01 | STUN (RFC 8489) | STUN header and attributes |
//! | `0x30` | broker message | MessagePack of [`BrokerMessage`] |
//! | `0x31` | relayed QUIC datagram | circuit id (u32, big-endian), then the QUIC datagram |
//! | `0x32` | punch | the 16-byte introduction nonce (17 bytes in all) |
//! | `0x33` | punch echo | the 16-byte nonce of the punch being echoed |
//!
//! The full specification is in `docs/protocol.md`, section 5.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::record::WireRecord;

/// First byte of a broker message.
pub const TAG_BROKER: u8 = 0x30;
/// First byte of a relayed QUIC datagram.
pub const TAG_RELAY: u8 = 0x31;
/// First byte of a punch.
pub const TAG_PUNCH: u8 = 0x32;
/// First byte of a punch echo.
pub const TAG_PUNCH_ECHO: u8 = 0x33;
/// Bytes of an introduction nonce.
pub const NONCE_LEN: usize = 16;
/// Bytes before the QUIC datagram in a relay frame (tag + circuit id).
pub const RELAY_HEADER_LEN: usize = 5;
/// Largest broker message accepted, bytes: messages carry a few addresses and a key.
pub const MAX_BROKER_MESSAGE_BYTES: usize = 1200;
/// An answer to a `List` or `Connect` is at most this many times the request's size
/// (QUIC's anti-amplification factor, RFC 9000 §8.1): a request with a spoofed source
/// cannot be turned into a flood toward its victim.
pub const AMPLIFICATION_FACTOR: usize = 3;

/// A fresh-random introduction nonce: punches carry it, so that only the two introduced
/// peers can open a path (Grenache's punches carried none).
pub type Nonce = [u8; NONCE_LEN];

/// Which side of an introduction this peer plays. QUIC has no simultaneous open, so
/// the roles are fixed: the client dials, the worker punches until the dial arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Dial the peer with QUIC (the client).
    Dial,
    /// Send punch datagrams toward the peer until its QUIC connection arrives (the worker).
    Punch,
}

/// Why a broker refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    /// No worker is registered for the key.
    NoWorker,
    /// The introduction named by the nonce is unknown or expired.
    UnknownIntroduction,
    /// The relay is full (circuit count limit) or relaying is off.
    RelayFull,
    /// Too many relay requests from this IP address (per-IP rate limit).
    RateLimited,
    /// A circuit used up its byte allowance.
    RelayBytesExceeded,
    /// A circuit lasted its maximum duration.
    RelayDurationExceeded,
    /// The message was not understood.
    BadRequest,
    /// A registration's record does not verify (forged, altered, expired, for another
    /// key, or not made for the address it came from).
    BadRecord,
    /// The broker holds as many registrations as it takes (from this address, for this
    /// key, or in all); register elsewhere.
    Full,
}

/// A message between a peer and the broker, MessagePack after [`TAG_BROKER`].
///
/// Each request carries a transaction id `tx` chosen by its sender; the answer repeats
/// it. An [`BrokerMessage::Introduce`] pushed to a worker carries a broker-chosen `tx`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerMessage {
    /// Peer → broker: asks for the peer's reflexive address (and measures the RTT).
    Ping {
        /// Transaction id.
        tx: u64,
    },
    /// Broker → peer: answer to `Ping`.
    Pong {
        /// Transaction id of the ping.
        tx: u64,
        /// The source address the broker saw (the server-reflexive address, RFC 8489).
        reflexive: SocketAddr,
        /// A second broker address (another port) that answers STUN Binding, for
        /// telling endpoint-independent from endpoint-dependent mapping (RFC 4787 §4.1).
        alt: Option<SocketAddr>,
    },
    /// Worker → broker, from its QUIC socket: registers (or refreshes) its signed
    /// record for the record's service key. The record must list this broker's view of
    /// the worker (`via[].reflexive` equal to the source address), and its `seq` must not
    /// be older than the one registered before for the same node.
    Register {
        /// Transaction id.
        tx: u64,
        /// The worker's record (docs/protocol.md §6): service key, node id, local
        /// addresses, symmetric flag, signed.
        record: WireRecord,
        /// The worker's last measured round-trip time to the broker, ms (0: unknown).
        rtt_ms: u32,
    },
    /// Worker → broker: withdraws its registration for the record's key (a node going
    /// away or unhealthy). The record must be signed by the registered node and newer
    /// than the registered one; answered with `Registered` whose `expires_ms` is 0.
    Unregister {
        /// Transaction id.
        tx: u64,
        /// A fresh record of the node, which proves that the node itself asks.
        record: WireRecord,
    },
    /// Broker → worker: the registration holds until `expires_ms` from now unless refreshed.
    Registered {
        /// Transaction id of the registration.
        tx: u64,
        /// The worker's reflexive address as the broker saw it.
        reflexive: SocketAddr,
        /// Milliseconds the registration lives without a refresh.
        expires_ms: u32,
    },
    /// Client → broker: asks to be introduced to a worker of `key`: the node `node` when
    /// given, else one the broker picks at random.
    Connect {
        /// Transaction id.
        tx: u64,
        /// Service key wanted.
        key: String,
        /// The node wanted (its 32 key bytes); absent: any.
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        node: Option<[u8; 32]>,
        /// Addresses the client's QUIC socket has on its own host.
        local: Vec<SocketAddr>,
        /// The client's measured round-trip time to the broker, ms (0: unknown).
        rtt_ms: u32,
        /// Whether the client's NAT maps endpoint-dependently (symmetric); absent: false.
        #[serde(default)]
        symmetric: bool,
        /// Padding, ignored (see `List`): the `Introduce` answer carries the worker's
        /// record only when it fits three times the `Connect`.
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
        pad: Vec<u8>,
    },
    /// Broker → both peers: the other side's addresses, a nonce and a start delay.
    Introduce {
        /// Transaction id (the client's `Connect` tx; a fresh one toward the worker).
        tx: u64,
        /// What this peer does.
        role: Role,
        /// The other peer's reflexive address.
        peer_reflexive: SocketAddr,
        /// The other peer's local addresses.
        peer_local: Vec<SocketAddr>,
        /// Fresh random nonce both sides put in their punches.
        #[serde(with = "serde_bytes")]
        nonce: Nonce,
        /// Milliseconds to wait after receipt before starting, so that both sides start
        /// together (RTT-based synchronisation as in libp2p DCUtR).
        delay_ms: u32,
        /// Whether the other peer's NAT is symmetric: exactly one symmetric side runs
        /// the birthday method (docs/protocol.md §5.4); absent means false.
        #[serde(default)]
        peer_symmetric: bool,
        /// To the client: the worker's signed record, so that the client knows which
        /// node it is about to reach before it dials (absent toward the worker).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        record: Option<WireRecord>,
    },
    /// Anyone → broker (or → a public worker's QUIC socket): the signed records of the
    /// workers of `key` the broker holds (a worker answers with its own), from the
    /// `skip`-th on.
    List {
        /// Transaction id.
        tx: u64,
        /// Service key.
        key: String,
        /// Records to skip (paging: a broker answers as many as fit one datagram).
        #[serde(default)]
        skip: u16,
        /// Padding, ignored: an answer is at most three times its request's size, so a
        /// requester pads to [`PADDED_REQUEST_BYTES`] to get a page of records.
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
        pad: Vec<u8>,
    },
    /// Answer to `List`: some records, and how many there are in all.
    Listed {
        /// Transaction id of the list request.
        tx: u64,
        /// Records `skip ..` (as many as fit 1200 bytes).
        records: Vec<WireRecord>,
        /// Records the broker holds for the key in all.
        total: u16,
    },
    /// Client → broker: no direct path opened; relay the introduction named by `nonce`.
    RelayRequest {
        /// Transaction id.
        tx: u64,
        /// The nonce of the introduction.
        #[serde(with = "serde_bytes")]
        nonce: Nonce,
    },
    /// Broker → client: relay frames with `circuit` now reach the worker.
    RelayGranted {
        /// Transaction id of the request.
        tx: u64,
        /// The circuit id for [`TAG_RELAY`] frames.
        circuit: u32,
        /// Bytes of QUIC datagrams (both ways) the circuit may carry.
        max_bytes: u64,
        /// Milliseconds the circuit may last.
        max_ms: u64,
    },
    /// Broker → peer: a refusal with a reason for people.
    Refused {
        /// Transaction id of the refused request (0 for a circuit closed by a limit).
        tx: u64,
        /// The circuit concerned, if any.
        circuit: Option<u32>,
        /// Machine-readable reason.
        code: RefusalCode,
        /// One line for people.
        message: String,
    },
}

/// A NAT-traversal datagram, decoded.
// Datagrams are decoded one at a time and handled at once, never stored in bulk: the
// size of the broker variant (a record inline) costs nothing worth a box per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// A STUN message (RFC 8489).
    Stun(&'a [u8]),
    /// A broker message.
    Broker(BrokerMessage),
    /// A relayed QUIC datagram.
    Relay {
        /// Circuit id.
        circuit: u32,
        /// The QUIC datagram.
        payload: &'a [u8],
    },
    /// A punch with its nonce.
    Punch(Nonce),
    /// A punch echo with its nonce.
    PunchEcho(Nonce),
}

/// Why a datagram could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoError {
    /// Empty, or a first byte of no known kind.
    #[error("unknown datagram kind")]
    UnknownKind,
    /// Shorter than its kind requires.
    #[error("datagram too short for its kind")]
    Truncated,
    /// Longer than [`MAX_BROKER_MESSAGE_BYTES`].
    #[error("broker message too large")]
    TooLarge,
    /// The MessagePack body does not decode.
    #[error("bad broker message: {0}")]
    Malformed(String),
}

/// Decodes a NAT-traversal datagram. Never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<Datagram<'_>, ProtoError> {
    let (&tag, rest) = bytes.split_first().ok_or(ProtoError::UnknownKind)?;
    match tag {
        0x00 | 0x01 if crate::protocol::stun::is_stun(bytes) => Ok(Datagram::Stun(bytes)),
        TAG_BROKER => {
            if bytes.len() > MAX_BROKER_MESSAGE_BYTES {
                return Err(ProtoError::TooLarge);
            }
            rmp_serde::from_slice(rest)
                .map(Datagram::Broker)
                .map_err(|e| ProtoError::Malformed(e.to_string()))
        }
        TAG_RELAY => {
            let (id, payload) = rest.split_first_chunk::<4>().ok_or(ProtoError::Truncated)?;
            Ok(Datagram::Relay {
                circuit: u32::from_be_bytes(*id),
                payload,
            })
        }
        TAG_PUNCH | TAG_PUNCH_ECHO => {
            let nonce: Nonce = rest
                .get(..NONCE_LEN)
                .and_then(|n| n.try_into().ok())
                .ok_or(ProtoError::Truncated)?;
            Ok(if tag == TAG_PUNCH {
                Datagram::Punch(nonce)
            } else {
                Datagram::PunchEcho(nonce)
            })
        }
        _ => Err(ProtoError::UnknownKind),
    }
}

/// Encodes a broker message: [`TAG_BROKER`] then MessagePack (field names kept, so
/// that other implementations can read it as a map).
pub fn encode_broker(message: &BrokerMessage) -> Vec<u8> {
    let mut out = vec![TAG_BROKER];
    // Serialising these plain types into a Vec cannot fail.
    let _ = rmp_serde::encode::write_named(&mut out, message);
    out
}

/// Bytes a broker message takes on the wire (tag included).
pub fn encoded_len(message: &BrokerMessage) -> usize {
    encode_broker(message).len()
}

/// What a requester pads `List` and `Connect` to: three times this fits a page of
/// records in one 1200-byte answer.
pub const PADDED_REQUEST_BYTES: usize = MAX_BROKER_MESSAGE_BYTES / 3;

/// Pads a `List` or `Connect` (other kinds unchanged) so that it encodes to about
/// [`PADDED_REQUEST_BYTES`], for an answer with records (see `List::pad`).
pub fn padded(mut message: BrokerMessage) -> BrokerMessage {
    let len = encoded_len(&message);
    if let BrokerMessage::List { pad, .. } | BrokerMessage::Connect { pad, .. } = &mut message {
        // A bin8/bin16 header takes 2-3 bytes, the "pad" key 4.
        let want = PADDED_REQUEST_BYTES.saturating_sub(len + 7);
        *pad = vec![0; want];
    }
    message
}

/// Encodes a relay frame around `payload`.
pub fn encode_relay(circuit: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RELAY_HEADER_LEN + payload.len());
    out.push(TAG_RELAY);
    out.extend_from_slice(&circuit.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Encodes a punch (`echo` false) or punch echo (`echo` true): 17 bytes, under the 22
/// at which quinn may answer junk with a stateless reset.
pub fn encode_punch(nonce: &Nonce, echo: bool) -> [u8; 1 + NONCE_LEN] {
    let mut out = [0u8; 1 + NONCE_LEN];
    out[0] = if echo { TAG_PUNCH_ECHO } else { TAG_PUNCH };
    out[1..].copy_from_slice(nonce);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr() -> SocketAddr {
        "198.51.100.4:5000".parse().unwrap()
    }

    /// A typical signed record (a worker behind a NAT with one broker) for `salt`.
    fn record(salt: String) -> WireRecord {
        use crate::protocol::identity::NodeKey;
        use crate::protocol::record::{Record, RecordBody, Via, RECORD_VERSION};
        let body = RecordBody {
            v: RECORD_VERSION,
            exp: 1_795_317_999_000,
            addrs: vec![],
            local: vec!["10.0.1.2:41234".parse().unwrap()],
            via: vec![Via {
                broker: "203.0.113.11:30001".parse().unwrap(),
                reflexive: "203.0.113.101:41234".parse().unwrap(),
            }],
            sym: false,
            web: None,
        };
        Record::sign(&NodeKey::from_seed([4; 32]), &salt, 1_795_317_760_000, body)
            .unwrap()
            .wire
    }

    #[test]
    fn every_message_round_trips_and_stays_below_quic() {
        let messages = vec![
            BrokerMessage::Ping { tx: 1 },
            BrokerMessage::Pong {
                tx: 1,
                reflexive: addr(),
                alt: Some(addr()),
            },
            BrokerMessage::Register {
                tx: 2,
                record: record("nano_rpc".into()),
                rtt_ms: 3,
            },
            BrokerMessage::Listed {
                tx: 4,
                records: vec![record("nano_rpc".into()); 3],
                total: 9,
            },
            BrokerMessage::Introduce {
                tx: 3,
                role: Role::Punch,
                peer_reflexive: addr(),
                peer_local: vec![],
                nonce: [7; NONCE_LEN],
                delay_ms: 12,
                peer_symmetric: true,
                record: Some(record("nano_rpc".into())),
            },
            BrokerMessage::Refused {
                tx: 0,
                circuit: Some(9),
                code: RefusalCode::RelayBytesExceeded,
                message: "over".into(),
            },
        ];
        for m in messages {
            let bytes = encode_broker(&m);
            assert!(bytes[0] < 0x40);
            assert!(
                bytes.len() <= MAX_BROKER_MESSAGE_BYTES,
                "{} bytes: {m:?}",
                bytes.len()
            );
            assert_eq!(decode(&bytes), Ok(Datagram::Broker(m)));
        }
        for small in [
            BrokerMessage::List {
                tx: 1,
                key: "nano_rpc".into(),
                skip: 0,
                pad: vec![],
            },
            BrokerMessage::Connect {
                tx: 1,
                key: "nano_rpc".into(),
                node: Some([9; 32]),
                local: vec![addr()],
                rtt_ms: 5,
                symmetric: false,
                pad: vec![],
            },
        ] {
            let len = encoded_len(&padded(small));
            assert!(
                (PADDED_REQUEST_BYTES - 4..=PADDED_REQUEST_BYTES).contains(&len),
                "{len}"
            );
        }
        let punch = encode_punch(&[1; NONCE_LEN], false);
        assert!(punch.len() < 22);
        assert_eq!(decode(&punch), Ok(Datagram::Punch([1; NONCE_LEN])));
        let relay = encode_relay(0xdead_beef, b"quic");
        assert_eq!(
            decode(&relay),
            Ok(Datagram::Relay {
                circuit: 0xdead_beef,
                payload: b"quic"
            })
        );
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ]
    }

    fn any_message() -> impl Strategy<Value = BrokerMessage> {
        let addrs = || proptest::collection::vec(any_addr(), 0..8);
        prop_oneof![
            any::<u64>().prop_map(|tx| BrokerMessage::Ping { tx }),
            (any::<u64>(), any_addr(), proptest::option::of(any_addr()))
                .prop_map(|(tx, reflexive, alt)| BrokerMessage::Pong { tx, reflexive, alt }),
            (any::<u64>(), "[a-z_]{1,40}", any::<u32>(),).prop_map(|(tx, salt, rtt_ms)| {
                BrokerMessage::Register {
                    tx,
                    record: record(salt),
                    rtt_ms,
                }
            }),
            (any::<u64>(), "[a-z_]{1,40}").prop_map(|(tx, salt)| BrokerMessage::Unregister {
                tx,
                record: record(salt),
            }),
            (any::<u64>(), ".{0,40}", any::<u16>(), 0..64usize).prop_map(|(tx, key, skip, pad)| {
                BrokerMessage::List {
                    tx,
                    key,
                    skip,
                    pad: vec![0; pad],
                }
            }),
            (
                any::<u64>(),
                proptest::collection::vec("[a-z]{1,8}", 0..3),
                any::<u16>()
            )
                .prop_map(|(tx, salts, total)| BrokerMessage::Listed {
                    tx,
                    records: salts.into_iter().map(record).collect(),
                    total,
                }),
            (any::<u64>(), any_addr(), any::<u32>()).prop_map(|(tx, reflexive, expires_ms)| {
                BrokerMessage::Registered {
                    tx,
                    reflexive,
                    expires_ms,
                }
            }),
            (
                any::<u64>(),
                ".{0,40}",
                proptest::option::of(any::<[u8; 32]>()),
                addrs(),
                any::<u32>(),
                any::<bool>()
            )
                .prop_map(|(tx, key, node, local, rtt_ms, symmetric)| {
                    BrokerMessage::Connect {
                        tx,
                        key,
                        node,
                        local,
                        rtt_ms,
                        symmetric,
                        pad: Vec::new(),
                    }
                }),
            (
                any::<u64>(),
                any::<bool>(),
                any_addr(),
                addrs(),
                any::<Nonce>(),
                any::<u32>(),
                any::<bool>(),
                proptest::option::of("[a-z]{1,8}"),
            )
                .prop_map(
                    |(
                        tx,
                        dial,
                        peer_reflexive,
                        peer_local,
                        nonce,
                        delay_ms,
                        peer_symmetric,
                        salt,
                    )| {
                        BrokerMessage::Introduce {
                            tx,
                            role: if dial { Role::Dial } else { Role::Punch },
                            peer_reflexive,
                            peer_local,
                            nonce,
                            delay_ms,
                            peer_symmetric,
                            record: salt.map(record),
                        }
                    }
                ),
            (any::<u64>(), any::<Nonce>())
                .prop_map(|(tx, nonce)| BrokerMessage::RelayRequest { tx, nonce }),
            (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
                |(tx, circuit, max_bytes, max_ms)| BrokerMessage::RelayGranted {
                    tx,
                    circuit,
                    max_bytes,
                    max_ms
                }
            ),
            (any::<u64>(), proptest::option::of(any::<u32>()), ".{0,80}").prop_map(
                |(tx, circuit, message)| {
                    BrokerMessage::Refused {
                        tx,
                        circuit,
                        code: RefusalCode::RelayFull,
                        message,
                    }
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn every_broker_message_round_trips(message in any_message()) {
            let bytes = encode_broker(&message);
            prop_assert!(bytes[0] < 0x40);
            prop_assert_eq!(decode(&bytes), Ok(Datagram::Broker(message)));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_broker_tag(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = vec![TAG_BROKER];
            b.extend(bytes);
            let _ = decode(&b);
        }
    }
}
