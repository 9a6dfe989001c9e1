//! The worker's half of hole punching (docs/protocol.md §5.4): after a broker's
//! `Introduce`, send punches toward the client on the bounded schedule until its echo
//! arrives, or run the birthday method when this side's NAT is symmetric.
//!
//! QUIC has no simultaneous open, so the worker never dials: its punches only open its
//! NAT's mapping toward the client, whose QUIC Initial then gets in. The [`Mux`] echoes
//! the client's punches with the same nonce at once; punches with any other nonce are
//! ignored, so a stranger cannot make the worker punch or open anything.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::debug;

use crate::defaults::DEFAULT_PUNCH_DEADLINE;
use crate::protocol::broker::{encode_punch, Nonce};
use crate::protocol::punch::PunchSchedule;
use crate::transport::nat_socket::{Diverted, NatSocket};
use crate::traversal::{
    birthday_match, birthday_probes, birthday_sockets, Mux, BIRTHDAY_PROBE_DELAY,
};

/// Serves QUIC on a socket other than the worker's main one (the birthday method's
/// winning socket): called with the socket and its diverted datagrams.
pub type ServeExtra = Arc<dyn Fn(Arc<NatSocket>, mpsc::Receiver<Diverted>) + Send + Sync>;

/// One introduction the worker answers.
#[derive(Debug, Clone)]
pub struct Introduction {
    /// The client's reflexive address.
    pub peer_reflexive: SocketAddr,
    /// The client's local addresses.
    pub peer_local: Vec<SocketAddr>,
    /// The introduction's nonce.
    pub nonce: Nonce,
    /// Wait before the first punch (the synchronized start).
    pub delay: Duration,
    /// Whether the client's NAT is symmetric.
    pub peer_symmetric: bool,
}

/// Answers one introduction: punches toward the client on `schedule` from the worker's
/// socket until the client's echo arrives; with exactly one symmetric side, the birthday
/// method (this side symmetric: `serve_extra` must serve QUIC on the winning socket,
/// else the client falls back to the relay). Ends within the schedule's span plus a few
/// seconds.
pub async fn answer(
    mux: Mux,
    intro: Introduction,
    symmetric: bool,
    schedule: PunchSchedule,
    serve_extra: Option<ServeExtra>,
) {
    let socket = mux.socket().clone();
    if symmetric && !intro.peer_symmetric {
        if let Some(serve) = serve_extra {
            let ip = socket
                .local()
                .map(|l| l.ip())
                .unwrap_or(IpAddr::from([0, 0, 0, 0]));
            birthday(ip, intro, serve).await;
            return;
        }
    }
    if !symmetric && intro.peer_symmetric {
        let socket = socket.clone();
        let (ip, nonce, delay) = (intro.peer_reflexive.ip(), intro.nonce, intro.delay);
        tokio::spawn(async move {
            tokio::time::sleep(delay + BIRTHDAY_PROBE_DELAY).await;
            birthday_probes(socket, ip, nonce).await;
        });
    }
    let mut watch = mux.watch_punches(intro.nonce);
    let mut targets = vec![intro.peer_reflexive];
    targets.extend(
        intro
            .peer_local
            .iter()
            .copied()
            .filter(|a| *a != intro.peer_reflexive),
    );
    let start = tokio::time::Instant::now() + intro.delay;
    let bytes = encode_punch(&intro.nonce, false);
    for offset in schedule.offsets() {
        let answered = tokio::select! {
            _ = tokio::time::sleep_until(start + offset) => false,
            event = watch.events.recv() => event.is_some_and(|(_, echo)| echo),
        };
        if answered {
            debug!(peer = %intro.peer_reflexive, "punch echoed: path open");
            break;
        }
        for target in &targets {
            let _ = socket.send_raw(&bytes, *target).await;
        }
    }
    // Keep the nonce valid a while for late punches (they are echoed by the mux).
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while watch.events.recv().await.is_some() {}
    })
    .await;
}

/// The symmetric worker's birthday method: punches from many sockets toward the client,
/// and serves QUIC on the one the client's probe reaches, answering it with an echo.
async fn birthday(bind_ip: IpAddr, intro: Introduction, serve: ServeExtra) {
    tokio::time::sleep(intro.delay).await;
    let sockets = birthday_sockets(bind_ip, intro.peer_reflexive, &intro.nonce).await;
    let until = tokio::time::Instant::now() + DEFAULT_PUNCH_DEADLINE * 2;
    let Some((winner, from)) = birthday_match(sockets, intro.nonce, until).await else {
        debug!("no birthday match");
        return;
    };
    let Ok((socket, rx)) = NatSocket::from_tokio(winner) else {
        return;
    };
    debug!(%from, local = ?socket.local(), "birthday match: serving on its socket");
    serve(socket.clone(), rx);
    let echo = encode_punch(&intro.nonce, true);
    for _ in 0..3 {
        let _ = socket.send_raw(&echo, from).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
