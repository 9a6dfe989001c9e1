//! Reaching one worker: directly at an address, or through a broker by hole punching,
//! the birthday method, or the broker's relay (docs/protocol.md §5). Every way ends in
//! a QUIC handshake that proves the worker's node key ([`crate::transport::tls`]): a
//! broker or host on the path can carry the connection but never answer in the
//! worker's place.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

use crate::protocol::broker::{encode_punch, padded, BrokerMessage, Nonce, RefusalCode};
use crate::protocol::identity::NodeId;
use crate::transport::nat_socket::{circuit_addr, NatSocket};
use crate::transport::tls::{peer_node_id, server_name};
use crate::traversal::{
    birthday_match, birthday_probes, birthday_sockets, local_addrs, mapping_check, millis_u32,
    BrokerError, Mux, BIRTHDAY_PROBE_DELAY,
};

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

/// A connection to a worker, and how it was made.
#[derive(Debug, Clone)]
pub struct Reached {
    /// The QUIC connection.
    pub connection: Connection,
    /// The node its handshake proved.
    pub node: NodeId,
    /// The worker's address as shown to people (its own or reflexive address).
    pub worker: SocketAddr,
    /// The address quinn uses (a circuit address when relayed).
    pub remote: SocketAddr,
    /// How it got through.
    pub path: PathKind,
    /// The broker that introduced it, if one did.
    pub broker: Option<SocketAddr>,
    /// Set to the broker's words when it closes this connection's relay circuit.
    pub closed_by_broker: Option<watch::Receiver<Option<String>>>,
    /// The endpoint the connection runs on when it is not the client's own: the birthday
    /// method's winning socket (kept alive with the connection).
    pub endpoint: Option<Endpoint>,
}

/// Why a worker could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReachError {
    /// The handshake failed or timed out (a dead address, or a host that is not the
    /// expected node: the message says which).
    #[error("{addr}: {reason}")]
    Handshake {
        /// Where it was dialed.
        addr: SocketAddr,
        /// Why (quinn's and the TLS check's words).
        reason: String,
    },
    /// The broker failed or refused.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The address dialed proved another node than the one expected: whoever gave that
    /// address (a broker's introduction, a cached hint) stands in for the worker or is
    /// out of date.
    #[error("{addr} proved node id {proved}, not the expected {expected}")]
    Impostor {
        /// Where it was dialed.
        addr: SocketAddr,
        /// The node its handshake proved.
        proved: NodeId,
        /// The node expected.
        expected: NodeId,
    },
    /// The broker introduced a different node from the one asked for.
    #[error("the broker at {broker} introduced node {got} instead of {want}")]
    WrongNode {
        /// The broker.
        broker: SocketAddr,
        /// Whom it introduced.
        got: NodeId,
        /// Whom the client asked for.
        want: NodeId,
    },
}

/// Dials `addr` and checks that the handshake proves `node` (any node when `None`).
pub async fn dial(
    endpoint: &Endpoint,
    addr: SocketAddr,
    node: Option<&NodeId>,
    timeout: Duration,
) -> Result<(Connection, NodeId), ReachError> {
    let failed = |reason: String| ReachError::Handshake { addr, reason };
    // The handshake takes any Ed25519 node key and the check against `node` is made
    // here, before anything is sent on the connection: so the error can name the node
    // that answered, and the node id sought never travels in the clear (a TLS server
    // name is not encrypted in the ClientHello).
    let connecting = endpoint
        .connect(addr, &server_name(None))
        .map_err(|e| failed(e.to_string()))?;
    let connection = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(failed(e.to_string())),
        Err(_) => {
            return Err(failed(format!(
                "no handshake within {} ms",
                timeout.as_millis()
            )))
        }
    };
    let proved =
        peer_node_id(&connection).ok_or_else(|| failed("the peer proved no node key".into()))?;
    if let Some(expected) = node {
        if *expected != proved {
            connection.close(0u32.into(), b"wrong node");
            return Err(ReachError::Impostor {
                addr,
                proved,
                expected: *expected,
            });
        }
    }
    Ok((connection, proved))
}

/// Settings of a connect through a broker.
#[derive(Debug, Clone)]
pub struct BrokerConnect {
    /// The broker's UDP address.
    pub broker: SocketAddr,
    /// The service key.
    pub key: String,
    /// The worker wanted (from a `List`, a record in the DHT, or the cache); `None`: any
    /// worker the broker picks, whose signed record then comes with the introduction.
    pub node: Option<NodeId>,
    /// Time to open a direct path before asking for the relay.
    pub punch_deadline: Duration,
    /// Skip punching and go straight to the relay (tests, or a network known to block).
    pub force_relay: bool,
    /// Deadline of each broker exchange.
    pub broker_timeout: Duration,
    /// Wall-clock time now, ms since the Unix epoch (to check an introduced record).
    pub unix_ms: u64,
}

/// Asks the broker for an introduction to the worker and connects to it from
/// `endpoint` (which runs on `mux`'s socket): dials the worker's addresses at the
/// synchronized start, dials the source of each punch carrying the nonce, runs the
/// birthday method when exactly one side is symmetric, and asks for the relay when
/// nothing opened within the punch deadline. Every dial names the node, so only that
/// node can answer.
///
/// Errors: [`ReachError::Broker`] (with [`RefusalCode::NoWorker`] when the broker holds
/// no such worker), [`ReachError::WrongNode`], [`ReachError::Handshake`].
pub async fn through_broker(
    mux: &Mux,
    endpoint: &Endpoint,
    config: &BrokerConnect,
) -> Result<Reached, ReachError> {
    let broker = config.broker;
    let socket = mux.socket().clone();
    socket.trust_broker(broker);
    let check = mapping_check(mux, broker, config.broker_timeout).await?;
    let symmetric = check.symmetric();
    debug!(reflexive = %check.reflexive, symmetric, "mapping checked");
    let local = local_addrs(socket.local().map_err(BrokerError::Io)?, broker);
    let tx: u64 = rand::random();
    let connect = padded(BrokerMessage::Connect {
        tx,
        key: config.key.clone(),
        node: config.node.map(|n| *n.as_bytes()),
        local,
        rtt_ms: millis_u32(check.rtt).max(1),
        symmetric,
        pad: Vec::new(),
    });
    let (answer, _) = mux.ask(broker, &connect, tx, config.broker_timeout).await?;
    let BrokerMessage::Introduce {
        peer_reflexive,
        peer_local,
        nonce,
        delay_ms,
        peer_symmetric,
        record: introduced,
        ..
    } = answer
    else {
        return Err(match answer {
            BrokerMessage::Refused { code, message, .. } => {
                BrokerError::Refused { code, message }.into()
            }
            other => BrokerError::NoPath(format!("unexpected answer {other:?}")).into(),
        });
    };
    // Who the worker must prove to be: the one asked for, else the one the broker's
    // introduction names, with a signed record the broker cannot have made up.
    let node = match (config.node, introduced) {
        (Some(want), Some(wire)) if wire.k != *want.as_bytes() => {
            let got = NodeId::from_bytes(wire.k).map_err(|e| BrokerError::NoPath(e.to_string()))?;
            return Err(ReachError::WrongNode { broker, got, want });
        }
        (Some(want), _) => want,
        (None, Some(wire)) => {
            wire.verify(&config.key, None, config.unix_ms)
                .map_err(|e| BrokerError::NoPath(format!("the introduced worker's record: {e}")))?
                .node
        }
        (None, None) => {
            return Err(BrokerError::NoPath(
                "the broker introduced a worker without its record".into(),
            )
            .into())
        }
    };
    debug!(worker = %peer_reflexive, %node, ?peer_local, delay_ms, "introduced");
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
            let ip = socket.local().map_err(BrokerError::Io)?.ip();
            if let Some((connection, remote, endpoint)) =
                client_birthday(ip, peer_reflexive, nonce, &node, config.punch_deadline).await
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
                mux,
                endpoint,
                peer_reflexive,
                &peer_local,
                nonce,
                &node,
                config.punch_deadline,
            )
            .await?;
        }
    }
    let (connection, remote, path, closed) = match found {
        Some((connection, remote)) => {
            let path = if peer_local.contains(&remote) {
                PathKind::Direct
            } else {
                PathKind::Punched
            };
            (connection, remote, path, None)
        }
        None => {
            let tx: u64 = rand::random();
            let request = BrokerMessage::RelayRequest { tx, nonce };
            let (answer, _) = mux.ask(broker, &request, tx, config.broker_timeout).await?;
            let circuit = match answer {
                BrokerMessage::RelayGranted { circuit, .. } => circuit,
                BrokerMessage::Refused { code, message, .. } => {
                    return Err(BrokerError::Refused { code, message }.into())
                }
                other => {
                    return Err(BrokerError::NoPath(format!("unexpected answer {other:?}")).into())
                }
            };
            let closed = mux.watch_circuit(circuit);
            socket.add_circuit(circuit, broker);
            let remote = circuit_addr(circuit);
            let timeout = config.punch_deadline.max(Duration::from_secs(2));
            let connection = dial_relay(endpoint, remote, &node, timeout, closed.clone()).await?;
            (connection, remote, PathKind::Relayed, Some(closed))
        }
    };
    Ok(Reached {
        connection,
        node,
        // The address dialed when it was the worker's own (its LAN address), else the
        // reflexive one its NAT opened (a relay circuit's address means nothing to people).
        worker: if path == PathKind::Direct {
            remote
        } else {
            peer_reflexive
        },
        remote,
        path,
        broker: Some(broker),
        closed_by_broker: closed,
        endpoint: own_endpoint,
    })
}

/// The symmetric client's birthday method: punches toward the worker from many sockets,
/// and dials it from the one the worker's probe reaches.
async fn client_birthday(
    ip: IpAddr,
    worker: SocketAddr,
    nonce: Nonce,
    node: &NodeId,
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
    let (connection, _) = dial(
        &endpoint,
        from,
        Some(node),
        left.max(Duration::from_millis(500)),
    )
    .await
    .ok()?;
    Some((connection, from, endpoint))
}

/// Dials a relay circuit, giving up when the broker closes it during the handshake.
async fn dial_relay(
    endpoint: &Endpoint,
    remote: SocketAddr,
    node: &NodeId,
    timeout: Duration,
    mut closed: watch::Receiver<Option<String>>,
) -> Result<Connection, ReachError> {
    tokio::select! {
        result = dial(endpoint, remote, Some(node), timeout) => {
            result.map(|(c, _)| c).map_err(|e| BrokerError::NoPath(format!("through the relay: {e}")).into())
        }
        message = closed.wait_for(Option::is_some) => {
            let message = message.ok().and_then(|m| m.clone()).unwrap_or_default();
            Err(BrokerError::Refused { code: RefusalCode::RelayFull, message }.into())
        }
    }
}

/// Dials every candidate address at once and again toward the source of each punch
/// with the nonce (the mux echoes it); the first handshake to finish wins. `Ok(None)`
/// when none did within `deadline` (the caller asks for the relay); an address that
/// proves another node ends it at once ([`ReachError::Impostor`]: the broker that
/// introduced it is not to be used, not even for its relay).
async fn punch_and_dial(
    mux: &Mux,
    endpoint: &Endpoint,
    reflexive: SocketAddr,
    local: &[SocketAddr],
    nonce: Nonce,
    node: &NodeId,
    deadline: Duration,
) -> Result<Option<(Connection, SocketAddr)>, ReachError> {
    let until = tokio::time::Instant::now() + deadline;
    let mut watch = mux.watch_punches(nonce);
    // A raw punch leaves at once, well before the QUIC Initial is built: the sooner our
    // NAT has the mapping, the less a router that accepts WAN input can be poisoned by
    // the worker's punches (docs/protocol.md §5.4).
    let punch = encode_punch(&nonce, false);
    for addr in std::iter::once(reflexive).chain(local.iter().copied()) {
        let _ = mux.socket().send_raw(&punch, addr).await;
    }
    let mut dials = JoinSet::new();
    let mut dialed: HashSet<SocketAddr> = HashSet::new();
    let spawn_dial = |dials: &mut JoinSet<_>, addr: SocketAddr| {
        let endpoint = endpoint.clone();
        let node = *node;
        dials.spawn(async move { (addr, dial(&endpoint, addr, Some(&node), deadline).await) });
    };
    for addr in std::iter::once(reflexive).chain(local.iter().copied()) {
        if !addr.ip().is_unspecified() && dialed.insert(addr) {
            spawn_dial(&mut dials, addr);
        }
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return Ok(None),
            Some(done) = dials.join_next(), if !dials.is_empty() => {
                if let Ok((addr, result)) = done {
                    match result {
                        Ok((connection, _)) => return Ok(Some((connection, addr))),
                        Err(e @ ReachError::Impostor { .. }) => return Err(e),
                        Err(e) => debug!(%addr, %e, "dial failed"),
                    }
                }
            }
            event = watch.events.recv() => {
                let Some((from, _echo)) = event else { return Ok(None) };
                if dialed.insert(from) {
                    debug!(%from, "punch arrived: dialing its source");
                    spawn_dial(&mut dials, from);
                }
            }
        }
    }
}
