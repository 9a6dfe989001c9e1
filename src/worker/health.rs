//! A worker announces only while its node answers.
//!
//! A worker whose Nano node is down still accepts connections and answers every request
//! with `upstream_unreachable`: callers fail over, but each pays for the attempt. So the
//! worker probes its node ([`NanoRelay::probe`], `{"action":"version"}`) every interval
//! and keeps its announcer running only while the node answers; the grapes forget an
//! announce after their window, and callers stop finding the worker. When the node
//! answers again, the worker announces again at once.
//!
//! A probe is skipped when the node has answered a relayed request since the last one
//! (the caller passes a count of node answers): a busy worker's node is not asked for
//! `version` on top of its work.
//!
//! [`Health`] is the decision (pure): it stops announcing after
//! [`Health::FAILURES_TO_STOP`] failed probes in a row, so that one lost probe does not
//! withdraw a worker, and starts again after one good probe. [`run`] is the loop.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::discovery::link::Link;
use crate::nano::NanoRelay;

pub use crate::defaults::DEFAULT_HEALTH_INTERVAL;

/// What the announcer should do after a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthAction {
    /// Start announcing (the node answers again, or for the first time).
    StartAnnouncing,
    /// Stop announcing (the node has stopped answering).
    StopAnnouncing,
}

/// The announce decision from probe results (pure).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    announcing: bool,
    failures: u32,
}

impl Health {
    /// Failed probes in a row that withdraw a worker.
    pub const FAILURES_TO_STOP: u32 = 2;

    /// Not announcing yet; the first good probe starts it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Announcing already (a worker announces from its start, and is withdrawn only by
    /// failed probes).
    pub fn started() -> Self {
        Self {
            announcing: true,
            failures: 0,
        }
    }

    /// Whether the worker should be announcing now.
    pub fn announcing(&self) -> bool {
        self.announcing
    }

    /// Takes one probe result and says what to change, if anything.
    pub fn on_probe(&mut self, node_answers: bool) -> Option<HealthAction> {
        if node_answers {
            self.failures = 0;
            if !self.announcing {
                self.announcing = true;
                return Some(HealthAction::StartAnnouncing);
            }
            return None;
        }
        self.failures = self.failures.saturating_add(1);
        if self.announcing && self.failures >= Self::FAILURES_TO_STOP {
            self.announcing = false;
            return Some(HealthAction::StopAnnouncing);
        }
        None
    }
}

/// What a worker announces and how often.
#[derive(Debug, Clone)]
pub struct Announce {
    /// The grape link.
    pub link: Link,
    /// The service key.
    pub key: String,
    /// The worker's UDP port.
    pub port: u16,
    /// Time between announces (±50 % jitter, see [`Link::spawn_announcer`]).
    pub interval: Duration,
}

/// Runs the announcer of `announce` from the start, probes `relay`'s node every
/// `probe_interval`, and stops the announcer while the node does not answer, until
/// `cancel` fires. `first_probe_ok` is the result of a probe the caller already made at
/// start-up: a worker whose node did not answer then is withdrawn after one more failed
/// probe (it still announces meanwhile, so that callers get a clear
/// `upstream_unreachable` rather than no worker at all while an operator starts things).
/// `node_answers` counts the node's answers to relayed requests (for example
/// [`WorkerMetrics::node_answers`](crate::metrics::WorkerMetrics::node_answers)); when it
/// grew since the last interval, the node is taken as answering without a probe.
pub async fn run(
    relay: NanoRelay,
    announce: Announce,
    probe_interval: Duration,
    first_probe_ok: bool,
    node_answers: impl Fn() -> u64 + Send + 'static,
    cancel: CancellationToken,
) {
    let Announce {
        link,
        key,
        port,
        interval: announce_interval,
    } = announce;
    let start = || {
        let stop = cancel.child_token();
        let task = link.spawn_announcer(key.clone(), port, announce_interval, stop.clone(), |_| {});
        (stop, task)
    };
    let mut health = Health::started();
    let mut announcer = Some(start());
    let mut answers_seen = node_answers();
    let mut answering = first_probe_ok;
    loop {
        match health.on_probe(answering) {
            Some(HealthAction::StartAnnouncing) => {
                info!(%key, port, "node answers again: announcing");
                announcer = Some(start());
            }
            Some(HealthAction::StopAnnouncing) => {
                warn!(%key, port, "node does not answer: announcing stopped until it does");
                if let Some((stop, task)) = announcer.take() {
                    stop.cancel();
                    let _ = task.await;
                }
            }
            None => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(probe_interval) => {}
        }
        let answers = node_answers();
        answering = if answers != answers_seen {
            answers_seen = answers;
            true
        } else {
            match relay.probe().await {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "health probe failed");
                    false
                }
            }
        };
    }
    if let Some((stop, task)) = announcer.take() {
        stop.cancel();
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_the_first_good_probe() {
        let mut h = Health::new();
        assert_eq!(h.on_probe(false), None);
        assert!(!h.announcing());
        assert_eq!(h.on_probe(true), Some(HealthAction::StartAnnouncing));
        assert_eq!(h.on_probe(true), None);
        assert!(h.announcing());
    }

    #[test]
    fn a_started_worker_is_withdrawn_by_two_failures() {
        let mut h = Health::started();
        assert!(h.announcing());
        assert_eq!(h.on_probe(false), None);
        assert_eq!(h.on_probe(false), Some(HealthAction::StopAnnouncing));
    }

    #[test]
    fn one_lost_probe_is_tolerated_two_stop_and_one_good_restarts() {
        let mut h = Health::new();
        h.on_probe(true);
        assert_eq!(h.on_probe(false), None);
        assert_eq!(h.on_probe(true), None, "a single failure is forgiven");
        assert_eq!(h.on_probe(false), None);
        assert_eq!(h.on_probe(false), Some(HealthAction::StopAnnouncing));
        assert_eq!(h.on_probe(false), None);
        assert_eq!(h.on_probe(true), Some(HealthAction::StartAnnouncing));
    }
}
