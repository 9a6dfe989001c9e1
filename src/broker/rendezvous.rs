//! The broker's rendezvous and relay state machine (pure, sans-IO).
//!
//! Inputs are values and the current time: [`Rendezvous::handle`] for a broker message,
//! [`Rendezvous::handle_relay`] for a relay frame, [`Rendezvous::handle_timeout`] when
//! [`Rendezvous::poll_timeout`]'s instant has passed. Outputs are the datagrams to send.
//! The driver ([`crate::broker`]) owns the sockets and the clocks: a monotonic instant for
//! timers and the wall clock (ms since the Unix epoch) for record expiry.
//!
//! - **Registrations**: a worker's `Register`, sent from its QUIC socket, carries its
//!   signed record (docs/protocol.md §6). The broker believes it only when the record
//!   verifies, is fresh, lists the source address as the worker's reflexive address at
//!   this broker, and is not older than the node's last one; then it records the source
//!   address (the mapping QUIC will use) under the record's key and node id until
//!   `registration_ttl` passes without a refresh. Registrations are bounded per source
//!   IP, per key and in all, so a flood of fake workers cannot grow the broker without
//!   bound (it takes registrations a minute old first: nothing is evicted to make room).
//! - **Lists**: `List` answers the signed records of a key's workers, as many as fit
//!   three times the request's size (QUIC's anti-amplification factor, RFC 9000 §8.1),
//!   so a spoofed request cannot be turned into a flood at its victim.
//! - **Introductions**: a client's `Connect` names a node or leaves the choice to the
//!   broker, and the broker sends both sides an `Introduce` with the other's reflexive
//!   and local addresses, one fresh nonce, the worker's record to the client, and start
//!   delays from the two RTTs so that both start at the same instant (libp2p DCUtR):
//!   each side waits `(max_rtt - own_rtt) / 2`. The client's `Introduce` keeps within
//!   three times its `Connect` as a `List` answer does (without the record, then with
//!   fewer of the worker's local addresses); a `Connect` too small even for that is
//!   refused and the worker is told nothing. No answer to a `List` or `Connect`, a
//!   refusal included, is ever sent over that budget: a request too small for any gets
//!   none.
//! - **Relay** (in the spirit of libp2p circuit relay v2): a registration is the worker's
//!   reservation; a client that could not punch asks `RelayRequest` with the nonce, and
//!   gets a circuit limited in bytes and duration, subject to a circuit count limit and a
//!   per-IP request rate. A circuit over a limit is closed with a `Refused` to both ends.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::defaults::{
    DEFAULT_CONNECTS_PER_MINUTE, DEFAULT_INTRODUCTION_TTL, DEFAULT_MAX_KEYS_PER_BROKER,
    DEFAULT_MAX_REGISTRATIONS, DEFAULT_MAX_REGISTRATIONS_PER_IP, DEFAULT_MAX_REGISTRATIONS_PER_KEY,
    DEFAULT_REGISTRATION_TTL, DEFAULT_RELAY_MAX_BYTES, DEFAULT_RELAY_MAX_CIRCUITS,
    DEFAULT_RELAY_MAX_DURATION, DEFAULT_RELAY_REQUESTS_PER_MINUTE,
};
use crate::protocol::broker::{
    encoded_len, BrokerMessage, Nonce, RefusalCode, Role, AMPLIFICATION_FACTOR,
    MAX_BROKER_MESSAGE_BYTES, RELAY_HEADER_LEN,
};
use crate::protocol::identity::NodeId;
use crate::protocol::record::{Record, WireRecord};

/// Limits of the broker's relay, after libp2p circuit relay v2's resource manager.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Whether the broker relays at all. Default true.
    pub enabled: bool,
    /// Circuits open at once. Default 64.
    pub max_circuits: usize,
    /// Bytes of QUIC datagrams one circuit may carry, both directions together, frame
    /// headers not counted. Default 16 MiB.
    pub max_bytes: u64,
    /// How long one circuit may last. Default 10 min.
    pub max_duration: Duration,
    /// Relay requests one IP address may make per minute. Default 30.
    pub requests_per_minute: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_circuits: DEFAULT_RELAY_MAX_CIRCUITS,
            max_bytes: DEFAULT_RELAY_MAX_BYTES,
            max_duration: DEFAULT_RELAY_MAX_DURATION,
            requests_per_minute: DEFAULT_RELAY_REQUESTS_PER_MINUTE,
        }
    }
}

/// Bounds on what a broker keeps of registrations.
#[derive(Debug, Clone)]
pub struct RegistrationLimits {
    /// Registrations from one source IP (a NAT with many workers behind it counts as
    /// one). Default 16.
    pub per_ip: usize,
    /// Registrations of one service key. Default 1024.
    pub per_key: usize,
    /// Distinct service keys. Default 64.
    pub keys: usize,
    /// Registrations in all. Default 4096.
    pub total: usize,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        Self {
            per_ip: DEFAULT_MAX_REGISTRATIONS_PER_IP,
            per_key: DEFAULT_MAX_REGISTRATIONS_PER_KEY,
            keys: DEFAULT_MAX_KEYS_PER_BROKER,
            total: DEFAULT_MAX_REGISTRATIONS,
        }
    }
}

/// Settings of a [`Rendezvous`].
#[derive(Debug, Clone)]
pub struct RendezvousConfig {
    /// How long a registration lives without a refresh. Default 45 s.
    pub registration_ttl: Duration,
    /// How long an introduction can still be turned into a relay circuit. Default 30 s.
    pub introduction_ttl: Duration,
    /// The broker's second address answering STUN, told to peers in `Pong`.
    pub alt: Option<SocketAddr>,
    /// Introductions one IP address may ask for per minute. Each makes a worker punch
    /// toward the asker (up to 2048 probes for a symmetric one), so a spoofed source
    /// must not turn the broker and its workers into an amplifier. Default 60.
    pub connects_per_minute: u32,
    /// Bounds on registrations.
    pub limits: RegistrationLimits,
    /// Relay limits.
    pub relay: RelayConfig,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        Self {
            registration_ttl: DEFAULT_REGISTRATION_TTL,
            introduction_ttl: DEFAULT_INTRODUCTION_TTL,
            alt: None,
            connects_per_minute: DEFAULT_CONNECTS_PER_MINUTE,
            limits: RegistrationLimits::default(),
            relay: RelayConfig::default(),
        }
    }
}

#[derive(Debug, Clone)]
struct Registration {
    node: NodeId,
    addr: SocketAddr,
    record: WireRecord,
    seq: i64,
    local: Vec<SocketAddr>,
    rtt_ms: u32,
    symmetric: bool,
    expires: Instant,
}

#[derive(Debug, Clone)]
struct Introduction {
    client: SocketAddr,
    worker: SocketAddr,
    expires: Instant,
}

#[derive(Debug, Clone)]
struct Circuit {
    client: SocketAddr,
    worker: SocketAddr,
    bytes: u64,
    expires: Instant,
}

/// What to do with one relay frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayVerdict {
    /// Send the frame unchanged to this address.
    Forward(SocketAddr),
    /// Drop it (unknown circuit, or a sender that is neither end).
    Drop,
    /// The circuit went over a limit and is closed: send these refusals.
    Close(Vec<(SocketAddr, BrokerMessage)>),
}

/// The broker's state: registrations, introductions and relay circuits.
#[derive(Debug)]
pub struct Rendezvous {
    config: RendezvousConfig,
    workers: HashMap<String, Vec<Registration>>,
    introductions: HashMap<Nonce, Introduction>,
    circuits: HashMap<u32, Circuit>,
    rate: HashMap<IpAddr, (Instant, u32)>,
    connect_rate: HashMap<IpAddr, (Instant, u32)>,
    rng: StdRng,
}

/// One inbound broker message with what the driver knows about it.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Monotonic time of receipt (timers).
    pub now: Instant,
    /// Wall-clock time of receipt, ms since the Unix epoch (record expiry).
    pub unix_ms: u64,
    /// Source address.
    pub from: SocketAddr,
    /// Size of the datagram, bytes (for the anti-amplification bound).
    pub len: usize,
}

impl Rendezvous {
    /// A broker state with no registrations, using the OS's randomness for nonces.
    pub fn new(config: RendezvousConfig) -> Self {
        Self::with_rng(config, StdRng::from_os_rng())
    }

    /// A broker state drawing nonces and circuit ids from `rng` (tests seed it).
    pub fn with_rng(config: RendezvousConfig, rng: StdRng) -> Self {
        Self {
            config,
            workers: HashMap::new(),
            introductions: HashMap::new(),
            circuits: HashMap::new(),
            rate: HashMap::new(),
            connect_rate: HashMap::new(),
            rng,
        }
    }

    /// Number of live registrations of `key`.
    pub fn registered(&self, key: &str) -> usize {
        self.workers.get(key).map_or(0, Vec::len)
    }

    /// Number of live registrations in all.
    pub fn registrations(&self) -> usize {
        self.workers.values().map(Vec::len).sum()
    }

    /// The service keys with at least one live registration: the broker announces itself
    /// in the DHT under each (docs/protocol.md §1.3), so that lookups find these workers.
    pub fn served_keys(&self) -> BTreeSet<String> {
        self.workers.keys().cloned().collect()
    }

    /// Number of open relay circuits.
    pub fn circuits(&self) -> usize {
        self.circuits.len()
    }

    /// Handles one broker message; returns what to send.
    pub fn handle(
        &mut self,
        inbound: &Inbound,
        message: BrokerMessage,
    ) -> Vec<(SocketAddr, BrokerMessage)> {
        let (now, from) = (inbound.now, inbound.from);
        self.expire(now);
        match message {
            BrokerMessage::Ping { tx } => vec![(
                from,
                BrokerMessage::Pong {
                    tx,
                    reflexive: from,
                    alt: self.config.alt,
                },
            )],
            BrokerMessage::Register { tx, record, rtt_ms } => {
                vec![(from, self.register(inbound, tx, record, rtt_ms))]
            }
            BrokerMessage::Unregister { tx, record } => {
                vec![(from, self.unregister(inbound, tx, record))]
            }
            BrokerMessage::List { tx, key, skip, .. } => {
                within_budget(inbound, vec![(from, self.list(inbound, tx, &key, skip))])
            }
            BrokerMessage::Connect {
                tx,
                key,
                node,
                local,
                rtt_ms,
                symmetric,
                ..
            } => within_budget(
                inbound,
                self.introduce(inbound, tx, &key, node, local, rtt_ms, symmetric),
            ),
            BrokerMessage::RelayRequest { tx, nonce } => self.open_circuit(now, from, tx, nonce),
            // Answers and pushes are the broker's own kinds: a peer sending them is confused.
            BrokerMessage::Pong { tx, .. }
            | BrokerMessage::Registered { tx, .. }
            | BrokerMessage::Introduce { tx, .. }
            | BrokerMessage::RelayGranted { tx, .. }
            | BrokerMessage::Listed { tx, .. }
            | BrokerMessage::Refused { tx, .. } => vec![(
                from,
                refusal(
                    tx,
                    None,
                    RefusalCode::BadRequest,
                    "peers do not send this kind",
                ),
            )],
        }
    }

    fn register(
        &mut self,
        inbound: &Inbound,
        tx: u64,
        wire: WireRecord,
        rtt_ms: u32,
    ) -> BrokerMessage {
        let from = inbound.from;
        let record = match self.believe(inbound, &wire) {
            Ok(record) => record,
            Err(refused) => return refusal(tx, None, RefusalCode::BadRecord, &refused),
        };
        let expires = inbound.now + self.config.registration_ttl;
        let limits = self.config.limits.clone();
        let total = self.registrations();
        let from_ip = self
            .workers
            .values()
            .flatten()
            .filter(|r| r.addr.ip() == from.ip() && r.node != record.node)
            .count();
        let keys = self.workers.len();
        let key_known = self.workers.contains_key(&record.service);
        let entries = self.workers.entry(record.service.clone()).or_default();
        let local: Vec<SocketAddr> = record.body.local.iter().copied().take(8).collect();
        match entries.iter_mut().find(|r| r.node == record.node) {
            Some(r) if record.seq < r.seq => {
                return refusal(
                    tx,
                    None,
                    RefusalCode::BadRecord,
                    "this record is older than the one registered for the node (a replay?)",
                );
            }
            Some(r) => {
                r.addr = from;
                r.record = wire;
                r.seq = record.seq;
                r.local = local;
                r.rtt_ms = rtt_ms;
                r.symmetric = record.body.sym;
                r.expires = expires;
            }
            None => {
                let full = if from_ip >= limits.per_ip {
                    Some(format!(
                        "{} workers are registered from {} already",
                        limits.per_ip,
                        from.ip()
                    ))
                } else if entries.len() >= limits.per_key {
                    Some(format!(
                        "{} workers are registered for {} already",
                        limits.per_key,
                        quoted_key(&record.service)
                    ))
                } else if !key_known && keys >= limits.keys {
                    Some(format!("{} service keys are served already", limits.keys))
                } else if total >= limits.total {
                    Some(format!("{} workers are registered already", limits.total))
                } else {
                    None
                };
                if let Some(why) = full {
                    if entries.is_empty() {
                        self.workers.remove(&record.service);
                    }
                    return refusal(
                        tx,
                        None,
                        RefusalCode::Full,
                        &format!("this broker is full: {why}; register with another broker"),
                    );
                }
                entries.push(Registration {
                    node: record.node,
                    addr: from,
                    record: wire,
                    seq: record.seq,
                    local,
                    rtt_ms,
                    symmetric: record.body.sym,
                    expires,
                });
            }
        }
        BrokerMessage::Registered {
            tx,
            reflexive: from,
            expires_ms: millis(self.config.registration_ttl),
        }
    }

    /// Checks a registering worker's record: it verifies and is fresh, and names the
    /// source address as the worker's reflexive address here (so a record replayed from
    /// another address registers nothing).
    fn believe(&self, inbound: &Inbound, wire: &WireRecord) -> Result<Record, String> {
        let record = wire
            .verify(&wire.salt, None, inbound.unix_ms)
            .map_err(|e| e.to_string())?;
        if record.service.is_empty() {
            return Err("the record names no service key".into());
        }
        if !record.body.via.iter().any(|v| v.reflexive == inbound.from) {
            return Err(format!(
                "the record does not name {} as the worker's reflexive address at this                  broker: ping the broker from the QUIC socket and sign what it answers",
                inbound.from
            ));
        }
        Ok(record)
    }

    fn unregister(&mut self, inbound: &Inbound, tx: u64, wire: WireRecord) -> BrokerMessage {
        let gone = BrokerMessage::Registered {
            tx,
            reflexive: inbound.from,
            expires_ms: 0,
        };
        let record = match wire.verify(&wire.salt, None, inbound.unix_ms) {
            Ok(record) => record,
            Err(e) => return refusal(tx, None, RefusalCode::BadRecord, &e.to_string()),
        };
        let Some(entries) = self.workers.get_mut(&record.service) else {
            return gone;
        };
        if let Some(at) = entries.iter().position(|r| r.node == record.node) {
            if record.seq <= entries[at].seq {
                return refusal(
                    tx,
                    None,
                    RefusalCode::BadRecord,
                    "the withdrawal must be signed after the registration it ends",
                );
            }
            entries.swap_remove(at);
        }
        if entries.is_empty() {
            self.workers.remove(&record.service);
        }
        gone
    }

    fn list(&mut self, inbound: &Inbound, tx: u64, key: &str, skip: u16) -> BrokerMessage {
        let entries = self.workers.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let total = u16::try_from(entries.len()).unwrap_or(u16::MAX);
        let budget = answer_budget(inbound.len);
        let mut answer = BrokerMessage::Listed {
            tx,
            records: Vec::new(),
            total,
        };
        let mut used = encoded_len(&answer);
        for r in entries.iter().skip(usize::from(skip)) {
            let more = encoded_len_of_record(&r.record);
            if used + more > budget {
                break;
            }
            used += more;
            if let BrokerMessage::Listed { records, .. } = &mut answer {
                records.push(r.record.clone());
            }
        }
        answer
    }

    #[allow(clippy::too_many_arguments)]
    fn introduce(
        &mut self,
        inbound: &Inbound,
        tx: u64,
        key: &str,
        node: Option<[u8; 32]>,
        local: Vec<SocketAddr>,
        client_rtt: u32,
        client_symmetric: bool,
    ) -> Vec<(SocketAddr, BrokerMessage)> {
        let (now, client) = (inbound.now, inbound.from);
        let window = self.connect_rate.entry(client.ip()).or_insert((now, 0));
        if now.duration_since(window.0) >= Duration::from_secs(60) {
            *window = (now, 0);
        }
        if window.1 >= self.config.connects_per_minute {
            return vec![(
                client,
                refusal(
                    tx,
                    None,
                    RefusalCode::RateLimited,
                    &format!(
                        "more than {} introductions asked from {} in a minute; wait and retry",
                        self.config.connects_per_minute,
                        client.ip()
                    ),
                ),
            )];
        }
        window.1 += 1;
        let candidates = self.workers.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let chosen = match node {
            Some(node) => candidates.iter().find(|r| r.node.as_bytes() == &node),
            None if candidates.is_empty() => None,
            None => Some(&candidates[self.rng.random_range(0..candidates.len())]),
        };
        let Some(worker) = chosen.cloned() else {
            let message = match node.and_then(|n| NodeId::from_bytes(n).ok()) {
                Some(node) => format!(
                    "node {node} is not registered for {} at this broker",
                    quoted_key(key)
                ),
                None => format!(
                    "no worker is registered for {} at this broker",
                    quoted_key(key)
                ),
            };
            return vec![(client, refusal(tx, None, RefusalCode::NoWorker, &message))];
        };
        if worker.addr == client {
            // Punching to oneself means nothing, and a relay circuit between one address
            // and itself would send every frame back to its sender.
            let message = format!(
                "{client} is the address of node {} itself: a worker is not introduced to itself",
                worker.node
            );
            return vec![(client, refusal(tx, None, RefusalCode::BadRequest, &message))];
        }
        let nonce: Nonce = self.rng.random();
        let slowest = client_rtt.max(worker.rtt_ms);
        let local: Vec<SocketAddr> = local.into_iter().take(8).collect();
        let mut to_client = BrokerMessage::Introduce {
            tx,
            role: Role::Dial,
            peer_reflexive: worker.addr,
            peer_local: worker.local.clone(),
            nonce,
            delay_ms: (slowest - client_rtt) / 2,
            peer_symmetric: worker.symmetric,
            record: Some(worker.record.clone()),
        };
        let budget = answer_budget(inbound.len);
        if encoded_len(&to_client) > budget {
            // Too small a request for the record: the client learns the node from the
            // handshake instead (it pads its Connect to get the record, §5.3).
            if let BrokerMessage::Introduce { record, .. } = &mut to_client {
                *record = None;
            }
        }
        // Still too large (an unpadded Connect, a worker with many local addresses):
        // fewer of the worker's local addresses, which only matter on its own LAN.
        while encoded_len(&to_client) > budget {
            let BrokerMessage::Introduce { peer_local, .. } = &mut to_client else {
                break;
            };
            if peer_local.pop().is_none() {
                break;
            }
        }
        if encoded_len(&to_client) > budget {
            // No introduction at all: the worker would punch toward an address that
            // may be spoofed, for a request too small to answer.
            return vec![(
                client,
                refusal(
                    tx,
                    None,
                    RefusalCode::BadRequest,
                    "Connect too small for an answer; pad it",
                ),
            )];
        }
        self.introductions.insert(
            nonce,
            Introduction {
                client,
                worker: worker.addr,
                expires: now + self.config.introduction_ttl,
            },
        );
        vec![
            (
                worker.addr,
                BrokerMessage::Introduce {
                    tx: self.rng.random(),
                    role: Role::Punch,
                    peer_reflexive: client,
                    peer_local: local,
                    nonce,
                    delay_ms: (slowest - worker.rtt_ms) / 2,
                    peer_symmetric: client_symmetric,
                    record: None,
                },
            ),
            (client, to_client),
        ]
    }

    fn open_circuit(
        &mut self,
        now: Instant,
        from: SocketAddr,
        tx: u64,
        nonce: Nonce,
    ) -> Vec<(SocketAddr, BrokerMessage)> {
        let relay = &self.config.relay;
        let refuse = |code, message: String| vec![(from, refusal(tx, None, code, &message))];
        if !relay.enabled {
            return refuse(
                RefusalCode::RelayFull,
                "this broker does not relay".to_string(),
            );
        }
        let window = self.rate.entry(from.ip()).or_insert((now, 0));
        if now.duration_since(window.0) >= Duration::from_secs(60) {
            *window = (now, 0);
        }
        if window.1 >= relay.requests_per_minute {
            return refuse(
                RefusalCode::RateLimited,
                format!(
                    "more than {} relay requests from {} in a minute; wait and retry",
                    relay.requests_per_minute,
                    from.ip()
                ),
            );
        }
        window.1 += 1;
        let Some(intro) = self.introductions.get(&nonce).cloned() else {
            return refuse(
                RefusalCode::UnknownIntroduction,
                "unknown or expired introduction; connect again".to_string(),
            );
        };
        if intro.client != from {
            return refuse(
                RefusalCode::UnknownIntroduction,
                "this introduction was made for another address".to_string(),
            );
        }
        if self.circuits.len() >= relay.max_circuits {
            return refuse(
                RefusalCode::RelayFull,
                format!("the relay is full ({} circuits)", relay.max_circuits),
            );
        }
        let mut circuit: u32 = self.rng.random();
        while circuit == 0 || self.circuits.contains_key(&circuit) {
            circuit = self.rng.random();
        }
        self.circuits.insert(
            circuit,
            Circuit {
                client: intro.client,
                worker: intro.worker,
                bytes: 0,
                expires: now + relay.max_duration,
            },
        );
        vec![(
            from,
            BrokerMessage::RelayGranted {
                tx,
                circuit,
                max_bytes: relay.max_bytes,
                max_ms: relay.max_duration.as_millis() as u64,
            },
        )]
    }

    /// Decides what to do with a relay frame of `frame_len` bytes (header included) for
    /// `circuit` from `from`, counting its payload against the circuit's allowance.
    pub fn handle_relay(
        &mut self,
        now: Instant,
        from: SocketAddr,
        circuit: u32,
        frame_len: usize,
    ) -> RelayVerdict {
        let Some(c) = self.circuits.get_mut(&circuit) else {
            return RelayVerdict::Drop;
        };
        let to = if from == c.client {
            c.worker
        } else if from == c.worker {
            c.client
        } else {
            return RelayVerdict::Drop;
        };
        if now >= c.expires {
            return RelayVerdict::Close(self.close(circuit, RefusalCode::RelayDurationExceeded));
        }
        c.bytes += frame_len.saturating_sub(RELAY_HEADER_LEN) as u64;
        if c.bytes > self.config.relay.max_bytes {
            return RelayVerdict::Close(self.close(circuit, RefusalCode::RelayBytesExceeded));
        }
        RelayVerdict::Forward(to)
    }

    fn close(&mut self, circuit: u32, code: RefusalCode) -> Vec<(SocketAddr, BrokerMessage)> {
        let Some(c) = self.circuits.remove(&circuit) else {
            return Vec::new();
        };
        let relay = &self.config.relay;
        let message = match code {
            RefusalCode::RelayBytesExceeded => format!(
                "relay circuit closed: it carried its limit of {} bytes",
                relay.max_bytes
            ),
            _ => format!(
                "relay circuit closed: it lasted its limit of {} ms",
                relay.max_duration.as_millis()
            ),
        };
        [c.client, c.worker]
            .into_iter()
            .map(|to| (to, refusal(0, Some(circuit), code, &message)))
            .collect()
    }

    /// The next instant at which [`Rendezvous::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let registrations = self.workers.values().flatten().map(|r| r.expires);
        let introductions = self.introductions.values().map(|i| i.expires);
        let circuits = self.circuits.values().map(|c| c.expires);
        registrations.chain(introductions).chain(circuits).min()
    }

    /// Expires registrations and introductions, and closes circuits past their duration;
    /// returns the refusals to send.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<(SocketAddr, BrokerMessage)> {
        self.expire(now);
        let over: Vec<u32> = self
            .circuits
            .iter()
            .filter(|(_, c)| now >= c.expires)
            .map(|(id, _)| *id)
            .collect();
        over.into_iter()
            .flat_map(|id| self.close(id, RefusalCode::RelayDurationExceeded))
            .collect()
    }

    fn expire(&mut self, now: Instant) {
        for entries in self.workers.values_mut() {
            entries.retain(|r| r.expires > now);
        }
        self.workers.retain(|_, v| !v.is_empty());
        self.introductions.retain(|_, i| i.expires > now);
        self.rate
            .retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        self.connect_rate
            .retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
    }
}

/// `key` in quotes with escapes, its first [`MAX_QUOTED_KEY_CHARS`] characters only: a
/// refusal that quoted a whole key (up to a datagram, each control character escaped to
/// six) could outgrow both the datagram limit and the answer budget.
fn quoted_key(key: &str) -> String {
    if key.chars().count() <= MAX_QUOTED_KEY_CHARS {
        format!("{key:?}")
    } else {
        let short: String = key.chars().take(MAX_QUOTED_KEY_CHARS).collect();
        format!("{short:?}...")
    }
}

/// Longest part of a service key quoted in a refusal, characters.
const MAX_QUOTED_KEY_CHARS: usize = 64;

/// The answers to a `List` or `Connect`, less those to its sender that are over three
/// times its size ([`AMPLIFICATION_FACTOR`], RFC 9000 §8.1): a request too small for
/// any answer (an unpadded or compactly encoded one) gets none, as a QUIC server sends
/// nothing beyond the factor, so that a spoofed source is never flooded.
fn within_budget(
    inbound: &Inbound,
    mut out: Vec<(SocketAddr, BrokerMessage)>,
) -> Vec<(SocketAddr, BrokerMessage)> {
    let budget = answer_budget(inbound.len);
    out.retain(|(to, message)| *to != inbound.from || encoded_len(message) <= budget);
    out
}

fn refusal(tx: u64, circuit: Option<u32>, code: RefusalCode, message: &str) -> BrokerMessage {
    BrokerMessage::Refused {
        tx,
        circuit,
        code,
        message: message.to_string(),
    }
}

/// Bytes an answer to a request of `len` bytes may take: three times the request
/// (RFC 9000 §8.1's factor), within one broker datagram.
fn answer_budget(len: usize) -> usize {
    len.saturating_mul(AMPLIFICATION_FACTOR)
        .min(MAX_BROKER_MESSAGE_BYTES)
}

/// Bytes a record adds to a `Listed` answer.
fn encoded_len_of_record(record: &WireRecord) -> usize {
    rmp_serde::encode::to_vec_named(record).map_or(MAX_BROKER_MESSAGE_BYTES, |v| v.len())
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn state(relay: RelayConfig) -> Rendezvous {
        Rendezvous::with_rng(
            RendezvousConfig {
                relay,
                ..RendezvousConfig::default()
            },
            StdRng::seed_from_u64(7),
        )
    }

    const WALL: u64 = 1_795_317_760_000;

    fn inbound(now: Instant, from: SocketAddr) -> Inbound {
        Inbound {
            now,
            unix_ms: WALL,
            from,
            len: 400,
        }
    }

    /// A worker's record for key "k" as a broker at `broker` sees it from `reflexive`.
    fn record_of(seed: u8, reflexive: SocketAddr, seq_offset: u64) -> WireRecord {
        use crate::protocol::identity::NodeKey;
        use crate::protocol::record::{RecordBody, Via, RECORD_VERSION};
        let body = RecordBody {
            v: RECORD_VERSION,
            exp: WALL + 240_000,
            local: vec![addr("10.0.0.2:4000")],
            via: vec![Via {
                broker: addr("203.0.113.250:30001"),
                reflexive,
            }],
            ..RecordBody::default()
        };
        Record::sign(
            &NodeKey::from_seed([seed; 32]),
            "k",
            WALL + seq_offset,
            body,
        )
        .unwrap()
        .wire
    }

    fn register_as(
        r: &mut Rendezvous,
        now: Instant,
        worker: SocketAddr,
        record: WireRecord,
    ) -> BrokerMessage {
        let out = r.handle(
            &inbound(now, worker),
            BrokerMessage::Register {
                tx: 1,
                record,
                rtt_ms: 0,
            },
        );
        out[0].1.clone()
    }

    fn register(r: &mut Rendezvous, now: Instant, worker: SocketAddr, rtt_ms: u32) {
        let out = r.handle(
            &inbound(now, worker),
            BrokerMessage::Register {
                tx: 1,
                record: record_of(1, worker, 0),
                rtt_ms,
            },
        );
        assert!(
            matches!(out[0].1, BrokerMessage::Registered { reflexive, .. } if reflexive == worker),
            "{out:?}"
        );
    }

    fn connect(
        r: &mut Rendezvous,
        now: Instant,
        client: SocketAddr,
        rtt_ms: u32,
    ) -> Vec<(SocketAddr, BrokerMessage)> {
        r.handle(
            &inbound(now, client),
            BrokerMessage::Connect {
                tx: 42,
                key: "k".into(),
                node: None,
                local: vec![],
                rtt_ms,
                symmetric: true,
                pad: vec![],
            },
        )
    }

    #[test]
    fn a_worker_is_not_introduced_to_itself() {
        // Found by the rendezvous fuzz target: a Connect from the worker's own address
        // made an introduction and then a relay circuit whose two ends were one address,
        // so the broker sent every relay frame back to its sender.
        let mut r = state(RelayConfig::default());
        let now = Instant::now();
        let worker = addr("203.0.113.1:1000");
        register(&mut r, now, worker, 10);
        let out = connect(&mut r, now, worker, 10);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            matches!(
                out[0],
                (
                    to,
                    BrokerMessage::Refused {
                        code: RefusalCode::BadRequest,
                        ..
                    }
                ) if to == worker
            ),
            "{out:?}"
        );
        // From another address the same worker is introduced as usual.
        assert_eq!(connect(&mut r, now, addr("198.51.100.7:2000"), 10).len(), 2);
    }

    #[test]
    fn a_registration_needs_a_record_made_for_its_source_address() {
        let mut r = state(RelayConfig::default());
        let now = Instant::now();
        let worker = addr("203.0.113.1:1000");
        // Forged: the body altered after signing.
        let mut forged = record_of(1, worker, 0);
        forged.v = String::from_utf8(forged.v)
            .unwrap()
            .replace("10.0.0.2", "10.0.0.9")
            .into_bytes();
        assert!(matches!(
            register_as(&mut r, now, worker, forged),
            BrokerMessage::Refused {
                code: RefusalCode::BadRecord,
                ..
            }
        ));
        // Replayed from another address: the record names the worker's own.
        let stolen = record_of(1, worker, 0);
        assert!(matches!(
            register_as(&mut r, now, addr("198.51.100.66:1000"), stolen),
            BrokerMessage::Refused {
                code: RefusalCode::BadRecord,
                ..
            }
        ));
        assert_eq!(r.registered("k"), 0);
        // The real one, then an older one of the same node.
        register_as(&mut r, now, worker, record_of(1, worker, 10));
        assert_eq!(r.registered("k"), 1);
        assert!(matches!(
            register_as(&mut r, now, worker, record_of(1, worker, 5)),
            BrokerMessage::Refused {
                code: RefusalCode::BadRecord,
                ..
            }
        ));
        // A newer one from a moved mapping replaces it (NAT rebinding).
        let moved = addr("203.0.113.1:1001");
        assert!(matches!(
            register_as(&mut r, now, moved, record_of(1, moved, 20)),
            BrokerMessage::Registered { .. }
        ));
        assert_eq!(r.registered("k"), 1);
        assert_eq!(
            r.served_keys().into_iter().collect::<Vec<_>>(),
            vec!["k".to_string()]
        );
    }

    #[test]
    fn registrations_are_bounded_per_ip_and_a_node_withdraws_itself() {
        let mut r = Rendezvous::with_rng(
            RendezvousConfig {
                limits: RegistrationLimits {
                    per_ip: 2,
                    ..RegistrationLimits::default()
                },
                ..RendezvousConfig::default()
            },
            StdRng::seed_from_u64(1),
        );
        let now = Instant::now();
        for (seed, port) in [(1u8, 1000u16), (2, 1001)] {
            let w = SocketAddr::from(([203, 0, 113, 1], port));
            assert!(matches!(
                register_as(&mut r, now, w, record_of(seed, w, 0)),
                BrokerMessage::Registered { .. }
            ));
        }
        let third = addr("203.0.113.1:1002");
        assert!(matches!(
            register_as(&mut r, now, third, record_of(3, third, 0)),
            BrokerMessage::Refused {
                code: RefusalCode::Full,
                ..
            }
        ));
        // Another IP is not affected.
        let other = addr("203.0.113.2:1000");
        assert!(matches!(
            register_as(&mut r, now, other, record_of(3, other, 0)),
            BrokerMessage::Registered { .. }
        ));
        // Unregister needs a newer record of the node; then it is gone.
        let w = addr("203.0.113.1:1000");
        let out = r.handle(
            &inbound(now, w),
            BrokerMessage::Unregister {
                tx: 9,
                record: record_of(1, w, 0),
            },
        );
        assert!(matches!(
            out[0].1,
            BrokerMessage::Refused {
                code: RefusalCode::BadRecord,
                ..
            }
        ));
        let out = r.handle(
            &inbound(now, w),
            BrokerMessage::Unregister {
                tx: 9,
                record: record_of(1, w, 1),
            },
        );
        assert!(matches!(
            out[0].1,
            BrokerMessage::Registered { expires_ms: 0, .. }
        ));
        assert_eq!(r.registered("k"), 2);
    }

    #[test]
    fn list_pages_records_within_three_times_the_request() {
        let mut r = state(RelayConfig::default());
        let now = Instant::now();
        for i in 0..10u8 {
            let w = SocketAddr::from(([203, 0, 113, 10 + i], 1000));
            register_as(&mut r, now, w, record_of(i + 1, w, 0));
        }
        let list = |r: &mut Rendezvous, len: usize, skip: u16| {
            let mut inbound = inbound(now, addr("198.51.100.1:5"));
            inbound.len = len;
            let out = r.handle(
                &inbound,
                BrokerMessage::List {
                    tx: 3,
                    key: "k".into(),
                    skip,
                    pad: vec![],
                },
            );
            let BrokerMessage::Listed { records, total, .. } = out[0].1.clone() else {
                panic!("{out:?}")
            };
            (
                records,
                total,
                crate::protocol::broker::encoded_len(&out[0].1),
            )
        };
        // A tiny request gets the count only: no amplification.
        let (records, total, size) = list(&mut r, 30, 0);
        assert!(records.is_empty());
        assert_eq!(total, 10);
        assert!(size <= 90);
        // A padded one gets a page within 3 × 400 bytes, and the pages cover all.
        let mut seen = 0;
        while seen < 10 {
            let (records, _, size) = list(&mut r, 400, seen);
            assert!(
                !records.is_empty() && size <= 1200,
                "{} records, {size} bytes",
                records.len()
            );
            seen += records.len() as u16;
        }
        assert_eq!(seen, 10);
    }

    #[test]
    fn a_client_may_ask_for_a_named_node_and_gets_its_record() {
        let mut r = state(RelayConfig::default());
        let now = Instant::now();
        let (w1, w2) = (addr("203.0.113.1:1000"), addr("203.0.113.2:1000"));
        register_as(&mut r, now, w1, record_of(1, w1, 0));
        register_as(&mut r, now, w2, record_of(2, w2, 0));
        let wanted = crate::protocol::identity::NodeKey::from_seed([2; 32]).node_id();
        for _ in 0..5 {
            let out = r.handle(
                &inbound(now, addr("198.51.100.1:5")),
                BrokerMessage::Connect {
                    tx: 7,
                    key: "k".into(),
                    node: Some(*wanted.as_bytes()),
                    local: vec![],
                    rtt_ms: 1,
                    symmetric: false,
                    pad: vec![],
                },
            );
            assert_eq!(out[0].0, w2);
            let BrokerMessage::Introduce {
                record: Some(record),
                ..
            } = &out[1].1
            else {
                panic!("{out:?}")
            };
            assert_eq!(record.k, *wanted.as_bytes());
        }
        let stranger = crate::protocol::identity::NodeKey::from_seed([9; 32]).node_id();
        let out = r.handle(
            &inbound(now, addr("198.51.100.1:5")),
            BrokerMessage::Connect {
                tx: 7,
                key: "k".into(),
                node: Some(*stranger.as_bytes()),
                local: vec![],
                rtt_ms: 1,
                symmetric: false,
                pad: vec![],
            },
        );
        let BrokerMessage::Refused {
            code: RefusalCode::NoWorker,
            message,
            ..
        } = &out[0].1
        else {
            panic!("{out:?}")
        };
        assert!(message.contains(&stranger.to_string()), "{message}");
    }

    #[test]
    fn introduction_sends_both_sides_one_nonce_and_synchronised_delays() {
        let mut r = state(RelayConfig::default());
        let now = Instant::now();
        let worker = addr("203.0.113.1:1000");
        let client = addr("203.0.113.2:2000");
        register(&mut r, now, worker, 40);
        let out = connect(&mut r, now, client, 10);
        assert_eq!(out.len(), 2);
        let (
            BrokerMessage::Introduce {
                role: rw,
                peer_reflexive: pw,
                nonce: nw,
                delay_ms: dw,
                ..
            },
            BrokerMessage::Introduce {
                role: rc,
                peer_reflexive: pc,
                nonce: nc,
                delay_ms: dc,
                tx,
                peer_local,
                ..
            },
        ) = (&out[0].1, &out[1].1)
        else {
            panic!("{out:?}")
        };
        assert_eq!((out[0].0, out[1].0), (worker, client));
        assert_eq!((*rw, *rc), (Role::Punch, Role::Dial));
        assert_eq!((*pw, *pc), (client, worker));
        assert_eq!(nw, nc);
        assert_eq!(*tx, 42);
        assert_eq!(peer_local, &vec![addr("10.0.0.2:4000")]);
        // The client said it is symmetric: the worker learns it (birthday method).
        assert!(matches!(
            out[0].1,
            BrokerMessage::Introduce {
                peer_symmetric: true,
                ..
            }
        ));
        assert!(matches!(
            out[1].1,
            BrokerMessage::Introduce {
                peer_symmetric: false,
                ..
            }
        ));
        // The worker is 40 ms away, the client 10: the client waits (40-10)/2 = 15 ms.
        assert_eq!((*dw, *dc), (0, 15));
    }

    #[test]
    fn introductions_are_rate_limited_per_ip() {
        let mut r = Rendezvous::with_rng(
            RendezvousConfig {
                connects_per_minute: 2,
                ..RendezvousConfig::default()
            },
            StdRng::seed_from_u64(3),
        );
        let now = Instant::now();
        register(&mut r, now, addr("203.0.113.1:1000"), 0);
        let client = addr("198.51.100.9:1");
        assert_eq!(connect(&mut r, now, client, 0).len(), 2);
        assert_eq!(connect(&mut r, now, addr("198.51.100.9:2"), 0).len(), 2);
        let out = connect(&mut r, now, client, 0);
        assert!(
            matches!(out[..], [(to, BrokerMessage::Refused { code: RefusalCode::RateLimited, .. })] if to == client)
        );
        // Another IP is not affected.
        assert_eq!(connect(&mut r, now, addr("198.51.100.10:1"), 0).len(), 2);
    }

    #[test]
    fn registrations_expire_without_keep_alive() {
        let mut r = state(RelayConfig::default());
        let now = Instant::now();
        register(&mut r, now, addr("203.0.113.1:1000"), 0);
        assert_eq!(r.registered("k"), 1);
        let ttl = RendezvousConfig::default().registration_ttl;
        register(&mut r, now + ttl / 2, addr("203.0.113.1:1000"), 0);
        assert_eq!(r.registered("k"), 1);
        assert_eq!(r.poll_timeout(), Some(now + ttl / 2 + ttl));
        r.handle_timeout(now + ttl / 2 + ttl);
        assert_eq!(r.registered("k"), 0);
        let out = connect(&mut r, now + 2 * ttl, addr("203.0.113.2:2000"), 0);
        assert!(matches!(
            out[0].1,
            BrokerMessage::Refused {
                code: RefusalCode::NoWorker,
                ..
            }
        ));
    }

    fn relay_for(r: &mut Rendezvous, now: Instant, client: SocketAddr) -> Result<u32, RefusalCode> {
        let out = connect(r, now, client, 0);
        let BrokerMessage::Introduce { nonce, .. } = out[1].1 else {
            panic!()
        };
        let out = r.handle(
            &inbound(now, client),
            BrokerMessage::RelayRequest { tx: 5, nonce },
        );
        match &out[0].1 {
            BrokerMessage::RelayGranted { circuit, .. } => Ok(*circuit),
            BrokerMessage::Refused { code, .. } => Err(*code),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relay_forwards_both_ways_and_closes_at_the_byte_limit() {
        let mut r = state(RelayConfig {
            max_bytes: 100,
            ..RelayConfig::default()
        });
        let now = Instant::now();
        let worker = addr("203.0.113.1:1000");
        let client = addr("203.0.113.2:2000");
        register(&mut r, now, worker, 0);
        let circuit = relay_for(&mut r, now, client).unwrap();
        assert_eq!(
            r.handle_relay(now, client, circuit, 55),
            RelayVerdict::Forward(worker)
        );
        assert_eq!(
            r.handle_relay(now, worker, circuit, 45),
            RelayVerdict::Forward(client)
        );
        assert_eq!(
            r.handle_relay(now, addr("192.0.2.9:9"), circuit, 10),
            RelayVerdict::Drop
        );
        let RelayVerdict::Close(out) = r.handle_relay(now, client, circuit, 20) else {
            panic!()
        };
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(_, m)| matches!(m, BrokerMessage::Refused { code: RefusalCode::RelayBytesExceeded, circuit: Some(c), .. } if *c == circuit)));
        assert_eq!(r.handle_relay(now, client, circuit, 6), RelayVerdict::Drop);
    }

    #[test]
    fn relay_closes_at_the_duration_limit_and_limits_requests_per_ip() {
        let mut r = state(RelayConfig {
            max_duration: Duration::from_secs(5),
            requests_per_minute: 2,
            ..RelayConfig::default()
        });
        let now = Instant::now();
        register(&mut r, now, addr("203.0.113.1:1000"), 0);
        let client = addr("203.0.113.2:2000");
        relay_for(&mut r, now, client).unwrap();
        assert_eq!(r.circuits(), 1);
        let out = r.handle_timeout(now + Duration::from_secs(5));
        assert_eq!(out.len(), 2);
        assert_eq!(r.circuits(), 0);
        let later = now + Duration::from_secs(6);
        register(&mut r, later, addr("203.0.113.1:1000"), 0);
        relay_for(&mut r, later, client).unwrap();
        assert_eq!(
            relay_for(&mut r, later, client),
            Err(RefusalCode::RateLimited)
        );
        let next_minute = later + Duration::from_secs(61);
        register(&mut r, next_minute, addr("203.0.113.1:1000"), 0);
        assert!(relay_for(&mut r, next_minute, client).is_ok());
    }

    #[test]
    fn relay_refuses_strangers_and_unknown_nonces_and_when_full() {
        let mut r = state(RelayConfig {
            max_circuits: 1,
            ..RelayConfig::default()
        });
        let now = Instant::now();
        register(&mut r, now, addr("203.0.113.1:1000"), 0);
        let out = r.handle(
            &inbound(now, addr("192.0.2.1:1")),
            BrokerMessage::RelayRequest {
                tx: 1,
                nonce: [0; 16],
            },
        );
        assert!(matches!(
            out[0].1,
            BrokerMessage::Refused {
                code: RefusalCode::UnknownIntroduction,
                ..
            }
        ));
        relay_for(&mut r, now, addr("203.0.113.2:2000")).unwrap();
        assert_eq!(
            relay_for(&mut r, now, addr("203.0.113.3:3000")),
            Err(RefusalCode::RelayFull)
        );
    }

    /// Found by the `rendezvous` fuzz target (fuzz/regressions/rendezvous/): an
    /// unpadded 54-byte `Connect` was answered with a 174-byte `Introduce`, over the
    /// three times its size that [`AMPLIFICATION_FACTOR`] promises.
    #[test]
    fn an_unpadded_connect_gets_nothing_over_three_times_its_size() {
        use crate::protocol::identity::NodeKey;
        use crate::protocol::record::{RecordBody, Via, RECORD_VERSION};
        let mut r = state(RelayConfig::default());
        let now = Instant::now();
        let worker = addr("203.0.113.1:1000");
        let body = RecordBody {
            v: RECORD_VERSION,
            exp: WALL + 240_000,
            local: (1..=8)
                .map(|i| SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, i], 40000 + i)))
                .collect(),
            via: vec![Via {
                broker: addr("203.0.113.250:30001"),
                reflexive: worker,
            }],
            ..RecordBody::default()
        };
        let record = Record::sign(&NodeKey::from_seed([1; 32]), "k", WALL, body)
            .unwrap()
            .wire;
        assert!(matches!(
            register_as(&mut r, now, worker, record),
            BrokerMessage::Registered { .. }
        ));
        let client = addr("[2001:db8::99]:5000");
        for pad in [0, 20, 60, 400] {
            let connect = BrokerMessage::Connect {
                tx: 1,
                key: "k".into(),
                node: None,
                local: vec![],
                rtt_ms: 0,
                symmetric: false,
                pad: vec![0; pad],
            };
            let len = encoded_len(&connect);
            let out = r.handle(
                &Inbound {
                    len,
                    ..inbound(now, client)
                },
                connect,
            );
            for (to, answer) in &out {
                if *to == client {
                    let n = encoded_len(answer);
                    assert!(n <= 3 * len, "{len} B answered with {n} B: {answer:?}");
                }
            }
            // The worker punches only when the client hears of it.
            let told_worker = out.iter().any(|(to, _)| *to == worker);
            let told_client = out
                .iter()
                .any(|(to, m)| *to == client && matches!(m, BrokerMessage::Introduce { .. }));
            assert_eq!(told_worker, told_client, "pad {pad}: {out:?}");
            if pad == 400 {
                assert!(told_client, "a padded Connect is introduced");
            }
        }
    }

    /// Found by the `rendezvous` fuzz target: a refusal quoted the whole service key, so
    /// a `Connect` for a key of control characters (each escaped to six bytes) was
    /// answered with several datagrams' worth of bytes.
    #[test]
    fn refusals_quote_long_keys_shortened() {
        let mut r = state(RelayConfig::default());
        let now = Instant::now();
        let connect = BrokerMessage::Connect {
            tx: 1,
            key: "\u{1}".repeat(1000),
            node: None,
            local: vec![],
            rtt_ms: 0,
            symmetric: false,
            pad: vec![],
        };
        let len = encoded_len(&connect);
        let client = addr("192.0.2.1:1");
        let out = r.handle(
            &Inbound {
                len,
                ..inbound(now, client)
            },
            connect,
        );
        let [(to, refused @ BrokerMessage::Refused { code, message, .. })] = &out[..] else {
            panic!("{out:?}");
        };
        assert_eq!((*to, *code), (client, RefusalCode::NoWorker));
        assert!(encoded_len(refused) <= MAX_BROKER_MESSAGE_BYTES);
        assert!(message.len() < 500, "{message}");
    }
}
