//! The worker's broker agent: registration with keep-alive, and punching toward the
//! clients the broker introduces.

use crate::defaults::{
    DEFAULT_BROKER_RETRY, DEFAULT_PUNCH_DEADLINE, DEFAULT_REGISTRATION_INTERVAL,
};
use crate::protocol::broker::{
    decode, encode_broker, encode_punch, BrokerMessage, Datagram, Nonce, Role,
};
use crate::protocol::punch::PunchSchedule;
use crate::transport::nat_socket::{Diverted, NatSocket};
use crate::traversal::*;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

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
