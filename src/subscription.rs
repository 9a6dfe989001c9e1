//! What a worker's subscription service is (docs/protocol.md §8), without the stream:
//! the [`SubscriptionService`] trait a worker's server hands sessions to, the
//! [`Session`] it gets back, and the [`Outbox`], the bounded queue between the service's
//! fan-out and one session's stream.
//!
//! ```text
//!   fan-out (nano::confirmations) ─ push ─▶ Outbox (bounded; full: drop + count)
//!                                              │ next()
//!                                              ▼
//!   worker::subscriptions (one task per stream) ─▶ QUIC stream ─▶ caller
//! ```
//!
//! The service sees values ([`Subscribe`], [`Update`]) and gives encoded frames; the
//! worker's stream plumbing ([`crate::worker`]) reads and writes the stream, sends
//! acks, refusals, notices and heartbeats. Neither grows a buffer without bound: a
//! session whose caller reads too slowly loses messages, and the next thing it reads is
//! a notice that says how many.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::protocol::subscription::{RefusalCode, Subscribe, Update};

/// A refusal of a `subscribe` or `update`: its wire code and one line for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct Refusal {
    /// The wire code.
    pub code: RefusalCode,
    /// What to tell the caller.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What an accepted `subscribe` or `update` left: the figures of its `ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Accounts the session follows now (0 for all accounts).
    pub accounts: u32,
    /// The service's limit on accounts per session.
    pub max_accounts: u32,
    /// The service's limit on messages per second to one session (0: none).
    pub max_rate: u32,
}

/// The service's side of one open session: changes to it, and its end when dropped.
pub trait SessionControl: Send + Sync {
    /// Applies an `update`; a refused one changes nothing.
    fn update(&self, update: &Update) -> Result<Accepted, Refusal>;

    /// Replaces the session's options with a later `subscribe` on the same stream.
    fn replace(&self, subscribe: &Subscribe) -> Result<Accepted, Refusal>;
}

/// An accepted session: where its frames come from, how to change it, and what its
/// `ack` says. Dropping it ends the session in the service.
pub struct Session {
    /// Frames for the caller, filled by the service.
    pub outbox: std::sync::Arc<Outbox>,
    /// Updates and the session's end.
    pub control: Box<dyn SessionControl>,
    /// The first `ack`'s figures.
    pub accepted: Accepted,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("accepted", &self.accepted)
            .finish_non_exhaustive()
    }
}

/// A worker's subscription service: decides on each `subscribe` and feeds the sessions
/// it accepted.
///
/// Implementations must not panic on any request: whatever came from the network is
/// answered, with a [`Refusal`] when it makes no sense.
pub trait SubscriptionService: Send + Sync + 'static {
    /// Opens a session for `request` (the stream's first frame) from `peer`, or refuses.
    fn open(&self, request: &Subscribe, peer: SocketAddr) -> Result<Session, Refusal>;
}

/// Why a session's messages were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The session's queue was full: its caller reads more slowly than messages come.
    SlowReader,
    /// More messages than the service's per-session rate.
    RateLimit,
}

impl DropReason {
    /// `slow_reader` or `rate_limit`, as in the `notice` frame.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SlowReader => "slow_reader",
            Self::RateLimit => "rate_limit",
        }
    }
}

/// What a session's stream writes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// An encoded frame (prefix included), shared with other sessions.
    Frame(Bytes),
    /// Messages were dropped since the last notice: `lost` of them, `total` in all, the
    /// latest for `reason`.
    Lost {
        /// Dropped since the last notice.
        lost: u64,
        /// Dropped in the whole session.
        total: u64,
        /// Why the latest was dropped.
        reason: DropReason,
    },
    /// The service ended the session.
    Closed(Refusal),
}

#[derive(Debug, Default)]
struct OutboxState {
    queue: VecDeque<Bytes>,
    lost: u64,
    total_lost: u64,
    reason: Option<DropReason>,
    closed: Option<Refusal>,
}

/// A bounded queue of frames for one session: the service pushes without ever waiting,
/// the stream task takes. A push to a full queue drops the frame and counts it; the
/// next [`Outbox::next`] after a drop reports the count before any later frame.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    ready: Notify,
    capacity: usize,
}

impl Outbox {
    /// An empty outbox of at most `capacity` frames (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame`; `false` when the queue was full (or closed) and the frame was
    /// dropped and counted as [`DropReason::SlowReader`].
    pub fn push(&self, frame: Bytes) -> bool {
        let mut state = self.state();
        if state.closed.is_some() {
            return false;
        }
        if state.queue.len() >= self.capacity {
            state.lost += 1;
            state.total_lost += 1;
            state.reason = Some(DropReason::SlowReader);
            drop(state);
            self.ready.notify_one();
            return false;
        }
        state.queue.push_back(frame);
        drop(state);
        self.ready.notify_one();
        true
    }

    /// Counts a message the service did not queue, for `reason`.
    pub fn count_drop(&self, reason: DropReason) {
        let mut state = self.state();
        state.lost += 1;
        state.total_lost += 1;
        state.reason = Some(reason);
        drop(state);
        self.ready.notify_one();
    }

    /// Ends the session: [`Outbox::next`] gives `Closed` once the queue is empty, and
    /// later pushes are dropped.
    pub fn close(&self, refusal: Refusal) {
        let mut state = self.state();
        if state.closed.is_none() {
            state.closed = Some(refusal);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.state().queue.len()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages dropped in the whole session.
    pub fn total_lost(&self) -> u64 {
        self.state().total_lost
    }

    /// What to write next: a drop report first when messages were dropped (so that a
    /// caller learns of a gap before it reads past it), then queued frames in order, then
    /// `Closed`. Waits while there is nothing.
    pub async fn next(&self) -> Outgoing {
        loop {
            let ready = self.ready.notified();
            {
                let mut state = self.state();
                if state.lost > 0 {
                    let lost = std::mem::take(&mut state.lost);
                    let reason = state.reason.take().unwrap_or(DropReason::SlowReader);
                    return Outgoing::Lost {
                        lost,
                        total: state.total_lost,
                        reason,
                    };
                }
                if let Some(frame) = state.queue.pop_front() {
                    return Outgoing::Frame(frame);
                }
                if let Some(refusal) = &state.closed {
                    return Outgoing::Closed(refusal.clone());
                }
            }
            ready.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_outbox_drops_counts_and_reports_first() {
        let outbox = Outbox::new(2);
        assert!(outbox.push(Bytes::from_static(b"1")));
        assert!(outbox.push(Bytes::from_static(b"2")));
        assert!(!outbox.push(Bytes::from_static(b"3")));
        assert!(!outbox.push(Bytes::from_static(b"4")));
        assert_eq!(outbox.len(), 2);
        assert_eq!(
            outbox.next().await,
            Outgoing::Lost {
                lost: 2,
                total: 2,
                reason: DropReason::SlowReader
            }
        );
        assert_eq!(
            outbox.next().await,
            Outgoing::Frame(Bytes::from_static(b"1"))
        );
        outbox.count_drop(DropReason::RateLimit);
        assert_eq!(
            outbox.next().await,
            Outgoing::Lost {
                lost: 1,
                total: 3,
                reason: DropReason::RateLimit
            }
        );
        assert_eq!(
            outbox.next().await,
            Outgoing::Frame(Bytes::from_static(b"2"))
        );
        outbox.close(Refusal::new(RefusalCode::ShuttingDown, "bye"));
        assert!(!outbox.push(Bytes::from_static(b"5")));
        assert!(matches!(outbox.next().await, Outgoing::Closed(_)));
    }

    #[tokio::test]
    async fn next_waits_for_a_push() {
        let outbox = std::sync::Arc::new(Outbox::new(4));
        let taker = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.next().await })
        };
        tokio::task::yield_now().await;
        outbox.push(Bytes::from_static(b"x"));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), taker)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got, Outgoing::Frame(Bytes::from_static(b"x")));
    }
}
