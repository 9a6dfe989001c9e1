//! NAT traversal as both peers do it, on a [`NatSocket`]: what the worker's presence
//! ([`crate::worker`]) and the client's route ([`crate::route`]) share. Broker discovery,
//! request/answer exchanges with resends, the mapping check behind `netcheck`
//! ([`mapping`]), and the birthday method's sockets and probes.

pub mod mapping;

pub use mapping::{netcheck, stun_query, Mapping, NetReport};

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::Endpoint;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::debug;

use crate::defaults::DEFAULT_BROKER_RETRY;
use crate::protocol::broker::{
    decode, encode_broker, encode_punch, BrokerMessage, Datagram, Nonce, RefusalCode,
};
use crate::protocol::punch::{birthday_ports, BIRTHDAY_PROBES, BIRTHDAY_SOCKETS};
use crate::protocol::stun;
use crate::transport::nat_socket::{Diverted, NatSocket};

/// The UDP port of a grape's broker, by convention, from the grape's DHT port: DHT port
/// + 10000, or − 10000 when that would pass 65535 (docs/protocol.md §5.1).
///
/// Grenache runs grapes on consecutive DHT ports (20001, 20002, ...), so "+ 1" would put
/// one grape's broker on the next grape's DHT port. With + 10000 the broker of
/// `--dp 20001` listens on UDP 30001, the number of the grape's HTTP API (TCP) in
/// Grenache's layout, which does not collide since one is UDP and the other TCP.
pub fn broker_port(dht_port: u16) -> u16 {
    match dht_port.checked_add(BROKER_PORT_OFFSET) {
        Some(port) => port,
        None => dht_port - BROKER_PORT_OFFSET,
    }
}

/// Distance between a grape's DHT port and its broker's port (see [`broker_port`]).
pub const BROKER_PORT_OFFSET: u16 = 10_000;

/// Finds the broker of a grape from the grape's DHT address `HOST:PORT`: by convention
/// the broker listens on [`broker_port`] of the DHT port at the same host
/// (docs/protocol.md §5.1).
///
/// Errors: the name does not resolve to an IPv4 address.
pub fn broker_of(grape_dht: &str) -> Result<SocketAddr, BrokerError> {
    let dht = grape_dht
        .to_socket_addrs()
        .map_err(|e| BrokerError::Address(format!("{grape_dht}: {e}")))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| BrokerError::Address(format!("{grape_dht} has no IPv4 address")))?;
    Ok(SocketAddr::new(dht.ip(), broker_port(dht.port())))
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
pub(crate) struct Inbox {
    pub(crate) socket: Arc<NatSocket>,
    pub(crate) rx: mpsc::Receiver<Diverted>,
    pub(crate) stash: VecDeque<Diverted>,
}

impl Inbox {
    /// Sends `message` to `broker` and waits for the answer with the same `tx`,
    /// resending every 250 ms, until `timeout`. Returns the answer and the RTT of the
    /// exchange that got it.
    pub(crate) async fn ask(
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

    pub(crate) async fn next(&mut self) -> Option<Diverted> {
        match self.stash.pop_front() {
            Some(d) => Some(d),
            None => self.rx.recv().await,
        }
    }

    /// A STUN Binding exchange with `server`: our reflexive address as it saw us.
    pub(crate) async fn stun(
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
    pub(crate) async fn mapping_check(
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
pub(crate) async fn birthday_sockets(
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
pub(crate) async fn birthday_match(
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
pub(crate) async fn birthday_probes(socket: Arc<NatSocket>, ip: IpAddr, nonce: Nonce) {
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
pub(crate) const BIRTHDAY_PROBE_DELAY: Duration = Duration::from_millis(30);

pub(crate) fn answer_tx(message: &BrokerMessage) -> Option<u64> {
    match message {
        BrokerMessage::Pong { tx, .. }
        | BrokerMessage::Registered { tx, .. }
        | BrokerMessage::Introduce { tx, .. }
        | BrokerMessage::RelayGranted { tx, .. }
        | BrokerMessage::Refused { tx, .. } => Some(*tx),
        _ => None,
    }
}

pub(crate) fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// A client endpoint on `socket`, whose only job is to read it.
pub(crate) fn reader(socket: &Arc<NatSocket>) -> Result<Endpoint, BrokerError> {
    let abstract_socket: Arc<dyn quinn::AsyncUdpSocket> = socket.clone();
    crate::transport::client_endpoint(abstract_socket, &crate::transport::QuicConfig::default())
        .map_err(|e| BrokerError::NoPath(e.to_string()))
}

#[cfg(test)]
mod broker_port_tests {
    use super::*;

    #[test]
    fn broker_port_skips_grenache_s_consecutive_dht_ports() {
        assert_eq!(broker_port(20001), 30001);
        assert_eq!(broker_port(20002), 30002);
        assert_eq!(broker_port(55535), 65535);
        assert_eq!(broker_port(55536), 45536);
        assert_eq!(broker_port(65535), 55535);
        assert_eq!(broker_of("127.0.0.1:20001").unwrap().port(), 30001);
    }
}
