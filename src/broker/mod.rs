//! The broker service a grape hosts: the I/O driver around [`Rendezvous`].
//!
//! It owns two UDP sockets: the **broker port** (STUN Binding, broker messages, relay
//! frames) and an **alternate port** on the same IP that answers STUN Binding only, so
//! that a peer can compare the mappings its NAT gives toward two destinations
//! (RFC 4787 §4.1). One task reads both and drives the state machine's timers.
//!
//! With [`Broker::announce_in`] the broker also makes itself findable through its
//! grape's DHT node: under `nano-connect/brokers` always (workers behind NATs look for
//! brokers there), and under `nano-connect/via-broker/KEY` for every key it holds
//! registrations of (clients look up a key's brokers there), renewed every announce
//! interval (±50 %) and at once when a key gets its first registration.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

pub mod rendezvous;

use crate::discovery::keys;
use crate::discovery::link::announce_delay;
use crate::protocol::broker::{decode, encode_broker, BrokerMessage, Datagram};
use crate::protocol::stun;
use crate::transport::bind_udp;
use rendezvous::{Inbound, RelayVerdict, Rendezvous, RendezvousConfig};

/// A running broker. Dropping it does not stop it; call [`Broker::shutdown`].
#[derive(Debug)]
pub struct Broker {
    addr: SocketAddr,
    alt: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    served: watch::Receiver<BTreeSet<String>>,
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
        let (served_tx, served) = watch::channel(BTreeSet::new());
        let task = tokio::spawn(serve(
            main,
            alt,
            Rendezvous::new(config),
            served_tx,
            cancel.clone(),
        ));
        Ok(Self {
            addr: main_addr,
            alt: alt_addr,
            cancel,
            task,
            served,
        })
    }

    /// Announces this broker in `dht` every `interval` (±50 %) until the broker stops:
    /// under `nano-connect/brokers`, and under `nano-connect/via-broker/KEY` for each key
    /// with registrations (at once when a key gets its first one). `port` is the UDP port
    /// to announce (the broker's own, unless a port mapping in front says otherwise).
    pub fn announce_in(&self, dht: Arc<grape::GrapeDht>, port: u16, interval: Duration) {
        let mut served = self.served.clone();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            let mut announced: BTreeSet<String> = BTreeSet::new();
            let mut next = tokio::time::Instant::now();
            loop {
                let keys_now = served.borrow_and_update().clone();
                let renew = tokio::time::Instant::now() >= next;
                let fresh: Vec<String> = keys_now.difference(&announced).cloned().collect();
                let todo: Vec<String> = if renew {
                    std::iter::once(keys::BROKERS.to_string())
                        .chain(keys_now.iter().map(|k| keys::via_broker(k)))
                        .collect()
                } else {
                    fresh.iter().map(|k| keys::via_broker(k)).collect()
                };
                for key in todo {
                    if let Err(e) = dht.announce(&key, port).await {
                        warn!(%key, error = %e, "broker announce failed");
                    }
                }
                announced = keys_now;
                if renew {
                    next = tokio::time::Instant::now() + announce_delay(interval, rand::random());
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep_until(next) => {}
                    changed = served.changed() => if changed.is_err() { break },
                }
            }
        });
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

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn serve(
    main: Arc<UdpSocket>,
    alt: UdpSocket,
    mut state: Rendezvous,
    served: watch::Sender<BTreeSet<String>>,
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
                        let inbound = Inbound { now, unix_ms: unix_ms(), from, len };
                        let out = state.handle(&inbound, message);
                        send_all(&main, out).await;
                        served.send_if_modified(|keys| {
                            let now_served = state.served_keys();
                            let changed = *keys != now_served;
                            *keys = now_served;
                            changed
                        });
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
                served.send_if_modified(|keys| {
                    let now_served = state.served_keys();
                    let changed = *keys != now_served;
                    *keys = now_served;
                    changed
                });
            }
        }
    }
}
