//! One reader for a [`NatSocket`]'s diverted datagrams, shared by everything that uses
//! the socket at once: broker exchanges, STUN queries, punch sessions, relay circuits.
//!
//! ```text
//!  NatSocket ─ diverted ─► Mux task ─┬─ broker answer (from, tx) ──► the ask() waiting for it
//!  (non-QUIC datagrams)              ├─ STUN response (txn id) ─────► the stun() waiting for it
//!                                    ├─ punch / echo (nonce) ───────► the session watching it
//!                                    │     (a punch is echoed at once, docs/protocol.md §5.4)
//!                                    ├─ Refused{circuit} from broker ► the circuit's watcher
//!                                    └─ everything else ────────────► unsolicited (the owner:
//!                                          a worker's presence reads pushes and List requests)
//! ```
//!
//! A client reaching several workers at once (the gateway) and a worker answering
//! introductions while it refreshes its registrations share one socket this way, so the
//! address each broker sees stays the one QUIC uses. The task ends when the last [`Mux`]
//! handle is dropped or the socket closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::trace;

use super::BrokerError;
use crate::defaults::DEFAULT_BROKER_RETRY;
use crate::protocol::broker::{
    decode, encode_broker, encode_punch, BrokerMessage, Datagram, Nonce,
};
use crate::protocol::stun;
use crate::transport::nat_socket::{Diverted, NatSocket};

/// Punch-related datagrams a session hears: the source and whether it was an echo.
pub type PunchEvent = (SocketAddr, bool);

/// Unsolicited datagrams kept for the owner before new ones are dropped.
const UNSOLICITED_QUEUE: usize = 256;

/// Punch events kept per session before new ones are dropped.
const PUNCH_QUEUE: usize = 64;

type Pending = HashMap<(SocketAddr, u64), oneshot::Sender<BrokerMessage>>;
type StunPending =
    HashMap<[u8; stun::TRANSACTION_ID_LEN], (SocketAddr, oneshot::Sender<SocketAddr>)>;

#[derive(Default)]
struct Tables {
    pending: Mutex<Pending>,
    stun: Mutex<StunPending>,
    nonces: Mutex<HashMap<Nonce, mpsc::Sender<PunchEvent>>>,
    circuits: Mutex<HashMap<u32, watch::Sender<Option<String>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Inner {
    socket: Arc<NatSocket>,
    tables: Arc<Tables>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A handle on the demultiplexer of one NAT socket; clones share it.
#[derive(Clone)]
pub struct Mux {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux")
            .field("socket", &self.inner.socket)
            .finish_non_exhaustive()
    }
}

/// Stops watching a nonce when dropped.
#[derive(Debug)]
pub struct PunchWatch {
    nonce: Nonce,
    tables: Weak<Tables>,
    /// The punch events for the nonce.
    pub events: mpsc::Receiver<PunchEvent>,
}

impl Drop for PunchWatch {
    fn drop(&mut self) {
        if let Some(tables) = self.tables.upgrade() {
            lock(&tables.nonces).remove(&self.nonce);
        }
    }
}

impl Mux {
    /// Starts reading `diverted` (the receiver [`NatSocket::bind`] returned) for `socket`.
    /// Returns the handle and the receiver of what nobody asked for. Needs a tokio runtime.
    pub fn start(
        socket: Arc<NatSocket>,
        diverted: mpsc::Receiver<Diverted>,
    ) -> (Self, mpsc::Receiver<Diverted>) {
        let tables = Arc::new(Tables::default());
        let stop = CancellationToken::new();
        let (unsolicited_tx, unsolicited) = mpsc::channel(UNSOLICITED_QUEUE);
        tokio::spawn(run(
            Arc::downgrade(&socket),
            diverted,
            tables.clone(),
            unsolicited_tx,
            stop.clone(),
        ));
        (
            Self {
                inner: Arc::new(Inner {
                    socket,
                    tables,
                    stop,
                }),
            },
            unsolicited,
        )
    }

    /// The socket.
    pub fn socket(&self) -> &Arc<NatSocket> {
        &self.inner.socket
    }

    /// Sends `message` to `to` and waits for the answer with the same `tx` from that
    /// address, resending every 250 ms until `timeout`. Returns the answer and the
    /// round-trip time of the exchange that got it.
    ///
    /// Errors: [`BrokerError::Silent`] after `timeout`, [`BrokerError::Io`] when the
    /// socket cannot send.
    pub async fn ask(
        &self,
        to: SocketAddr,
        message: &BrokerMessage,
        tx: u64,
        timeout: Duration,
    ) -> Result<(BrokerMessage, Duration), BrokerError> {
        let bytes = encode_broker(message);
        let (answer_tx, mut answer) = oneshot::channel();
        lock(&self.inner.tables.pending).insert((to, tx), answer_tx);
        let _forget = Forget(|| {
            lock(&self.inner.tables.pending).remove(&(to, tx));
        });
        let deadline = Instant::now() + timeout;
        loop {
            let sent_at = Instant::now();
            self.inner.socket.send_raw(&bytes, to).await?;
            let resend = (sent_at + DEFAULT_BROKER_RETRY).min(deadline);
            match tokio::time::timeout_at(resend.into(), &mut answer).await {
                Ok(Ok(message)) => return Ok((message, sent_at.elapsed())),
                Ok(Err(_)) => return Err(BrokerError::NoPath("socket closed".into())),
                Err(_) if Instant::now() >= deadline => {
                    return Err(BrokerError::Silent {
                        broker: to,
                        after: timeout,
                    })
                }
                Err(_) => {}
            }
        }
    }

    /// A STUN Binding exchange with `server` (RFC 8489 §3): our reflexive address as it
    /// saw us. Resends every 250 ms until `timeout` ([`BrokerError::Silent`]).
    pub async fn stun(
        &self,
        server: SocketAddr,
        timeout: Duration,
    ) -> Result<SocketAddr, BrokerError> {
        let (txid, request) =
            stun::binding_request().map_err(|e| BrokerError::NoPath(e.to_string()))?;
        let (found_tx, mut found) = oneshot::channel();
        lock(&self.inner.tables.stun).insert(txid, (server, found_tx));
        let _forget = Forget(|| {
            lock(&self.inner.tables.stun).remove(&txid);
        });
        let deadline = Instant::now() + timeout;
        loop {
            self.inner.socket.send_raw(&request, server).await?;
            let resend = (Instant::now() + DEFAULT_BROKER_RETRY).min(deadline);
            match tokio::time::timeout_at(resend.into(), &mut found).await {
                Ok(Ok(addr)) => return Ok(addr),
                Ok(Err(_)) => return Err(BrokerError::NoPath("socket closed".into())),
                Err(_) if Instant::now() >= deadline => {
                    return Err(BrokerError::Silent {
                        broker: server,
                        after: timeout,
                    })
                }
                Err(_) => {}
            }
        }
    }

    /// Watches punches and echoes carrying `nonce` until the watch is dropped. Punches
    /// with it are echoed at once from this socket (docs/protocol.md §5.4); punches with
    /// any other nonce are ignored.
    pub fn watch_punches(&self, nonce: Nonce) -> PunchWatch {
        let (tx, events) = mpsc::channel(PUNCH_QUEUE);
        lock(&self.inner.tables.nonces).insert(nonce, tx);
        PunchWatch {
            nonce,
            tables: Arc::downgrade(&self.inner.tables),
            events,
        }
    }

    /// Watches relay circuit `circuit`: the receiver gets the broker's words when the
    /// broker closes it (a `Refused` naming the circuit).
    pub fn watch_circuit(&self, circuit: u32) -> watch::Receiver<Option<String>> {
        let (tx, rx) = watch::channel(None);
        lock(&self.inner.tables.circuits).insert(circuit, tx);
        rx
    }
}

/// Runs a closure on drop (forgets a pending entry however its future ends).
struct Forget<F: FnMut()>(F);

impl<F: FnMut()> Drop for Forget<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// The transaction id of a broker answer, if the message is one.
pub(crate) fn answer_tx(message: &BrokerMessage) -> Option<u64> {
    match message {
        BrokerMessage::Pong { tx, .. }
        | BrokerMessage::Registered { tx, .. }
        | BrokerMessage::Introduce { tx, .. }
        | BrokerMessage::RelayGranted { tx, .. }
        | BrokerMessage::Listed { tx, .. }
        | BrokerMessage::Refused { tx, .. } => Some(*tx),
        _ => None,
    }
}

async fn run(
    socket: Weak<NatSocket>,
    mut diverted: mpsc::Receiver<Diverted>,
    tables: Arc<Tables>,
    unsolicited: mpsc::Sender<Diverted>,
    stop: CancellationToken,
) {
    loop {
        let (from, bytes) = tokio::select! {
            _ = stop.cancelled() => break,
            d = diverted.recv() => match d { Some(d) => d, None => break },
        };
        let decoded = decode(&bytes);
        match &decoded {
            Ok(Datagram::Broker(message)) => {
                if let Some(tx) = answer_tx(message) {
                    if let Some(waiter) = lock(&tables.pending).remove(&(from, tx)) {
                        let _ = waiter.send(message.clone());
                        continue;
                    }
                }
                if let BrokerMessage::Refused {
                    circuit: Some(circuit),
                    message: words,
                    ..
                } = message
                {
                    if let Some(watcher) = lock(&tables.circuits).remove(circuit) {
                        let _ = watcher.send(Some(words.clone()));
                        continue;
                    }
                }
            }
            Ok(Datagram::Stun(response)) => {
                if let Some(txid) = stun::transaction_id(response) {
                    let waiter = {
                        let mut pending = lock(&tables.stun);
                        match pending.get(&txid) {
                            Some((server, _)) if *server == from => pending.remove(&txid),
                            _ => None,
                        }
                    };
                    if let Some((_, waiter)) = waiter {
                        if let Ok(addr) = stun::parse_binding_response(response, &txid) {
                            let _ = waiter.send(addr);
                        }
                        continue;
                    }
                }
            }
            Ok(Datagram::Punch(nonce) | Datagram::PunchEcho(nonce)) => {
                let echo = matches!(decoded, Ok(Datagram::PunchEcho(_)));
                let watcher = lock(&tables.nonces).get(nonce).cloned();
                match watcher {
                    Some(watcher) => {
                        if !echo {
                            if let Some(socket) = socket.upgrade() {
                                let _ = socket.send_raw(&encode_punch(nonce, true), from).await;
                            }
                        }
                        let _ = watcher.try_send((from, echo));
                    }
                    None => trace!(%from, "punch with a nonce nobody waits for: ignored"),
                }
                continue;
            }
            _ => {}
        }
        // A full queue drops the datagram, as a full socket buffer would.
        let _ = unsolicited.try_send((from, bytes));
    }
}
