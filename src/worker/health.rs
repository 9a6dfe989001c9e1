//! A worker is present in the mesh only while its node answers.
//!
//! A worker whose Nano node is down still accepts connections and answers every request
//! with `upstream_unreachable`: callers fail over, but each pays for the attempt. So the
//! worker probes its node (for the Nano relay `{"action":"version"}`) every interval, and
//! its presence ([`super::presence`]) announces, registers and publishes its record only
//! while the node answers; grapes and brokers forget it within their windows, and callers
//! stop finding it. When the node answers again, the worker comes back at once.
//!
//! A probe is skipped when the node has answered a relayed request since the last one
//! (the caller passes a count of node answers): a busy worker's node is not asked for
//! `version` on top of its work.
//!
//! [`Health`] is the decision (pure): it withdraws after [`Health::FAILURES_TO_STOP`]
//! failed probes in a row, so that one lost probe does not withdraw a worker, and comes
//! back after one good probe. [`monitor`] is the loop, which publishes the decision.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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

/// Asks the service's upstream whether it answers (the Nano relay: `version`).
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// Counts the upstream's answers to relayed requests (for example
/// [`WorkerMetrics::node_answers`](crate::metrics::WorkerMetrics::node_answers)).
pub type AnswerCount = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Probes with `probe` every `interval` until `cancel`, and publishes whether the worker
/// should be present (`true` from the start: a worker is withdrawn only by failed
/// probes). `first_ok` is a probe the caller made at start-up: a worker whose node did
/// not answer then is withdrawn after one more failed probe (it is present meanwhile, so
/// that callers get a clear `upstream_unreachable` rather than no worker at all while an
/// operator starts things). When `answers` grew since the last interval, the node is
/// taken as answering without a probe.
pub fn monitor(
    probe: Probe,
    interval: Duration,
    first_ok: bool,
    answers: Option<AnswerCount>,
    cancel: CancellationToken,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(true);
    tokio::spawn(async move {
        let mut health = Health::started();
        let mut seen = answers.as_ref().map_or(0, |a| a());
        let mut answering = first_ok;
        loop {
            match health.on_probe(answering) {
                Some(HealthAction::StartAnnouncing) => {
                    info!("the node answers again: back in the mesh");
                    let _ = tx.send(true);
                }
                Some(HealthAction::StopAnnouncing) => {
                    warn!("the node does not answer: withdrawn from the mesh until it does");
                    let _ = tx.send(false);
                }
                None => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            let now = answers.as_ref().map_or(seen, |a| a());
            answering = if now != seen {
                seen = now;
                true
            } else {
                probe().await
            };
        }
    });
    rx
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
