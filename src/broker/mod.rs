//! The broker service a grape hosts: the I/O driver around [`Rendezvous`].
//!
//! It owns two UDP sockets: the **broker port** (STUN Binding, broker messages, relay
//! frames) and an **alternate port** on the same IP that answers STUN Binding only, so
//! that a peer can compare the mappings its NAT gives toward two destinations
//! (RFC 4787 §4.1). One task reads both and drives the state machine's timers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

pub mod rendezvous;

use crate::protocol::broker::{decode, encode_broker, BrokerMessage, Datagram};
use crate::protocol::stun;
use crate::transport::bind_udp;
use rendezvous::{RelayVerdict, Rendezvous, RendezvousConfig};

/// A running broker. Dropping it does not stop it; call [`Broker::shutdown`].
#[derive(Debug)]
pub struct Broker {
    addr: SocketAddr,
    alt: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Broker {
    /// Binds the broker port `addr` (port 0 = any) and an alternate STUN port on the same
    /// IP, and serves. `config.alt` is filled in with the alternate port.
    ///
    /// Errors: either bind (address in use, not permitted).
    pub fn bind(addr: SocketAddr, mut config: RendezvousConfig) -> std::io::Result<Self> {
        let main = Arc::new(UdpSocket::from_std(bind_udp(addr)?)?);
        let alt = UdpSocket::from_std(bind_udp(SocketAddr::new(addr.ip(), 0))?)?;
        let main_addr = main.local_addr()?;
        let alt_addr = alt.local_addr()?;
        config.alt = Some(alt_addr);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(main, alt, Rendezvous::new(config), cancel.clone()));
        Ok(Self {
            addr: main_addr,
            alt: alt_addr,
            cancel,
            task,
        })
    }

    /// The broker port's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The alternate STUN port's address.
    pub fn alt_addr(&self) -> SocketAddr {
        self.alt
    }

    /// Stops serving and waits for the task to end.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn send_all(socket: &UdpSocket, out: Vec<(SocketAddr, BrokerMessage)>) {
    for (to, message) in out {
        trace!(%to, ?message, "broker sends");
        if let Err(e) = socket.send_to(&encode_broker(&message), to).await {
            debug!(%to, %e, "broker send failed");
        }
    }
}

async fn serve(
    main: Arc<UdpSocket>,
    alt: UdpSocket,
    mut state: Rendezvous,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; 65536];
    let mut alt_buf = vec![0u8; 2048];
    loop {
        let wake = state.poll_timeout();
        let timer = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            received = main.recv_from(&mut buf) => {
                let Ok((len, from)) = received else { continue };
                let now = Instant::now();
                match decode(&buf[..len]) {
                    Ok(Datagram::Stun(request)) => {
                        if let Some(response) = stun::respond(request, from) {
                            let _ = main.send_to(&response, from).await;
                        }
                    }
                    Ok(Datagram::Broker(message)) => {
                        trace!(%from, ?message, "broker receives");
                        let out = state.handle(now, from, message);
                        send_all(&main, out).await;
                    }
                    Ok(Datagram::Relay { circuit, .. }) => {
                        match state.handle_relay(now, from, circuit, len) {
                            RelayVerdict::Forward(to) => {
                                let _ = main.send_to(&buf[..len], to).await;
                            }
                            RelayVerdict::Close(out) => send_all(&main, out).await,
                            RelayVerdict::Drop => {}
                        }
                    }
                    Ok(Datagram::Punch(_) | Datagram::PunchEcho(_)) => {}
                    Err(e) => debug!(%from, %e, len, "broker ignores a datagram"),
                }
            }
            received = alt.recv_from(&mut alt_buf) => {
                let Ok((len, from)) = received else { continue };
                if let Some(response) = stun::respond(&alt_buf[..len], from) {
                    let _ = alt.send_to(&response, from).await;
                }
            }
            _ = timer => {
                let out = state.handle_timeout(Instant::now());
                send_all(&main, out).await;
            }
        }
    }
}
