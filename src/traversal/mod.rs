//! NAT traversal as both peers do it, on a [`NatSocket`]: what the worker's presence
//! ([`crate::worker`]) and the client's route ([`crate::route`]) share, below both.
//!
//! - [`mux`]: one reader of a socket's non-QUIC datagrams for every exchange at once.
//! - [`mapping`]: the mapping check (RFC 4787 §4.1) behind `netcheck` and behind a
//!   worker's choice between announcing itself and registering with brokers.
//! - this file: where a grape's broker listens, the broker errors, the socket's own
//!   addresses, and the birthday method's sockets and probes (docs/protocol.md §5.4).

pub mod mapping;
pub mod mux;

pub use mapping::{mapping_check, netcheck, stun_query, Mapping, MappingCheck, NetReport};
pub use mux::{Mux, PunchWatch};

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::debug;

use crate::protocol::broker::{decode, encode_punch, Datagram, Nonce, RefusalCode};
use crate::protocol::punch::{birthday_ports, BIRTHDAY_PROBES, BIRTHDAY_SOCKETS};
use crate::transport::nat_socket::NatSocket;

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

/// A duration in whole milliseconds, saturated to `u32`.
pub(crate) fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// A client endpoint on `socket` whose only job is to read it (feeding its diverted
/// datagrams to a [`Mux`]), for tools that speak to brokers without QUIC.
pub(crate) fn reader(socket: &Arc<NatSocket>) -> Result<quinn::Endpoint, BrokerError> {
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
