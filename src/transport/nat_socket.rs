//! One UDP socket for QUIC and NAT traversal: a [`quinn::AsyncUdpSocket`] that passes
//! QUIC datagrams to quinn and diverts the others (STUN, broker messages, punches) to a
//! channel, and that carries relayed QUIC through the broker.
//!
//! ```text
//!                 ┌──────────── NatSocket (one socket2 UDP socket, 4 MiB buffers) ───┐
//!  datagram in ─► │ first byte ≥ 0x40 ─────────────────────────────► quinn          │
//!                 │ 0x31 relay frame from a known broker ─ unwrap ─► quinn, from a   │
//!                 │                                                  circuit address │
//!                 │ other < 0x40 (STUN, broker, punch) ────────────► diverted channel│
//!  quinn out ───► │ to a circuit address ─ wrap in 0x31 frame ─────► the broker      │
//!                 └──────────────────────────────────────────────────────────────────┘
//! ```
//!
//! A relay circuit appears to quinn as a peer at a *circuit address* in 240.0.0.0/8
//! (reserved, never routed, RFC 1112 §4): [`circuit_addr`] maps a circuit id to one.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::ReadBuf;
use tokio::sync::mpsc;

use crate::protocol::broker::{encode_relay, RELAY_HEADER_LEN, TAG_RELAY};

/// A datagram diverted from the QUIC socket: its source and bytes.
pub type Diverted = (SocketAddr, Vec<u8>);

/// Diverted datagrams queued before new ones are dropped (punch bursts are a few dozen).
const DIVERTED_QUEUE: usize = 1024;

/// The circuit address quinn sees for relay circuit `circuit`: 240.X.Y.Z:(0x100 | W),
/// where X.Y.Z are the top 24 bits and W the low 8 (the port is never 0).
pub fn circuit_addr(circuit: u32) -> SocketAddr {
    let ip = Ipv4Addr::from(0xF000_0000 | (circuit >> 8));
    SocketAddr::V4(SocketAddrV4::new(ip, 0x100 | (circuit & 0xff) as u16))
}

/// The circuit id of a circuit address, or `None` for any other address.
pub fn circuit_of(addr: SocketAddr) -> Option<u32> {
    match addr {
        SocketAddr::V4(v4) if v4.ip().octets()[0] == 240 && v4.port() & 0xff00 == 0x100 => {
            Some(((u32::from(*v4.ip()) & 0x00FF_FFFF) << 8) | u32::from(v4.port() & 0xff))
        }
        _ => None,
    }
}

/// The shared UDP socket. Make it with [`NatSocket::bind`], hand one `Arc` to
/// [`NatSocket::quic_endpoint`] and keep another for [`NatSocket::send_raw`].
pub struct NatSocket {
    io: tokio::net::UdpSocket,
    diverted: mpsc::Sender<Diverted>,
    /// Circuit id → the broker that relays it.
    circuits: Mutex<HashMap<u32, SocketAddr>>,
    /// Addresses whose relay frames are accepted.
    brokers: Mutex<HashSet<SocketAddr>>,
}

impl fmt::Debug for NatSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatSocket")
            .field("local", &self.io.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl NatSocket {
    /// Binds `addr` with [`crate::transport::bind_udp`] (4 MiB buffers, non-blocking) and
    /// returns the socket and the receiver of diverted datagrams. Needs a tokio runtime.
    pub fn bind(addr: SocketAddr) -> io::Result<(Arc<Self>, mpsc::Receiver<Diverted>)> {
        let std = crate::transport::bind_udp(addr)?;
        Self::from_tokio(tokio::net::UdpSocket::from_std(std)?)
    }

    /// Wraps a socket that is already bound (for example the birthday method's winning
    /// socket, whose NAT mapping is the one that got through).
    pub fn from_tokio(
        io: tokio::net::UdpSocket,
    ) -> io::Result<(Arc<Self>, mpsc::Receiver<Diverted>)> {
        let (tx, rx) = mpsc::channel(DIVERTED_QUEUE);
        Ok((
            Arc::new(Self {
                io,
                diverted: tx,
                circuits: Mutex::default(),
                brokers: Mutex::default(),
            }),
            rx,
        ))
    }

    /// The socket's local address.
    pub fn local(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Sends raw bytes (a punch, a broker message) to `to` on the shared socket.
    pub async fn send_raw(&self, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
        self.io.send_to(bytes, to).await.map(|_| ())
    }

    /// Accepts relay frames from `broker` from now on.
    pub fn trust_broker(&self, broker: SocketAddr) {
        if let Ok(mut b) = self.brokers.lock() {
            b.insert(broker);
        }
    }

    /// Routes quinn's datagrams for [`circuit_addr`]`(circuit)` through `broker`.
    pub fn add_circuit(&self, circuit: u32, broker: SocketAddr) {
        self.trust_broker(broker);
        if let Ok(mut c) = self.circuits.lock() {
            c.insert(circuit, broker);
        }
    }

    /// Forgets a circuit; quinn's datagrams to it are dropped from now on.
    pub fn remove_circuit(&self, circuit: u32) {
        if let Ok(mut c) = self.circuits.lock() {
            c.remove(&circuit);
        }
    }

    fn is_broker(&self, addr: &SocketAddr) -> bool {
        self.brokers
            .lock()
            .map(|b| b.contains(addr))
            .unwrap_or(false)
    }
}

impl AsyncUdpSocket for NatSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Poller {
            socket: self,
            fut: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if let Some(circuit) = circuit_of(transmit.destination) {
            let broker = self
                .circuits
                .lock()
                .ok()
                .and_then(|c| c.get(&circuit).copied());
            // A closed circuit loses the datagram, as a dead path would.
            let Some(broker) = broker else { return Ok(()) };
            let frame = encode_relay(circuit, transmit.contents);
            return self.io.try_send_to(&frame, broker).map(|_| ());
        }
        self.io
            .try_send_to(transmit.contents, transmit.destination)
            .map(|_| ())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(meta)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        loop {
            let mut read = ReadBuf::new(buf);
            let from = match self.io.poll_recv_from(cx, &mut read) {
                Poll::Ready(Ok(from)) => from,
                Poll::Ready(Err(e)) if is_transient(&e) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let len = read.filled().len();
            let first = read.filled().first().copied().unwrap_or(0);
            if first >= 0x40 {
                *meta = recv_meta(from, len);
                return Poll::Ready(Ok(1));
            }
            if first == TAG_RELAY && len > RELAY_HEADER_LEN && self.is_broker(&from) {
                let mut id = [0u8; 4];
                id.copy_from_slice(&read.filled()[1..RELAY_HEADER_LEN]);
                let circuit = u32::from_be_bytes(id);
                // The worker learns circuits from the frames themselves.
                if let Ok(mut c) = self.circuits.lock() {
                    c.entry(circuit).or_insert(from);
                }
                buf.copy_within(RELAY_HEADER_LEN..len, 0);
                *meta = recv_meta(circuit_addr(circuit), len - RELAY_HEADER_LEN);
                return Poll::Ready(Ok(1));
            }
            let bytes = read.filled().to_vec();
            // A full queue drops the datagram, as a full socket buffer would.
            let _ = self.diverted.try_send((from, bytes));
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        true
    }
}

/// ICMP errors (port unreachable from an earlier punch) surface as receive errors on
/// Linux; they say nothing about this socket.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
    )
}

fn recv_meta(addr: SocketAddr, len: usize) -> RecvMeta {
    RecvMeta {
        addr,
        len,
        stride: len,
        ecn: None,
        dst_ip: None,
    }
}

type Writable = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Waits for the socket to be writable again after `try_send` saw `WouldBlock`.
struct Poller {
    socket: Arc<NatSocket>,
    fut: Option<Writable>,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller").finish_non_exhaustive()
    }
}

impl UdpPoller for Poller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        if self.fut.is_none() {
            let socket = self.socket.clone();
            self.fut = Some(Box::pin(async move { socket.io.writable().await }));
        }
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = fut.as_mut().poll(cx);
        if result.is_ready() {
            self.fut = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circuit_addresses_round_trip_and_stay_apart_from_real_ones() {
        for id in [1u32, 0xff, 0x100, 0xdead_beef, u32::MAX] {
            let addr = circuit_addr(id);
            assert_eq!(circuit_of(addr), Some(id), "{addr}");
            assert_ne!(addr.port(), 0);
        }
        assert_eq!(circuit_of("127.0.0.1:256".parse().unwrap()), None);
        assert_eq!(circuit_of("240.0.0.1:80".parse().unwrap()), None);
    }
}
