//! The broker's rendezvous state machine fed a sequence of inbound messages.
//!
//! The input is a program of at most [`MAX_OPS`] steps, each a byte that picks the kind
//! and the bytes that fill it in: time passing, arbitrary MessagePack decoded as the
//! broker decodes a datagram, and well-formed messages the fuzzer could never forge
//! (registrations and withdrawals signed by one of four node keys, introductions asked
//! for by any of eight source addresses, relay requests with the nonces the broker handed
//! out, relay frames on the circuits it granted). Small limits make every bound reachable
//! with short programs. After every step the checks of [`check_answers`] and
//! [`check_bounds`] must hold.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{Input, NOW_MS};
use crate::broker::rendezvous::{
    Inbound, RegistrationLimits, RelayConfig, RelayVerdict, Rendezvous, RendezvousConfig,
};
use crate::protocol::broker::{
    self, encoded_len, BrokerMessage, Datagram, Nonce, Role, AMPLIFICATION_FACTOR,
    MAX_BROKER_MESSAGE_BYTES, NONCE_LEN, TAG_BROKER,
};
use crate::protocol::identity::NodeKey;
use crate::protocol::record::{Record, RecordBody, Via, WireRecord, RECORD_VERSION};

/// Steps in one program at most.
const MAX_OPS: usize = 64;

/// Nonces and circuits remembered for later steps at most.
const MAX_REMEMBERED: usize = 32;

/// Signed records kept for reuse at most (signing is the slow part of a step).
const MAX_CACHED_RECORDS: usize = 16_384;

/// Source addresses: two pairs share an IP (one NAT, two workers), v4 and v6.
const ADDRS: [([u16; 8], u16, bool); 8] = [
    ([203, 0, 113, 1, 0, 0, 0, 0], 1000, true),
    ([203, 0, 113, 1, 0, 0, 0, 0], 1001, true),
    ([203, 0, 113, 2, 0, 0, 0, 0], 2000, true),
    ([198, 51, 100, 9, 0, 0, 0, 0], 3000, true),
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 4000, false),
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 4001, false),
    ([192, 0, 2, 77, 0, 0, 0, 0], 5000, true),
    ([10, 0, 0, 1, 0, 0, 0, 0], 6000, true),
];

/// Service keys the signed steps use.
const KEYS: [&str; 4] = ["nano_rpc", "echo", "k", ""];

/// How long after `seq` a signed record expires, ms: normal, the longest allowed, one
/// over it, and already expired.
const LIFETIMES: [i64; 4] = [60_000, 3_600_000, 3_600_001, -1_000];

fn addr(pick: u8) -> SocketAddr {
    let (ip, port, v4) = ADDRS[usize::from(pick) % ADDRS.len()];
    if v4 {
        let octets = [ip[0] as u8, ip[1] as u8, ip[2] as u8, ip[3] as u8];
        SocketAddr::from((octets, port))
    } else {
        SocketAddr::from((ip, port))
    }
}

fn config() -> RendezvousConfig {
    RendezvousConfig {
        registration_ttl: Duration::from_secs(45),
        introduction_ttl: Duration::from_secs(30),
        alt: Some(SocketAddr::from(([203, 0, 113, 250], 30002))),
        connects_per_minute: 6,
        limits: RegistrationLimits {
            per_ip: 2,
            per_key: 3,
            keys: 2,
            total: 4,
        },
        relay: RelayConfig {
            enabled: true,
            max_circuits: 2,
            max_bytes: 4000,
            max_duration: Duration::from_secs(20),
            requests_per_minute: 4,
        },
    }
}

/// What a signed step asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Signed {
    node: u8,
    key: u8,
    reflexive: u8,
    seq_s: u8,
    lifetime: u8,
    local: u8,
}

impl Signed {
    fn read(input: &mut Input<'_>) -> Self {
        Self {
            node: input.u8() % 4,
            key: input.u8() % KEYS.len() as u8,
            reflexive: input.u8() % ADDRS.len() as u8,
            seq_s: input.u8() % 16,
            lifetime: input.u8() % LIFETIMES.len() as u8,
            local: input.u8() % 12,
        }
    }

    /// The record, signed at `NOW_MS + seq_s` seconds (made once per distinct step).
    fn record(&self) -> WireRecord {
        thread_local! {
            static CACHE: RefCell<HashMap<Signed, WireRecord>> = RefCell::new(HashMap::new());
        }
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some(record) = cache.get(self) {
                return record.clone();
            }
            if cache.len() >= MAX_CACHED_RECORDS {
                cache.clear();
            }
            let seq = NOW_MS + u64::from(self.seq_s) * 1000;
            let exp = (seq as i64 + LIFETIMES[usize::from(self.lifetime)]) as u64;
            let body = RecordBody {
                v: RECORD_VERSION,
                exp,
                addrs: Vec::new(),
                local: (0..self.local).map(addr).collect(),
                via: vec![Via {
                    broker: SocketAddr::from(([203, 0, 113, 250], 30001)),
                    reflexive: addr(self.reflexive),
                }],
                sym: self.local % 2 == 1,
                web: None,
            };
            let key = NodeKey::from_seed([self.node + 1; 32]);
            let record = Record::sign(&key, KEYS[usize::from(self.key)], seq, body)
                .expect("a small record signs")
                .wire;
            cache.insert(self.clone(), record.clone());
            record
        })
    }
}

/// One program through a fresh [`Rendezvous`] (see the module doc).
pub fn rendezvous(data: &[u8]) {
    let mut input = Input::new(data);
    let config = config();
    let mut state = Rendezvous::with_rng(config.clone(), StdRng::seed_from_u64(7));
    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut nonces: Vec<Nonce> = Vec::new();
    let mut circuits: Vec<u32> = Vec::new();
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let now = start + elapsed;
        let op = input.u8();
        let from = addr(input.u8());
        let message = match op % 10 {
            0 => {
                elapsed += Duration::from_millis(u64::from(input.u16()) * 4);
                None
            }
            1 => {
                let mut datagram = vec![TAG_BROKER];
                let len = usize::from(input.u16()) % MAX_BROKER_MESSAGE_BYTES;
                datagram.extend_from_slice(input.take(len));
                match broker::decode(&datagram) {
                    Ok(Datagram::Broker(message)) => Some((message, datagram.len())),
                    _ => None,
                }
            }
            2 => crafted(BrokerMessage::Register {
                tx: u64::from(input.u8()),
                record: Signed::read(&mut input).record(),
                rtt_ms: u32::from(input.u16()),
            }),
            3 => crafted(BrokerMessage::Unregister {
                tx: u64::from(input.u8()),
                record: Signed::read(&mut input).record(),
            }),
            4 => {
                let node = match input.u8() % 6 {
                    n @ 0..=3 => Some(*NodeKey::from_seed([n + 1; 32]).node_id().as_bytes()),
                    4 => input.take(32).try_into().ok(),
                    _ => None,
                };
                let key = read_key(&mut input);
                let local = (0..input.u8() % 12).map(addr).collect();
                crafted(BrokerMessage::Connect {
                    tx: u64::from(input.u8()),
                    key,
                    node,
                    local,
                    rtt_ms: u32::from(input.u16()),
                    symmetric: input.u8() % 2 == 1,
                    pad: vec![0; usize::from(input.u16()) % MAX_BROKER_MESSAGE_BYTES],
                })
            }
            5 => crafted(BrokerMessage::List {
                tx: u64::from(input.u8()),
                key: read_key(&mut input),
                skip: u16::from(input.u8() % 8),
                pad: vec![0; usize::from(input.u16()) % MAX_BROKER_MESSAGE_BYTES],
            }),
            6 => crafted(BrokerMessage::Ping {
                tx: u64::from(input.u8()),
            }),
            7 => {
                let pick = usize::from(input.u8());
                let nonce = match nonces.get(pick) {
                    Some(nonce) => *nonce,
                    None => input.take(NONCE_LEN).try_into().unwrap_or_default(),
                };
                crafted(BrokerMessage::RelayRequest {
                    tx: u64::from(input.u8()),
                    nonce,
                })
            }
            8 => {
                let pick = usize::from(input.u8());
                let circuit = circuits.get(pick).copied().unwrap_or(pick as u32);
                let len = usize::from(input.u16());
                match state.handle_relay(now, from, circuit, len) {
                    RelayVerdict::Forward(to) => {
                        assert_ne!(to, from, "a relay frame sent back to its sender");
                    }
                    RelayVerdict::Close(out) => {
                        assert_eq!(out.len(), 2, "a closed circuit tells both ends");
                        check_sizes(&out);
                    }
                    RelayVerdict::Drop => {}
                }
                None
            }
            _ => {
                if input.u8() % 2 == 1 {
                    if let Some(at) = state.poll_timeout() {
                        elapsed = elapsed.max(at.saturating_duration_since(start));
                    }
                }
                let out = state.handle_timeout(start + elapsed);
                check_sizes(&out);
                None
            }
        };
        if let Some((message, len)) = message {
            let asks_for_answer_budget = matches!(
                message,
                BrokerMessage::List { .. } | BrokerMessage::Connect { .. }
            );
            let inbound = Inbound {
                now,
                unix_ms: NOW_MS + elapsed.as_millis() as u64,
                from,
                len,
            };
            let out = state.handle(&inbound, message.clone());
            check_answers(&message, from, len, asks_for_answer_budget, &out);
            for (_, sent) in &out {
                match sent {
                    BrokerMessage::Introduce { nonce, .. } if nonces.len() < MAX_REMEMBERED => {
                        nonces.push(*nonce);
                    }
                    BrokerMessage::RelayGranted { circuit, .. }
                        if circuits.len() < MAX_REMEMBERED =>
                    {
                        circuits.push(*circuit);
                    }
                    _ => {}
                }
            }
        }
        check_bounds(&state, &config);
    }
}

/// A well-formed message with the size of its datagram.
fn crafted(message: BrokerMessage) -> Option<(BrokerMessage, usize)> {
    let len = encoded_len(&message);
    Some((message, len))
}

/// A service key: one of [`KEYS`], or up to 255 bytes of the input.
fn read_key(input: &mut Input<'_>) -> String {
    match input.u8() {
        n @ 0..=3 => KEYS[usize::from(n)].to_string(),
        _ => String::from_utf8_lossy(input.short_slice()).into_owned(),
    }
}

/// Every message the broker sends fits one datagram that peers decode.
fn check_sizes(out: &[(SocketAddr, BrokerMessage)]) {
    for (to, message) in out {
        let len = encoded_len(message);
        assert!(
            len <= MAX_BROKER_MESSAGE_BYTES,
            "{len} bytes to {to}, over the datagram limit: {message:?}"
        );
    }
}

/// What the answers to one message must be.
fn check_answers(
    message: &BrokerMessage,
    from: SocketAddr,
    len: usize,
    amplification_bound: bool,
    out: &[(SocketAddr, BrokerMessage)],
) {
    check_sizes(out);
    if amplification_bound {
        let budget = len.saturating_mul(AMPLIFICATION_FACTOR);
        for (to, answer) in out.iter().filter(|(to, _)| *to == from) {
            let n = encoded_len(answer);
            assert!(
                n <= budget,
                "a {len}-byte request answered with {n} bytes to {to}: {answer:?}"
            );
        }
    }
    match message {
        BrokerMessage::Register { .. } => {
            if let [(to, BrokerMessage::Registered { reflexive, .. })] = out {
                assert_eq!((*to, *reflexive), (from, from));
            }
        }
        BrokerMessage::Connect { .. } => {
            if let [(
                worker,
                BrokerMessage::Introduce {
                    role: Role::Punch,
                    nonce: a,
                    peer_reflexive,
                    ..
                },
            ), (
                client,
                BrokerMessage::Introduce {
                    role: Role::Dial,
                    nonce: b,
                    ..
                },
            )] = out
            {
                assert_eq!(a, b, "both sides get one nonce");
                assert_eq!((*client, *peer_reflexive), (from, from));
                let _ = worker;
            }
        }
        _ => {}
    }
    assert!(out.len() <= 2);
}

/// The state stays within its limits.
fn check_bounds(state: &Rendezvous, config: &RendezvousConfig) {
    let limits = &config.limits;
    assert!(state.registrations() <= limits.total);
    let keys = state.served_keys();
    assert!(keys.len() <= limits.keys);
    for key in &keys {
        assert!(state.registered(key) <= limits.per_key);
    }
    assert!(state.circuits() <= config.relay.max_circuits);
}
