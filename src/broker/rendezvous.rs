//! The broker's rendezvous and relay state machine (pure, sans-IO).
//!
//! Inputs are values and the current time: [`Rendezvous::handle`] for a broker message,
//! [`Rendezvous::handle_relay`] for a relay frame, [`Rendezvous::handle_timeout`] when
//! [`Rendezvous::poll_timeout`]'s instant has passed. Outputs are the datagrams to send.
//! The driver ([`crate::broker`]) owns the sockets and the clock.
//!
//! - **Registrations**: a worker's `Register`, sent from its QUIC socket, records the
//!   source address (the mapping QUIC will use) under its key until `registration_ttl`
//!   passes without a refresh.
//! - **Introductions**: a client's `Connect` picks a registered worker at random and sends
//!   both an `Introduce` with the other's reflexive and local addresses, one fresh nonce,
//!   and start delays computed from the two RTTs so that both start at the same instant
//!   (libp2p DCUtR): each side waits `(max_rtt - own_rtt) / 2`.
//! - **Relay** (in the spirit of libp2p circuit relay v2): a registration is the worker's
//!   reservation; a client that could not punch asks `RelayRequest` with the nonce, and
//!   gets a circuit limited in bytes and duration, subject to a circuit count limit and a
//!   per-IP request rate. A circuit over a limit is closed with a `Refused` to both ends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::defaults::{
    DEFAULT_CONNECTS_PER_MINUTE, DEFAULT_INTRODUCTION_TTL, DEFAULT_REGISTRATION_TTL,
    DEFAULT_RELAY_MAX_BYTES, DEFAULT_RELAY_MAX_CIRCUITS, DEFAULT_RELAY_MAX_DURATION,
    DEFAULT_RELAY_REQUESTS_PER_MINUTE,
};
use crate::protocol::broker::{BrokerMessage, Nonce, RefusalCode, Role, RELAY_HEADER_LEN};

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
            relay: RelayConfig::default(),
        }
    }
}

#[derive(Debug, Clone)]
struct Registration {
    addr: SocketAddr,
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

    /// Number of open relay circuits.
    pub fn circuits(&self) -> usize {
        self.circuits.len()
    }

    /// Handles one broker message from `from` at `now`; returns what to send.
    pub fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        message: BrokerMessage,
    ) -> Vec<(SocketAddr, BrokerMessage)> {
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
            BrokerMessage::Register {
                tx,
                key,
                local,
                rtt_ms,
                symmetric,
            } => {
                let expires = now + self.config.registration_ttl;
                let entries = self.workers.entry(key).or_default();
                let local: Vec<SocketAddr> = local.into_iter().take(8).collect();
                match entries.iter_mut().find(|r| r.addr == from) {
                    Some(r) => {
                        r.local = local;
                        r.rtt_ms = rtt_ms;
                        r.symmetric = symmetric;
                        r.expires = expires;
                    }
                    None => entries.push(Registration {
                        addr: from,
                        local,
                        rtt_ms,
                        symmetric,
                        expires,
                    }),
                }
                vec![(
                    from,
                    BrokerMessage::Registered {
                        tx,
                        reflexive: from,
                        expires_ms: millis(self.config.registration_ttl),
                    },
                )]
            }
            BrokerMessage::Connect {
                tx,
                key,
                local,
                rtt_ms,
                symmetric,
            } => self.introduce(now, from, tx, &key, local, rtt_ms, symmetric),
            BrokerMessage::RelayRequest { tx, nonce } => self.open_circuit(now, from, tx, nonce),
            // Answers and pushes are the broker's own kinds: a peer sending them is confused.
            BrokerMessage::Pong { tx, .. }
            | BrokerMessage::Registered { tx, .. }
            | BrokerMessage::Introduce { tx, .. }
            | BrokerMessage::RelayGranted { tx, .. }
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

    #[allow(clippy::too_many_arguments)]
    fn introduce(
        &mut self,
        now: Instant,
        client: SocketAddr,
        tx: u64,
        key: &str,
        local: Vec<SocketAddr>,
        client_rtt: u32,
        client_symmetric: bool,
    ) -> Vec<(SocketAddr, BrokerMessage)> {
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
        if candidates.is_empty() {
            return vec![(
                client,
                refusal(
                    tx,
                    None,
                    RefusalCode::NoWorker,
                    &format!("no worker is registered for {key:?} at this broker"),
                ),
            )];
        }
        let worker = candidates[self.rng.random_range(0..candidates.len())].clone();
        let nonce: Nonce = self.rng.random();
        let slowest = client_rtt.max(worker.rtt_ms);
        self.introductions.insert(
            nonce,
            Introduction {
                client,
                worker: worker.addr,
                expires: now + self.config.introduction_ttl,
            },
        );
        let local: Vec<SocketAddr> = local.into_iter().take(8).collect();
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
                },
            ),
            (
                client,
                BrokerMessage::Introduce {
                    tx,
                    role: Role::Dial,
                    peer_reflexive: worker.addr,
                    peer_local: worker.local,
                    nonce,
                    delay_ms: (slowest - client_rtt) / 2,
                    peer_symmetric: worker.symmetric,
                },
            ),
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

fn refusal(tx: u64, circuit: Option<u32>, code: RefusalCode, message: &str) -> BrokerMessage {
    BrokerMessage::Refused {
        tx,
        circuit,
        code,
        message: message.to_string(),
    }
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

    fn register(r: &mut Rendezvous, now: Instant, worker: SocketAddr, rtt_ms: u32) {
        let out = r.handle(
            now,
            worker,
            BrokerMessage::Register {
                tx: 1,
                key: "k".into(),
                local: vec![addr("10.0.0.2:4000")],
                rtt_ms,
                symmetric: false,
            },
        );
        assert!(
            matches!(out[0].1, BrokerMessage::Registered { reflexive, .. } if reflexive == worker)
        );
    }

    fn connect(
        r: &mut Rendezvous,
        now: Instant,
        client: SocketAddr,
        rtt_ms: u32,
    ) -> Vec<(SocketAddr, BrokerMessage)> {
        r.handle(
            now,
            client,
            BrokerMessage::Connect {
                tx: 42,
                key: "k".into(),
                local: vec![],
                rtt_ms,
                symmetric: true,
            },
        )
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
        let out = r.handle(now, client, BrokerMessage::RelayRequest { tx: 5, nonce });
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
            now,
            addr("192.0.2.1:1"),
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
}
