//! The peers' side of the broker protocol, on a [`NatSocket`]: the worker's
//! registration and punching agent, the client's connect (direct, punched or relayed),
//! and the mapping check behind `netcheck`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::broker_proto::{
    decode, encode_broker, encode_punch, BrokerMessage, Datagram, Nonce, RefusalCode, Role,
};
use super::punch::{birthday_ports, PunchSchedule, BIRTHDAY_PROBES, BIRTHDAY_SOCKETS};
use super::socket::{circuit_addr, Diverted, NatSocket};
use super::stun;
use crate::defaults::{
    DEFAULT_BROKER_RETRY, DEFAULT_PUNCH_DEADLINE, DEFAULT_REGISTRATION_INTERVAL,
};
use crate::transport::SERVER_NAME;

/// Finds the broker of a grape from the grape's DHT address `HOST:PORT`: by convention
/// the broker listens on the DHT port + 1 at the same host (docs/protocol.md §5.1).
///
/// Errors: the name does not resolve to an IPv4 address, or the port is 65535.
pub fn broker_of(grape_dht: &str) -> Result<SocketAddr, BrokerError> {
    let dht = grape_dht
        .to_socket_addrs()
        .map_err(|e| BrokerError::Address(format!("{grape_dht}: {e}")))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| BrokerError::Address(format!("{grape_dht} has no IPv4 address")))?;
    let port = dht
        .port()
        .checked_add(1)
        .ok_or_else(|| BrokerError::Address(format!("{grape_dht}: port 65535 has no +1")))?;
    Ok(SocketAddr::new(dht.ip(), port))
}

/// Why a broker exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker address could not be worked out.
    #[error("bad broker address {0} (give the grape's DHT address HOST:PORT)")]
    Address(String),
    /// The broker did not answer in time.
    #[error("the broker at {broker} did not answer within {} ms (is a grape running there, and is UDP port {} open?)", .after.as_millis(), .broker.port())]
    Silent {
        /// The broker.
        broker: SocketAddr,
        /// How long we waited.
        after: Duration,
    },
    /// The broker refused.
    #[error("the broker refused: {message}")]
    Refused {
        /// Its reason.
        code: RefusalCode,
        /// Its words.
        message: String,
    },
    /// Neither a direct path nor the relay opened.
    #[error("no path to the worker: {0}")]
    NoPath(String),
    /// A socket error.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// The addresses a socket bound to `local` has on its host, as peers on its LAN would
/// reach it: the bound address, or for an unspecified one the address the host routes
/// toward `toward` from.
pub fn local_addrs(local: SocketAddr, toward: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let probe = std::net::UdpSocket::bind(SocketAddr::new(local.ip(), 0))
        .and_then(|s| s.connect(toward).and_then(|()| s.local_addr()));
    match probe {
        Ok(a) if !a.ip().is_unspecified() => vec![SocketAddr::new(a.ip(), local.port())],
        _ => Vec::new(),
    }
}

/// A NAT socket's diverted datagrams with a stash for those read while waiting for
/// something else.
struct Inbox {
    socket: Arc<NatSocket>,
    rx: mpsc::Receiver<Diverted>,
    stash: VecDeque<Diverted>,
}

impl Inbox {
    /// Sends `message` to `broker` and waits for the answer with the same `tx`,
    /// resending every 250 ms, until `timeout`. Returns the answer and the RTT of the
    /// exchange that got it.
    async fn ask(
        &mut self,
        broker: SocketAddr,
        message: &BrokerMessage,
        tx: u64,
        timeout: Duration,
    ) -> Result<(BrokerMessage, Duration), BrokerError> {
        let bytes = encode_broker(message);
        let started = Instant::now();
        let deadline = started + timeout;
        let mut sent_at = Instant::now();
        self.socket.send_raw(&bytes, broker).await?;
        loop {
            let resend = (sent_at + DEFAULT_BROKER_RETRY).min(deadline);
            match tokio::time::timeout_at(resend.into(), self.rx.recv()).await {
                Ok(Some((from, datagram))) => {
                    if from == broker {
                        if let Ok(Datagram::Broker(answer)) = decode(&datagram) {
                            if answer_tx(&answer) == Some(tx) {
                                return Ok((answer, sent_at.elapsed()));
                            }
                        }
                    }
                    self.stash.push_back((from, datagram));
                }
                Ok(None) => return Err(BrokerError::NoPath("socket closed".into())),
                Err(_) if Instant::now() >= deadline => {
                    return Err(BrokerError::Silent {
                        broker,
                        after: timeout,
                    })
                }
                Err(_) => {
                    sent_at = Instant::now();
                    self.socket.send_raw(&bytes, broker).await?;
                }
            }
        }
    }

    async fn next(&mut self) -> Option<Diverted> {
        match self.stash.pop_front() {
            Some(d) => Some(d),
            None => self.rx.recv().await,
        }
    }

    /// A STUN Binding exchange with `server`: our reflexive address as it saw us.
    async fn stun(
        &mut self,
        server: SocketAddr,
        timeout: Duration,
    ) -> Result<SocketAddr, BrokerError> {
        let (tx, request) =
            stun::binding_request().map_err(|e| BrokerError::NoPath(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        loop {
            self.socket.send_raw(&request, server).await?;
            let resend = (Instant::now() + DEFAULT_BROKER_RETRY).min(deadline);
            loop {
                match tokio::time::timeout_at(resend.into(), self.rx.recv()).await {
                    Ok(Some((from, datagram))) => {
                        if from == server {
                            if let Ok(addr) = stun::parse_binding_response(&datagram, &tx) {
                                return Ok(addr);
                            }
                        }
                        self.stash.push_back((from, datagram));
                    }
                    Ok(None) => return Err(BrokerError::NoPath("socket closed".into())),
                    Err(_) => break,
                }
            }
            if Instant::now() >= deadline {
                return Err(BrokerError::Silent {
                    broker: server,
                    after: timeout,
                });
            }
        }
    }
}

impl Inbox {
    /// Ping the broker, then STUN its alternate port: the RTT, the reflexive address,
    /// and whether the mapping differs per destination (endpoint-dependent).
    async fn mapping_check(
        &mut self,
        broker: SocketAddr,
        timeout: Duration,
    ) -> Result<(Duration, SocketAddr, Option<SocketAddr>), BrokerError> {
        let tx: u64 = rand::random();
        let (pong, rtt) = self
            .ask(broker, &BrokerMessage::Ping { tx }, tx, timeout)
            .await?;
        let BrokerMessage::Pong { reflexive, alt, .. } = pong else {
            return Err(BrokerError::NoPath(
                "the broker did not answer the ping".into(),
            ));
        };
        let reflexive_alt = match alt {
            Some(alt) => self
                .stun(SocketAddr::new(broker.ip(), alt.port()), timeout)
                .await
                .ok(),
            None => None,
        };
        Ok((rtt, reflexive, reflexive_alt))
    }
}

/// Opens the birthday method's sockets on `ip` and sends one punch from each to
/// `target` (docs/protocol.md §5.4); each opens its own NAT mapping toward it.
async fn birthday_sockets(
    ip: IpAddr,
    target: SocketAddr,
    nonce: &Nonce,
) -> Vec<tokio::net::UdpSocket> {
    let punch = encode_punch(nonce, false);
    let mut sockets = Vec::with_capacity(BIRTHDAY_SOCKETS);
    for _ in 0..BIRTHDAY_SOCKETS {
        match tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0)).await {
            Ok(socket) => {
                let _ = socket.send_to(&punch, target).await;
                sockets.push(socket);
            }
            Err(e) => {
                debug!(%e, "birthday socket not opened");
                break;
            }
        }
    }
    sockets
}

/// Waits until one of `sockets` receives a punch or echo carrying `nonce`; returns
/// that socket and the datagram's source.
async fn birthday_match(
    sockets: Vec<tokio::net::UdpSocket>,
    nonce: Nonce,
    until: tokio::time::Instant,
) -> Option<(tokio::net::UdpSocket, SocketAddr)> {
    let mut waiting = JoinSet::new();
    for socket in sockets {
        waiting.spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                if matches!(decode(&buf[..len]), Ok(Datagram::Punch(n) | Datagram::PunchEcho(n)) if n == nonce) {
                    return (socket, from);
                }
            }
        });
    }
    let found = tokio::time::timeout_at(until, waiting.join_next()).await;
    waiting.abort_all();
    match found {
        Ok(Some(Ok(found))) => Some(found),
        _ => None,
    }
}

/// The endpoint-independent side's birthday probes: one punch to each of
/// [`BIRTHDAY_PROBES`] random ports of `ip`, in bursts so as not to overflow buffers.
async fn birthday_probes(socket: Arc<NatSocket>, ip: IpAddr, nonce: Nonce) {
    let punch = encode_punch(&nonce, false);
    let ports = birthday_ports(&mut rand::rng(), BIRTHDAY_PROBES);
    for chunk in ports.chunks(256) {
        for port in chunk {
            let _ = socket.send_raw(&punch, SocketAddr::new(ip, *port)).await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Delay before the endpoint-independent side probes, so that the symmetric side's
/// mappings exist when the probes reach its NAT.
const BIRTHDAY_PROBE_DELAY: Duration = Duration::from_millis(30);

fn answer_tx(message: &BrokerMessage) -> Option<u64> {
    match message {
        BrokerMessage::Pong { tx, .. }
        | BrokerMessage::Registered { tx, .. }
        | BrokerMessage::Introduce { tx, .. }
        | BrokerMessage::RelayGranted { tx, .. }
        | BrokerMessage::Refused { tx, .. } => Some(*tx),
        _ => None,
    }
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------
// Worker side
// ---------------------------------------------------------------------------------------

/// Settings of a worker's broker agent.
#[derive(Debug, Clone)]
pub struct WorkerAgentConfig {
    /// The broker's address (see [`broker_of`]).
    pub broker: SocketAddr,
    /// The service key to register.
    pub key: String,
    /// Interval between registration refreshes. Default 15 s.
    pub refresh: Duration,
    /// The punch schedule run for each introduction.
    pub schedule: PunchSchedule,
}

impl WorkerAgentConfig {
    /// Defaults for `key` at `broker`.
    pub fn new(broker: SocketAddr, key: impl Into<String>) -> Self {
        Self {
            broker,
            key: key.into(),
            refresh: DEFAULT_REGISTRATION_INTERVAL,
            schedule: PunchSchedule::default(),
        }
    }
}

/// Runs a worker's broker agent on `socket` (the worker's QUIC socket) until `cancel`:
/// registers `key` and refreshes it, calls `on_registered(broker, reflexive)` after the
/// first success, punches toward each client the broker introduces, echoes punches
/// that carry a live nonce and ignores all others.
///
/// When this worker's NAT is symmetric and the client's is not, the birthday method's
/// winning socket is handed to `serve_extra`, which must serve QUIC on it (the client
/// dials that socket's mapping); without it such clients fall back to the relay.
pub async fn run_worker_agent(
    socket: Arc<NatSocket>,
    rx: mpsc::Receiver<Diverted>,
    config: WorkerAgentConfig,
    cancel: CancellationToken,
    mut on_registered: impl FnMut(SocketAddr, SocketAddr) + Send,
    serve_extra: Option<ServeExtra>,
) {
    let broker = config.broker;
    socket.trust_broker(broker);
    let local = socket
        .local()
        .map(|l| local_addrs(l, broker))
        .unwrap_or_default();
    let mut inbox = Inbox {
        socket: socket.clone(),
        rx,
        stash: VecDeque::new(),
    };
    let symmetric = match inbox.mapping_check(broker, Duration::from_secs(1)).await {
        Ok((_, reflexive, Some(alt))) => alt != reflexive,
        Ok(_) => false,
        Err(e) => {
            debug!(%e, "mapping check failed; assuming endpoint-independent");
            false
        }
    };
    if symmetric {
        info!("this worker's NAT maps endpoint-dependently (symmetric)");
    }
    let bind_ip = socket
        .local()
        .map(|l| l.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    // Nonce → whether the peer answered (punching stops then).
    let live: Arc<Mutex<HashMap<Nonce, bool>>> = Arc::default();
    let mut punchers = JoinSet::new();
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut rtt_ms = 0u32;
    let mut registered = false;
    let mut next_register = Instant::now();
    loop {
        if Instant::now() >= next_register {
            let tx: u64 = rand::random();
            let message = BrokerMessage::Register {
                tx,
                key: config.key.clone(),
                local: local.clone(),
                rtt_ms,
                symmetric,
            };
            sent.retain(|_, at| at.elapsed() < Duration::from_secs(60));
            sent.insert(tx, Instant::now());
            if let Err(e) = socket.send_raw(&encode_broker(&message), broker).await {
                debug!(%e, "registration not sent");
            }
            next_register = Instant::now()
                + if registered {
                    config.refresh
                } else {
                    DEFAULT_BROKER_RETRY * 2
                };
        }
        let datagram = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(_) = punchers.join_next(), if !punchers.is_empty() => continue,
            _ = tokio::time::sleep_until(next_register.into()) => continue,
            d = inbox.next() => match d { Some(d) => d, None => break },
        };
        let (from, bytes) = datagram;
        match decode(&bytes) {
            Ok(Datagram::Broker(message)) if from == broker => match message {
                BrokerMessage::Registered { tx, reflexive, .. } => {
                    if let Some(at) = sent.remove(&tx) {
                        rtt_ms = millis_u32(at.elapsed()).max(1);
                    }
                    if !registered {
                        registered = true;
                        next_register = Instant::now() + config.refresh;
                        info!(%broker, %reflexive, "registered with the broker");
                        on_registered(broker, reflexive);
                    }
                }
                BrokerMessage::Introduce {
                    role: Role::Punch,
                    peer_reflexive,
                    peer_local,
                    nonce,
                    delay_ms,
                    peer_symmetric,
                    ..
                } => {
                    debug!(peer = %peer_reflexive, delay_ms, peer_symmetric, "introduced: punching");
                    if let Ok(mut l) = live.lock() {
                        l.insert(nonce, false);
                    }
                    let delay = Duration::from_millis(delay_ms.into());
                    if symmetric && !peer_symmetric {
                        if let Some(serve) = serve_extra.clone() {
                            punchers.spawn(worker_birthday(
                                bind_ip,
                                peer_reflexive,
                                nonce,
                                delay,
                                serve,
                            ));
                            continue;
                        }
                    }
                    if !symmetric && peer_symmetric {
                        let socket = socket.clone();
                        punchers.spawn(async move {
                            tokio::time::sleep(delay + BIRTHDAY_PROBE_DELAY).await;
                            birthday_probes(socket, peer_reflexive.ip(), nonce).await;
                        });
                    }
                    let mut targets = vec![peer_reflexive];
                    targets.extend(peer_local.into_iter().filter(|a| *a != peer_reflexive));
                    punchers.spawn(punch(
                        socket.clone(),
                        targets,
                        nonce,
                        delay,
                        config.schedule.clone(),
                        live.clone(),
                    ));
                }
                BrokerMessage::Refused {
                    circuit, message, ..
                } => {
                    if let Some(circuit) = circuit {
                        socket.remove_circuit(circuit);
                    }
                    info!(%message, "broker notice");
                }
                other => debug!(?other, "unexpected broker message"),
            },
            Ok(Datagram::Punch(nonce)) => {
                let known = live.lock().map(|l| l.contains_key(&nonce)).unwrap_or(false);
                if known {
                    let _ = socket.send_raw(&encode_punch(&nonce, true), from).await;
                } else {
                    debug!(%from, "punch without a live nonce ignored");
                }
            }
            Ok(Datagram::PunchEcho(nonce)) => {
                if let Ok(mut l) = live.lock() {
                    if let Some(answered) = l.get_mut(&nonce) {
                        *answered = true;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => debug!(%from, %e, "ignored a datagram"),
        }
    }
    punchers.shutdown().await;
}

/// Serves QUIC on a socket other than the worker's main one (the birthday method's
/// winning socket): called with the socket and its diverted datagrams.
pub type ServeExtra = Arc<dyn Fn(Arc<NatSocket>, mpsc::Receiver<Diverted>) + Send + Sync>;

/// The symmetric worker's birthday method: punches from many sockets toward the client,
/// and serves QUIC on the one the client's probe reaches, answering it with an echo.
async fn worker_birthday(
    bind_ip: IpAddr,
    client: SocketAddr,
    nonce: Nonce,
    delay: Duration,
    serve: ServeExtra,
) {
    tokio::time::sleep(delay).await;
    let sockets = birthday_sockets(bind_ip, client, &nonce).await;
    let until = tokio::time::Instant::now() + DEFAULT_PUNCH_DEADLINE * 2;
    let Some((winner, from)) = birthday_match(sockets, nonce, until).await else {
        debug!("no birthday match");
        return;
    };
    let Ok((socket, rx)) = NatSocket::from_tokio(winner) else {
        return;
    };
    debug!(%from, local = ?socket.local(), "birthday match: serving on its socket");
    serve(socket.clone(), rx);
    let echo = encode_punch(&nonce, true);
    for _ in 0..3 {
        let _ = socket.send_raw(&echo, from).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn punch(
    socket: Arc<NatSocket>,
    targets: Vec<SocketAddr>,
    nonce: Nonce,
    delay: Duration,
    schedule: PunchSchedule,
    live: Arc<Mutex<HashMap<Nonce, bool>>>,
) {
    let start = tokio::time::Instant::now() + delay;
    let bytes = encode_punch(&nonce, false);
    for offset in schedule.offsets() {
        tokio::time::sleep_until(start + offset).await;
        if live
            .lock()
            .map(|l| l.get(&nonce) == Some(&true))
            .unwrap_or(true)
        {
            break;
        }
        for target in &targets {
            let _ = socket.send_raw(&bytes, *target).await;
        }
    }
    // Keep the nonce valid a while for late echoes, then forget it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    if let Ok(mut l) = live.lock() {
        l.remove(&nonce);
    }
}

// ---------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------

/// How a connection reached the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// To an address the worker's socket has on its own host (no NAT in front of it, or
    /// the same LAN): nothing had to be punched.
    Direct,
    /// To the worker's reflexive address, through its NAT, opened by punching.
    Punched,
    /// Through the broker's relay.
    Relayed,
}

impl PathKind {
    /// `direct`, `punched` or `relayed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Punched => "punched",
            Self::Relayed => "relayed",
        }
    }
}

/// Settings of a client's connect through a broker.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// The broker's address (see [`broker_of`]).
    pub broker: SocketAddr,
    /// The service key wanted.
    pub key: String,
    /// Time to open a direct path before asking for the relay. Default 1.5 s.
    pub punch_deadline: Duration,
    /// Skip punching and go straight to the relay (tests, or a network known to block).
    pub force_relay: bool,
    /// Deadline of each broker exchange. Default 2 s.
    pub broker_timeout: Duration,
}

impl ConnectConfig {
    /// Defaults for `key` at `broker`.
    pub fn new(broker: SocketAddr, key: impl Into<String>) -> Self {
        Self {
            broker,
            key: key.into(),
            punch_deadline: DEFAULT_PUNCH_DEADLINE,
            force_relay: false,
            broker_timeout: Duration::from_secs(2),
        }
    }
}

/// A connection to a worker made through a broker.
#[derive(Debug)]
pub struct Brokered {
    /// The QUIC connection.
    pub connection: Connection,
    /// The worker's reflexive address (what `-v` shows as the worker).
    pub worker: SocketAddr,
    /// The address quinn uses (a circuit address when relayed).
    pub remote: SocketAddr,
    /// How it got through.
    pub path: PathKind,
    /// Set to the broker's words when it closes this connection's relay circuit.
    pub closed_by_broker: watch::Receiver<Option<String>>,
    /// The endpoint the connection runs on when it is not the caller's: the birthday
    /// method's winning socket. Requests must go through this endpoint's connection.
    pub endpoint: Option<Endpoint>,
}

/// Asks the broker at `config.broker` for a worker of `config.key` and connects to it
/// from `endpoint` (which runs on `socket`): dials the worker's addresses at the
/// synchronized start, echoes its punches and dials their source, and asks for the relay
/// when nothing opened within `punch_deadline`. Consumes `rx`: a task keeps reading it
/// for the connection's life (punch echoes, relay notices).
///
/// Errors: [`BrokerError::Refused`] (with [`RefusalCode::NoWorker`] when nobody serves
/// the key), [`BrokerError::Silent`], [`BrokerError::NoPath`].
pub async fn connect_via_broker(
    endpoint: &Endpoint,
    socket: Arc<NatSocket>,
    rx: mpsc::Receiver<Diverted>,
    config: &ConnectConfig,
) -> Result<Brokered, BrokerError> {
    let broker = config.broker;
    socket.trust_broker(broker);
    let mut inbox = Inbox {
        socket: socket.clone(),
        rx,
        stash: VecDeque::new(),
    };
    let (rtt, reflexive, alt) = inbox.mapping_check(broker, config.broker_timeout).await?;
    let symmetric = matches!(alt, Some(a) if a != reflexive);
    debug!(%reflexive, ?alt, symmetric, "mapping checked");
    let local = local_addrs(socket.local()?, broker);
    let tx: u64 = rand::random();
    let connect = BrokerMessage::Connect {
        tx,
        key: config.key.clone(),
        local,
        rtt_ms: millis_u32(rtt).max(1),
        symmetric,
    };
    let (answer, _) = inbox
        .ask(broker, &connect, tx, config.broker_timeout)
        .await?;
    let (peer_reflexive, peer_local, nonce, delay_ms, peer_symmetric) = match answer {
        BrokerMessage::Introduce {
            peer_reflexive,
            peer_local,
            nonce,
            delay_ms,
            peer_symmetric,
            ..
        } => (peer_reflexive, peer_local, nonce, delay_ms, peer_symmetric),
        BrokerMessage::Refused { code, message, .. } => {
            return Err(BrokerError::Refused { code, message })
        }
        other => return Err(BrokerError::NoPath(format!("unexpected answer {other:?}"))),
    };
    debug!(worker = %peer_reflexive, ?peer_local, delay_ms, "introduced");
    let (closed_tx, closed_rx) = watch::channel(None);
    let mut found = None;
    let mut own_endpoint = None;
    // Two endpoint-dependent mappings cannot be matched by punching: relay at once.
    let hopeless = symmetric && peer_symmetric;
    if hopeless {
        debug!("both sides symmetric: straight to the relay");
    }
    if !config.force_relay && !hopeless {
        tokio::time::sleep(Duration::from_millis(delay_ms.into())).await;
        if symmetric && !peer_symmetric {
            let ip = socket.local()?.ip();
            if let Some((connection, remote, endpoint)) =
                client_birthday(ip, peer_reflexive, nonce, config.punch_deadline).await
            {
                found = Some((connection, remote));
                own_endpoint = Some(endpoint);
            }
        } else {
            if !symmetric && peer_symmetric {
                let socket = socket.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(BIRTHDAY_PROBE_DELAY).await;
                    birthday_probes(socket, peer_reflexive.ip(), nonce).await;
                });
            }
            found = punch_and_dial(
                endpoint,
                &mut inbox,
                peer_reflexive,
                &peer_local,
                nonce,
                config.punch_deadline,
            )
            .await;
        }
    }
    let (connection, remote, path) = match found {
        Some((connection, remote)) => {
            let path = if peer_local.contains(&remote) {
                PathKind::Direct
            } else {
                PathKind::Punched
            };
            (connection, remote, path)
        }
        None => {
            let tx: u64 = rand::random();
            let request = BrokerMessage::RelayRequest { tx, nonce };
            let (answer, _) = inbox
                .ask(broker, &request, tx, config.broker_timeout)
                .await?;
            let circuit = match answer {
                BrokerMessage::RelayGranted { circuit, .. } => circuit,
                BrokerMessage::Refused { code, message, .. } => {
                    return Err(BrokerError::Refused { code, message })
                }
                other => return Err(BrokerError::NoPath(format!("unexpected answer {other:?}"))),
            };
            socket.add_circuit(circuit, broker);
            let remote = circuit_addr(circuit);
            let timeout = config.punch_deadline.max(Duration::from_secs(2));
            let connection = dial_relay(endpoint, &mut inbox, broker, remote, timeout).await?;
            (connection, remote, PathKind::Relayed)
        }
    };
    tokio::spawn(client_listener(
        inbox,
        broker,
        nonce,
        closed_tx,
        connection.clone(),
    ));
    Ok(Brokered {
        connection,
        worker: peer_reflexive,
        remote,
        path,
        closed_by_broker: closed_rx,
        endpoint: own_endpoint,
    })
}

async fn dial(
    endpoint: &Endpoint,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Connection, String> {
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no handshake within {} ms", timeout.as_millis())),
    }
}

/// The symmetric client's birthday method: punches toward the worker from many sockets,
/// and dials it from the one the worker's probe reaches.
async fn client_birthday(
    ip: IpAddr,
    worker: SocketAddr,
    nonce: Nonce,
    deadline: Duration,
) -> Option<(Connection, SocketAddr, Endpoint)> {
    let until = tokio::time::Instant::now() + deadline;
    let sockets = birthday_sockets(ip, worker, &nonce).await;
    let (winner, from) = birthday_match(sockets, nonce, until).await?;
    let _ = winner.send_to(&encode_punch(&nonce, true), from).await;
    let (socket, _rx) = NatSocket::from_tokio(winner).ok()?;
    let abstract_socket: Arc<dyn quinn::AsyncUdpSocket> = socket;
    let endpoint = crate::transport::client_endpoint(
        abstract_socket,
        &crate::transport::QuicConfig::default(),
    )
    .ok()?;
    debug!(%from, "birthday match: dialing from its socket");
    let left = until.saturating_duration_since(tokio::time::Instant::now());
    let connection = dial(&endpoint, from, left.max(Duration::from_millis(500)))
        .await
        .ok()?;
    Some((connection, from, endpoint))
}

/// Dials a relay circuit, watching for the broker closing it during the handshake.
async fn dial_relay(
    endpoint: &Endpoint,
    inbox: &mut Inbox,
    broker: SocketAddr,
    remote: SocketAddr,
    timeout: Duration,
) -> Result<Connection, BrokerError> {
    let handshake = dial(endpoint, remote, timeout);
    tokio::pin!(handshake);
    loop {
        tokio::select! {
            result = &mut handshake => {
                return result.map_err(|e| BrokerError::NoPath(format!("through the relay: {e}")));
            }
            d = inbox.next() => {
                let Some((from, bytes)) = d else {
                    return Err(BrokerError::NoPath("socket closed".into()));
                };
                if from != broker {
                    continue;
                }
                if let Ok(Datagram::Broker(BrokerMessage::Refused { circuit: Some(_), code, message, .. })) = decode(&bytes) {
                    return Err(BrokerError::Refused { code, message });
                }
            }
        }
    }
}

/// Dials every candidate at once and again toward the source of each valid punch
/// (echoing it); the first handshake to finish wins.
async fn punch_and_dial(
    endpoint: &Endpoint,
    inbox: &mut Inbox,
    reflexive: SocketAddr,
    local: &[SocketAddr],
    nonce: Nonce,
    deadline: Duration,
) -> Option<(Connection, SocketAddr)> {
    let until = tokio::time::Instant::now() + deadline;
    // A raw punch leaves at once, well before the QUIC Initial is built: the sooner our
    // NAT has the mapping, the less a router that accepts WAN input can be poisoned by
    // the worker's punches (docs/protocol.md §5.4).
    let punch = encode_punch(&nonce, false);
    for addr in std::iter::once(reflexive).chain(local.iter().copied()) {
        let _ = inbox.socket.send_raw(&punch, addr).await;
    }
    let mut dials = JoinSet::new();
    let mut dialed: HashSet<SocketAddr> = HashSet::new();
    let spawn_dial = |dials: &mut JoinSet<_>, addr: SocketAddr| {
        let endpoint = endpoint.clone();
        dials.spawn(async move { (addr, dial(&endpoint, addr, deadline).await) });
    };
    for addr in std::iter::once(reflexive).chain(local.iter().copied()) {
        if !addr.ip().is_unspecified() && dialed.insert(addr) {
            spawn_dial(&mut dials, addr);
        }
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return None,
            Some(done) = dials.join_next(), if !dials.is_empty() => {
                if let Ok((addr, result)) = done {
                    match result {
                        Ok(connection) => return Some((connection, addr)),
                        Err(e) => debug!(%addr, %e, "dial failed"),
                    }
                }
            }
            d = inbox.next() => {
                let (from, bytes) = d?;
                let decoded = decode(&bytes);
                if let Ok(Datagram::Punch(n) | Datagram::PunchEcho(n)) = decoded {
                    if n == nonce {
                        if matches!(decoded, Ok(Datagram::Punch(_))) {
                            let _ = inbox.socket.send_raw(&encode_punch(&nonce, true), from).await;
                        }
                        if dialed.insert(from) {
                            debug!(%from, "punch arrived: dialing its source");
                            spawn_dial(&mut dials, from);
                        }
                    } else {
                        debug!(%from, "punch with a foreign nonce ignored");
                    }
                }
            }
        }
    }
}

/// Keeps reading the client's diverted datagrams while its connection lives: echoes
/// late punches, and reports the broker closing the relay circuit.
async fn client_listener(
    mut inbox: Inbox,
    broker: SocketAddr,
    nonce: Nonce,
    closed: watch::Sender<Option<String>>,
    connection: Connection,
) {
    loop {
        let d = tokio::select! {
            _ = connection.closed() => break,
            d = inbox.next() => d,
        };
        let Some((from, bytes)) = d else { break };
        match decode(&bytes) {
            Ok(Datagram::Punch(n)) if n == nonce => {
                let _ = inbox
                    .socket
                    .send_raw(&encode_punch(&nonce, true), from)
                    .await;
            }
            Ok(Datagram::Broker(BrokerMessage::Refused {
                circuit: Some(circuit),
                message,
                ..
            })) if from == broker => {
                warn!(%message, "relay circuit closed by the broker");
                inbox.socket.remove_circuit(circuit);
                let _ = closed.send(Some(message.clone()));
                connection.close(0u32.into(), message.as_bytes());
                break;
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Mapping check
// ---------------------------------------------------------------------------------------

/// The NAT mapping behaviour toward two destinations (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// The same public address toward every destination: punching works.
    EndpointIndependent,
    /// A new public address per destination (a "symmetric" NAT).
    EndpointDependent,
    /// Could not be told (the second address did not answer).
    Unknown,
}

impl Mapping {
    /// `endpoint-independent`, `endpoint-dependent` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndpointIndependent => "endpoint-independent",
            Self::EndpointDependent => "endpoint-dependent",
            Self::Unknown => "unknown",
        }
    }
}

/// What a mapping check found.
#[derive(Debug, Clone)]
pub struct NetReport {
    /// The local address of the socket used.
    pub local: SocketAddr,
    /// The reflexive address the broker port saw.
    pub reflexive: SocketAddr,
    /// The reflexive address the broker's alternate port saw, if it answered.
    pub reflexive_alt: Option<SocketAddr>,
    /// The mapping behaviour.
    pub mapping: Mapping,
    /// Whether the reflexive address is this host's own (no NAT on the path).
    pub public: bool,
    /// Round-trip time to the broker.
    pub rtt: Duration,
}

/// Checks the mapping of a fresh socket on `bind` toward the broker's two ports: a
/// `Ping` to the broker port, then a STUN Binding to its alternate port (told in the
/// `Pong`, at the broker's IP), and compares the two reflexive addresses.
pub async fn netcheck(
    bind: SocketAddr,
    broker: SocketAddr,
    timeout: Duration,
) -> Result<NetReport, BrokerError> {
    let (socket, rx) = NatSocket::bind(bind)?;
    // quinn's endpoint is what reads the socket; it feeds the diverted channel.
    let _endpoint = reader(&socket)?;
    let mut inbox = Inbox {
        socket: socket.clone(),
        rx,
        stash: VecDeque::new(),
    };
    let tx: u64 = rand::random();
    let (pong, rtt) = inbox
        .ask(broker, &BrokerMessage::Ping { tx }, tx, timeout)
        .await?;
    let BrokerMessage::Pong { reflexive, alt, .. } = pong else {
        return Err(BrokerError::NoPath(
            "the broker did not answer the ping".into(),
        ));
    };
    let reflexive_alt = match alt {
        Some(alt) => inbox
            .stun(SocketAddr::new(broker.ip(), alt.port()), timeout)
            .await
            .ok(),
        None => None,
    };
    let mapping = match reflexive_alt {
        Some(a) if a == reflexive => Mapping::EndpointIndependent,
        Some(_) => Mapping::EndpointDependent,
        None => Mapping::Unknown,
    };
    let local = socket.local()?;
    let own: Vec<IpAddr> = local_addrs(local, broker)
        .iter()
        .map(SocketAddr::ip)
        .collect();
    Ok(NetReport {
        local,
        reflexive,
        reflexive_alt,
        mapping,
        public: own.contains(&reflexive.ip()) && reflexive.port() == local.port(),
        rtt,
    })
}

/// Queries a standard STUN server (RFC 8489 Binding) from a fresh socket on `bind`.
pub async fn stun_query(
    bind: SocketAddr,
    server: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, BrokerError> {
    let (socket, rx) = NatSocket::bind(bind)?;
    let _endpoint = reader(&socket)?;
    let mut inbox = Inbox {
        socket,
        rx,
        stash: VecDeque::new(),
    };
    inbox.stun(server, timeout).await
}

/// A client endpoint on `socket`, whose only job is to read it.
fn reader(socket: &Arc<NatSocket>) -> Result<Endpoint, BrokerError> {
    let abstract_socket: Arc<dyn quinn::AsyncUdpSocket> = socket.clone();
    crate::transport::client_endpoint(abstract_socket, &crate::transport::QuicConfig::default())
        .map_err(|e| BrokerError::NoPath(e.to_string()))
}
