//! The client's connect through a broker: introduction, punching or the birthday
//! method, and the relay as the fallback.

use crate::defaults::DEFAULT_PUNCH_DEADLINE;
use crate::protocol::broker::{decode, encode_punch, BrokerMessage, Datagram, Nonce};
use crate::transport::nat_socket::{circuit_addr, Diverted, NatSocket};
use crate::transport::tls::ANY_NODE;
use crate::traversal::*;
use quinn::{Connection, Endpoint};
use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

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
        .connect(addr, ANY_NODE)
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
