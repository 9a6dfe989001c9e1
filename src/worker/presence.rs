//! A worker's presence in the mesh: how callers find it and how they get through to it
//! (docs/protocol.md §1 and §6).
//!
//! ```text
//!            ┌─ brokers: --broker, or a DHT lookup of nano-connect/brokers
//!  start ──► mapping check against them (RFC 4787 §4.1, from the QUIC socket)
//!            ├─ no NAT in front (or no broker to ask) ──► PUBLIC: announce KEY with the
//!            │     QUIC port every interval (±50 %), publish the record (its addresses)
//!            └─ behind a NAT ──► BROKERED: register a signed record with up to N brokers,
//!                  refresh every 15 s, punch toward the clients they introduce; the
//!                  brokers announce themselves under nano-connect/via-broker/KEY
//!  always: publish the record (BEP 44, salt KEY) every interval; answer List with it
//!  node unhealthy ──► withdraw (unregister, stop announcing) until it answers again
//! ```
//!
//! Everything goes out of the worker's one QUIC socket, so the mapping a broker sees is
//! the one QUIC uses; the [`Mux`] sorts what comes back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::seq::SliceRandom;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::punching::{self, Introduction, ServeExtra};
use crate::defaults::{DEFAULT_REGISTRATION_INTERVAL, DEFAULT_SERVICE_KEY};
use crate::discovery::link::announce_delay;
use crate::discovery::{keys, Directory};
use crate::protocol::broker::{
    decode, encode_broker, encoded_len, BrokerMessage, Datagram, Role, AMPLIFICATION_FACTOR,
};
use crate::protocol::identity::NodeKey;
use crate::protocol::punch::PunchSchedule;
use crate::protocol::record::{
    Record, RecordBody, Via, WebFace, WireRecord, MAX_RECORD_TTL, RECORD_VERSION,
};
use crate::transport::nat_socket::Diverted;
use crate::traversal::{local_addrs, mapping_check, millis_u32, MappingCheck, Mux};
use crate::web::WebListing;

/// Which brokers a worker may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerChoice {
    /// Find them in the DHT (`nano-connect/brokers`). The default.
    Discover,
    /// These (`--broker`), and no others.
    Fixed(Vec<SocketAddr>),
    /// None: the worker announces itself as public without checking (`--public`).
    Off,
}

/// How a worker is reached, as its presence decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Directly at its own address (no NAT in front of it, or nothing to check with).
    Public,
    /// Through brokers: registered with these.
    Brokered(Vec<SocketAddr>),
}

impl Mode {
    /// `public` or `brokered`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Brokered(_) => "brokered",
        }
    }
}

/// What a worker's presence reports, for its events line and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The presence decided how the worker is reached (and, when brokered, registered
    /// with at least one broker).
    Mode(Mode),
    /// A broker took the worker's registration (first time, or again after losing it).
    Registered {
        /// The broker.
        broker: SocketAddr,
        /// The worker's reflexive address at it.
        reflexive: SocketAddr,
    },
    /// The worker left the mesh for now (the node does not answer).
    Withdrawn,
}

/// Settings of a worker's presence.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// The service key served.
    pub service: String,
    /// Brokers to use.
    pub brokers: BrokerChoice,
    /// Most brokers a worker behind a NAT registers with. Default 2: one lost broker does
    /// not make it unreachable.
    pub max_brokers: usize,
    /// Time between announces and record publications, ±50 % jitter (Grenache's 120 s).
    pub announce_interval: Duration,
    /// Time between registration refreshes. Default 15 s.
    pub registration_interval: Duration,
    /// Deadline of each exchange with a broker. Default 1 s.
    pub broker_timeout: Duration,
    /// The punch schedule run for each introduction.
    pub schedule: PunchSchedule,
    /// Register with brokers even when the mapping check sees no NAT: for a host whose
    /// firewall drops unsolicited inbound UDP (which no mapping check can see), and for
    /// tests of brokered paths on one host. Default false.
    pub assume_nat: bool,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            service: DEFAULT_SERVICE_KEY.to_string(),
            brokers: BrokerChoice::Discover,
            max_brokers: 2,
            announce_interval: crate::defaults::DEFAULT_ANNOUNCE_INTERVAL,
            registration_interval: DEFAULT_REGISTRATION_INTERVAL,
            broker_timeout: Duration::from_secs(1),
            schedule: PunchSchedule::default(),
            assume_nat: false,
        }
    }
}

/// What a presence runs with.
pub struct PresenceParts {
    /// The worker's node key (signs its records).
    pub key: NodeKey,
    /// The demultiplexer of the worker's QUIC socket.
    pub mux: Mux,
    /// What nobody else on the socket asked for (introductions, list requests).
    pub unsolicited: mpsc::Receiver<Diverted>,
    /// The DHT, if the worker has one (announces, record, broker lookup).
    pub directory: Option<Directory>,
    /// Whether the worker should be present (its node answers).
    pub healthy: watch::Receiver<bool>,
    /// Serves QUIC on the birthday method's winning sockets.
    pub serve_extra: Option<ServeExtra>,
    /// Told of every [`PresenceEvent`].
    pub on_event: Arc<dyn Fn(PresenceEvent) + Send + Sync>,
    /// The worker's WebTransport face (its port and certificate hashes), when it has
    /// one: every record lists it.
    pub web: Option<watch::Receiver<WebListing>>,
    /// Where each record signed is kept for the RPC server to answer
    /// [`crate::protocol::record::RECORD_SERVICE`] with.
    pub published: Option<watch::Sender<Option<WireRecord>>>,
}

/// The web face a record gives: the WebTransport port on the addresses callers use
/// (the public ones, else the LAN ones), and the hashes served now and next.
fn web_face(
    parts: &PresenceParts,
    direct: &[SocketAddr],
    own_addrs: &[SocketAddr],
) -> Option<WebFace> {
    let listing = parts.web.as_ref()?.borrow().clone();
    let base = if direct.is_empty() { own_addrs } else { direct };
    Some(WebFace {
        addrs: base
            .iter()
            .map(|a| SocketAddr::new(a.ip(), listing.port))
            .collect(),
        sha256: listing.sha256,
    })
}

/// Signs `body` (with the web face added) and keeps the record for the RPC server.
fn sign(
    parts: &PresenceParts,
    config: &PresenceConfig,
    now: u64,
    mut body: RecordBody,
    direct: &[SocketAddr],
    own_addrs: &[SocketAddr],
) -> Result<Record, crate::protocol::record::RecordError> {
    body.web = web_face(parts, direct, own_addrs);
    let record = Record::sign(&parts.key, &config.service, now, body)?;
    if let Some(published) = &parts.published {
        published.send_replace(Some(record.wire.clone()));
    }
    Ok(record)
}

/// Milliseconds since the Unix epoch now.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long a record says it is true: two announce intervals (a record is republished
/// every interval ±50 %, so within 1.5 intervals), within [`MAX_RECORD_TTL`].
fn record_ttl(interval: Duration) -> Duration {
    (interval * 2)
        .max(Duration::from_secs(30))
        .min(MAX_RECORD_TTL)
}

/// The record a public worker publishes: its own addresses.
fn public_body(addrs: Vec<SocketAddr>, exp: u64) -> RecordBody {
    RecordBody {
        v: RECORD_VERSION,
        exp,
        addrs,
        ..RecordBody::default()
    }
}

/// Runs the presence of a worker until `cancel` (then leaves its brokers).
pub async fn run(config: PresenceConfig, mut parts: PresenceParts, cancel: CancellationToken) {
    let mut punchers = JoinSet::new();
    loop {
        if !*parts.healthy.borrow() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = parts.healthy.changed() => if changed.is_err() { break },
            }
            continue;
        }
        let (mode, public) = decide(&config, &parts, &cancel).await;
        if cancel.is_cancelled() {
            break;
        }
        let outcome = serve_mode(&config, &mut parts, &mode, public, &mut punchers, &cancel).await;
        if let Mode::Brokered(brokers) = &mode {
            unregister(&config, &parts, brokers).await;
        }
        match outcome {
            Outcome::Stopped => break,
            Outcome::Unhealthy => (parts.on_event)(PresenceEvent::Withdrawn),
            Outcome::Again => {}
        }
    }
    punchers.shutdown().await;
}

/// The brokers to check: fixed, or found in the DHT.
async fn brokers(config: &PresenceConfig, parts: &PresenceParts) -> Vec<SocketAddr> {
    match &config.brokers {
        BrokerChoice::Off => Vec::new(),
        BrokerChoice::Fixed(brokers) => brokers.clone(),
        BrokerChoice::Discover => match &parts.directory {
            Some(directory) => match directory.lookup(keys::BROKERS).await {
                Ok(mut found) => {
                    found.shuffle(&mut rand::rng());
                    found
                }
                Err(e) => {
                    warn!(error = %e, "cannot look brokers up");
                    Vec::new()
                }
            },
            None => Vec::new(),
        },
    }
}

/// Checks the mapping toward brokers and decides how the worker is reached, and whether
/// it is public (no NAT in front of it: it announces its own address). A public worker
/// given brokers by the operator (`--broker`) registers with them too, so that callers
/// told only those brokers find it.
async fn decide(
    config: &PresenceConfig,
    parts: &PresenceParts,
    cancel: &CancellationToken,
) -> (Mode, bool) {
    let local = parts.mux.socket().local().ok();
    let mut found = brokers(config, parts).await;
    if found.is_empty() && config.brokers == BrokerChoice::Discover {
        // A worker often starts with its grape: give the brokers' announces a moment.
        for _ in 0..5 {
            tokio::select! {
                _ = cancel.cancelled() => return (Mode::Public, true),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            found = brokers(config, parts).await;
            if !found.is_empty() {
                break;
            }
        }
    }
    if found.is_empty() {
        if config.brokers != BrokerChoice::Off {
            warn!(
                "no broker found to check this worker's NAT with: announcing it as public \
                 (give --broker HOST:PORT if it is behind a NAT)"
            );
        }
        return (Mode::Public, true);
    }
    let mut answered: Vec<(SocketAddr, MappingCheck)> = Vec::new();
    for broker in found.iter().take(config.max_brokers + 4) {
        parts.mux.socket().trust_broker(*broker);
        match mapping_check(&parts.mux, *broker, config.broker_timeout).await {
            Ok(check) => answered.push((*broker, check)),
            Err(e) => debug!(%broker, error = %e, "broker did not answer the mapping check"),
        }
        if answered.len() >= config.max_brokers {
            break;
        }
    }
    let Some((first, check)) = answered.first() else {
        warn!(brokers = ?found, "no broker answered: announcing this worker as public");
        return (Mode::Public, true);
    };
    let brokers: Vec<SocketAddr> = answered.iter().map(|(b, _)| *b).collect();
    if !config.assume_nat && local.is_some_and(|local| check.public(local, *first)) {
        info!(reflexive = %check.reflexive, "no NAT in front of this worker: reached directly");
        if matches!(config.brokers, BrokerChoice::Fixed(_)) {
            return (Mode::Brokered(brokers), true);
        }
        return (Mode::Public, true);
    }
    info!(
        reflexive = %check.reflexive,
        mapping = check.mapping().as_str(),
        brokers = ?answered.iter().map(|(b, _)| b.to_string()).collect::<Vec<_>>(),
        "this worker is behind a NAT: reached through brokers"
    );
    (Mode::Brokered(brokers), false)
}

enum Outcome {
    /// Cancelled.
    Stopped,
    /// The node stopped answering.
    Unhealthy,
    /// Decide again (every broker lost).
    Again,
}

/// A broker the worker is registered with.
struct Registration {
    reflexive: Option<SocketAddr>,
    rtt_ms: u32,
    symmetric: bool,
    registered: bool,
}

async fn serve_mode(
    config: &PresenceConfig,
    parts: &mut PresenceParts,
    mode: &Mode,
    public: bool,
    punchers: &mut JoinSet<()>,
    cancel: &CancellationToken,
) -> Outcome {
    let socket = parts.mux.socket().clone();
    let Ok(local) = socket.local() else {
        return Outcome::Stopped;
    };
    let port = local.port();
    let ttl = record_ttl(config.announce_interval);
    // Brokered: one registration per broker, filled by the first exchanges.
    let mut registrations: HashMap<SocketAddr, Registration> = match mode {
        Mode::Public => HashMap::new(),
        Mode::Brokered(brokers) => brokers
            .iter()
            .map(|b| {
                (
                    *b,
                    Registration {
                        reflexive: None,
                        rtt_ms: 0,
                        symmetric: false,
                        registered: false,
                    },
                )
            })
            .collect(),
    };
    let toward = registrations
        .keys()
        .next()
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([192, 0, 2, 1], 9)));
    let own_addrs = local_addrs(local, toward);
    let direct: &[SocketAddr] = if public { &own_addrs } else { &[] };
    let mut record = current_record(parts, config, &registrations, direct, &own_addrs, ttl);
    let mut announced_mode = false;
    if public {
        (parts.on_event)(PresenceEvent::Mode(Mode::Public));
        announced_mode = true;
    }
    let mut next_announce = Instant::now();
    let mut next_register = Instant::now();
    let mut lost_all_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= next_announce {
            next_announce = now + announce_delay(config.announce_interval, rand::random());
            if let Some(directory) = &parts.directory {
                if public {
                    match directory.announce(&config.service, port).await {
                        Ok(()) => debug!(key = %config.service, port, "announced"),
                        Err(e) => {
                            warn!(error = %e, "announce failed; retrying soon");
                            next_announce = now + Duration::from_secs(1);
                        }
                    }
                }
                record = current_record(parts, config, &registrations, direct, &own_addrs, ttl);
                if let Some(record) = &record {
                    if let Err(e) = directory.publish(record).await {
                        debug!(error = %e, "record not published");
                    }
                }
            }
        }
        if !registrations.is_empty() && now >= next_register {
            next_register = now + config.registration_interval;
            register_all(config, parts, &mut registrations, direct, &own_addrs, ttl).await;
            record = current_record(parts, config, &registrations, direct, &own_addrs, ttl);
            let live = registrations.values().filter(|r| r.registered).count();
            if live == 0 {
                next_register = now + Duration::from_millis(500);
                let since = *lost_all_since.get_or_insert(now);
                if since.elapsed() > config.registration_interval * 2 {
                    warn!("no broker takes this worker's registration: looking for others");
                    return Outcome::Again;
                }
            } else {
                lost_all_since = None;
                if !announced_mode {
                    let brokers = registrations
                        .iter()
                        .filter(|(_, r)| r.registered)
                        .map(|(b, _)| *b)
                        .collect();
                    (parts.on_event)(PresenceEvent::Mode(Mode::Brokered(brokers)));
                    announced_mode = true;
                }
            }
        }
        let wake = if registrations.is_empty() {
            next_announce
        } else {
            next_announce.min(next_register)
        };
        let datagram = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Outcome::Stopped,
            changed = parts.healthy.changed() => {
                if changed.is_err() {
                    return Outcome::Stopped;
                }
                if !*parts.healthy.borrow() {
                    return Outcome::Unhealthy;
                }
                continue;
            }
            Some(_) = punchers.join_next(), if !punchers.is_empty() => continue,
            _ = tokio::time::sleep_until(wake.into()) => continue,
            d = parts.unsolicited.recv() => match d { Some(d) => d, None => return Outcome::Stopped },
        };
        let (from, bytes) = datagram;
        let Ok(Datagram::Broker(message)) = decode(&bytes) else {
            continue;
        };
        match message {
            BrokerMessage::List { tx, key, .. } => {
                // Anyone may ask a worker for its record (a client checking a direct
                // entry); the answer is bounded like a broker's (3× the request).
                let mine = record.as_ref().filter(|_| key == config.service);
                let total = u16::from(mine.is_some());
                let mut answer = BrokerMessage::Listed {
                    tx,
                    records: mine.map(|r| vec![r.wire.clone()]).unwrap_or_default(),
                    total,
                };
                if encoded_len(&answer) > bytes.len() * AMPLIFICATION_FACTOR {
                    answer = BrokerMessage::Listed {
                        tx,
                        records: Vec::new(),
                        total,
                    };
                }
                let _ = socket.send_raw(&encode_broker(&answer), from).await;
            }
            BrokerMessage::Introduce {
                role: Role::Punch,
                peer_reflexive,
                peer_local,
                nonce,
                delay_ms,
                peer_symmetric,
                ..
            } if registrations.contains_key(&from) => {
                let symmetric = registrations.get(&from).is_some_and(|r| r.symmetric);
                debug!(peer = %peer_reflexive, delay_ms, peer_symmetric, "introduced: punching");
                punchers.spawn(punching::answer(
                    parts.mux.clone(),
                    Introduction {
                        peer_reflexive,
                        peer_local,
                        nonce,
                        delay: Duration::from_millis(delay_ms.into()),
                        peer_symmetric,
                    },
                    symmetric,
                    config.schedule.clone(),
                    parts.serve_extra.clone(),
                ));
            }
            BrokerMessage::Refused {
                circuit: Some(circuit),
                message,
                ..
            } if registrations.contains_key(&from) => {
                socket.remove_circuit(circuit);
                info!(%message, "broker closed a relay circuit");
            }
            other => debug!(%from, ?other, "unexpected broker message ignored"),
        }
    }
}

/// The record as things stand: its direct addresses (a public worker), and the brokers
/// that took its registration; `None` while a brokered worker has neither.
fn current_record(
    parts: &PresenceParts,
    config: &PresenceConfig,
    registrations: &HashMap<SocketAddr, Registration>,
    direct: &[SocketAddr],
    own_addrs: &[SocketAddr],
    ttl: Duration,
) -> Option<Record> {
    let now = unix_ms();
    let exp = now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let body = match brokered_body(registrations, direct, own_addrs, exp, false) {
        Some(body) => body,
        None if !direct.is_empty() => public_body(direct.to_vec(), exp),
        None => return None,
    };
    match sign(parts, config, now, body, direct, own_addrs) {
        Ok(record) => Some(record),
        Err(e) => {
            warn!(error = %e, "cannot sign this worker's record");
            None
        }
    }
}

/// A brokered record: every broker whose reflexive address is known (`all`), or only
/// those that took the registration.
fn brokered_body(
    registrations: &HashMap<SocketAddr, Registration>,
    direct: &[SocketAddr],
    own_addrs: &[SocketAddr],
    exp: u64,
    all: bool,
) -> Option<RecordBody> {
    let via: Vec<Via> = registrations
        .iter()
        .filter(|(_, r)| all || r.registered)
        .filter_map(|(broker, r)| {
            r.reflexive.map(|reflexive| Via {
                broker: *broker,
                reflexive,
            })
        })
        .collect();
    if via.is_empty() {
        return None;
    }
    Some(RecordBody {
        v: RECORD_VERSION,
        exp,
        addrs: direct.to_vec(),
        local: if direct.is_empty() {
            own_addrs.to_vec()
        } else {
            Vec::new()
        },
        via,
        sym: registrations.values().any(|r| r.symmetric),
        web: None,
    })
}

/// Refreshes the registration at every broker (mapping check first where the reflexive
/// address is not known yet), all at once.
async fn register_all(
    config: &PresenceConfig,
    parts: &PresenceParts,
    registrations: &mut HashMap<SocketAddr, Registration>,
    direct: &[SocketAddr],
    own_addrs: &[SocketAddr],
    ttl: Duration,
) {
    for (broker, r) in registrations.iter_mut() {
        if r.reflexive.is_none() {
            if let Ok(check) = mapping_check(&parts.mux, *broker, config.broker_timeout).await {
                r.reflexive = Some(check.reflexive);
                r.symmetric = check.symmetric();
                r.rtt_ms = millis_u32(check.rtt).max(1);
            }
        }
    }
    let now = unix_ms();
    let exp = now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let Some(body) = brokered_body(registrations, direct, own_addrs, exp, true) else {
        return;
    };
    let record = match sign(parts, config, now, body, direct, own_addrs) {
        Ok(record) => record,
        Err(e) => {
            warn!(error = %e, "cannot sign this worker's record");
            return;
        }
    };
    let asks = registrations.iter().map(|(broker, r)| {
        let tx: u64 = rand::random();
        let message = BrokerMessage::Register {
            tx,
            record: record.wire.clone(),
            rtt_ms: r.rtt_ms,
        };
        let mux = parts.mux.clone();
        let broker = *broker;
        async move {
            let answer = mux.ask(broker, &message, tx, config.broker_timeout).await;
            (broker, answer)
        }
    });
    for (broker, answer) in futures::future::join_all(asks).await {
        let Some(r) = registrations.get_mut(&broker) else {
            continue;
        };
        match answer {
            Ok((BrokerMessage::Registered { reflexive, .. }, rtt)) => {
                r.rtt_ms = millis_u32(rtt).max(1);
                let was = r.registered;
                r.registered = true;
                if r.reflexive != Some(reflexive) {
                    // The NAT moved the mapping: sign the new one at the next refresh.
                    info!(%broker, old = ?r.reflexive, new = %reflexive, "reflexive address changed");
                    r.reflexive = Some(reflexive);
                }
                if !was {
                    info!(%broker, %reflexive, "registered with the broker");
                    (parts.on_event)(PresenceEvent::Registered { broker, reflexive });
                }
            }
            Ok((BrokerMessage::Refused { message, .. }, _)) => {
                warn!(%broker, %message, "the broker refused the registration");
                r.registered = false;
                r.reflexive = None;
            }
            Ok((other, _)) => debug!(%broker, ?other, "unexpected answer to a registration"),
            Err(e) => {
                if r.registered {
                    warn!(%broker, error = %e, "registration not refreshed");
                }
                r.registered = false;
                r.reflexive = None;
            }
        }
    }
}

/// Tells the brokers the worker leaves (best effort, half a second at most).
async fn unregister(config: &PresenceConfig, parts: &PresenceParts, brokers: &[SocketAddr]) {
    let now = unix_ms();
    let body = RecordBody {
        v: RECORD_VERSION,
        exp: now + 60_000,
        ..RecordBody::default()
    };
    let Ok(record) = Record::sign(&parts.key, &config.service, now, body) else {
        return;
    };
    let asks = brokers.iter().map(|broker| {
        let tx: u64 = rand::random();
        let message = BrokerMessage::Unregister {
            tx,
            record: record.wire.clone(),
        };
        let mux = parts.mux.clone();
        let broker = *broker;
        async move {
            let _ = mux
                .ask(broker, &message, tx, Duration::from_millis(500))
                .await;
        }
    });
    futures::future::join_all(asks).await;
}
