//! The punch schedule (pure): when the punching side sends, and the port set of the
//! birthday method for an endpoint-dependent (symmetric) peer.
//!
//! The punching side (the worker) sends a [punch](super::broker_proto::encode_punch) to
//! every candidate address at each step of the schedule, starting at the synchronized
//! start time, until the dialing side's punch echo or QUIC connection arrives, or the
//! schedule ends. Intervals start short (a punch must leave before the dialer's first
//! QUIC Initial reaches the router, or a router accepting WAN traffic records the wrong
//! flow, see docs/protocol.md §5.4) and back off, bounded in count and time.

use std::time::Duration;

use rand::Rng;

use crate::defaults::{DEFAULT_PUNCH_COUNT, DEFAULT_PUNCH_INTERVAL};

/// A bounded punch schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PunchSchedule {
    /// First interval between punches. Default 20 ms.
    pub interval: Duration,
    /// Most punches sent. Default 40.
    pub count: u32,
    /// Largest interval after back-off. Default 100 ms.
    pub max_interval: Duration,
}

impl Default for PunchSchedule {
    fn default() -> Self {
        Self {
            interval: DEFAULT_PUNCH_INTERVAL,
            count: DEFAULT_PUNCH_COUNT,
            max_interval: Duration::from_millis(100),
        }
    }
}

impl PunchSchedule {
    /// Offsets from the start at which to punch: the first 10 at `interval`, then the
    /// interval doubles up to `max_interval`; `count` offsets in all.
    pub fn offsets(&self) -> Vec<Duration> {
        let mut out = Vec::with_capacity(self.count as usize);
        let mut at = Duration::ZERO;
        let mut step = self.interval;
        for i in 0..self.count {
            out.push(at);
            if i >= 9 {
                step = (step * 2).min(self.max_interval.max(self.interval));
            }
            at += step;
        }
        out
    }

    /// Total time the schedule lasts.
    pub fn span(&self) -> Duration {
        self.offsets().last().copied().unwrap_or_default()
    }
}

/// Sockets an endpoint-dependent (symmetric) side opens for the birthday method, one
/// punch from each (the prototype on this machine matched 5/5 with 256 and 2048).
pub const BIRTHDAY_SOCKETS: usize = 256;

/// Ports the endpoint-independent side probes on the symmetric peer's public IP.
pub const BIRTHDAY_PROBES: usize = 2048;

/// `count` distinct random ports in 1024–65535 (where masquerade picks its ports), for
/// the endpoint-independent side's birthday probes. With 256 sockets on the other side
/// the chance of no match is about `exp(-256 * 2048 / 64512)`, below 0.1 %.
pub fn birthday_ports<R: Rng>(rng: &mut R, count: usize) -> Vec<u16> {
    let count = count.min(65535 - 1024 + 1);
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let port = rng.random_range(1024..=65535u16);
        if seen.insert(port) {
            out.push(port);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn schedule_is_bounded_and_backs_off() {
        let s = PunchSchedule::default();
        let offsets = s.offsets();
        assert_eq!(offsets.len(), 40);
        assert_eq!(offsets[1], Duration::from_millis(20));
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        assert!(s.span() < Duration::from_secs(4), "{:?}", s.span());
    }

    #[test]
    fn birthday_ports_are_distinct_and_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let ports = birthday_ports(&mut rng, BIRTHDAY_PROBES);
        assert_eq!(ports.len(), BIRTHDAY_PROBES);
        let set: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(set.len(), ports.len());
        assert!(ports.iter().all(|p| *p >= 1024));
    }
}
