//! Fair storage under a flood: what one source may make a grape store (pure; the time is
//! an argument).
//!
//! mainline 8.0.1 keeps announces in an LRU of [`MAX_INFO_HASHES`] infohashes: about
//! 2,100 announces of new keys, from one host, push every older one out, a live worker
//! included, until its next announce. A grape therefore counts, per source IPv4 address
//! and per window (the announce window: the time an announce lives), the distinct
//! targets that source made it store, and refuses more than
//! [`QuotaLimits::targets_per_source`] (and more than
//! [`QuotaLimits::stores_per_target`] entries of one target from one source, so one host
//! cannot crowd a key's peer list with ports of its own). A live worker announcing its
//! key again costs nothing new. Nothing is evicted to make room: a source over its quota
//! is refused, the others are not affected.
//!
//! The same accounting guards two doors: the DHT port (BEP 5 `announce_peer`, BEP 44
//! `put`, through [`crate::filter`]) and the HTTP API (`/announce`, `/put`).
//!
//! [`MAX_INFO_HASHES`]: mainline::MAX_INFO_HASHES

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// Bounds of a [`SourceQuota`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Length of a counting window (the announce window, default 256 s).
    pub window: Duration,
    /// Distinct targets one source may make the grape store per window. Default 64: a
    /// host runs a few services and a grape announces a few keys of its own.
    pub targets_per_source: usize,
    /// Entries of one target one source may store per window (announces of different
    /// ports, puts). Default 8: a host runs a few workers of one key.
    pub stores_per_target: u32,
    /// Sources tracked at once; when full, sources whose window ended are dropped, and a
    /// new source is refused while none has (a spoofed-source flood cannot grow the
    /// table). Default 65 536.
    pub sources: usize,
}

impl Default for QuotaLimits {
    fn default() -> Self {
        Self {
            window: crate::defaults::DEFAULT_ANNOUNCE_WINDOW,
            targets_per_source: 64,
            stores_per_target: 8,
            sources: 65_536,
        }
    }
}

/// Why a store was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OverQuota {
    /// The source stored [`QuotaLimits::targets_per_source`] distinct targets this window.
    #[error("this source stored {0} distinct keys in this window already")]
    Targets(usize),
    /// The source stored [`QuotaLimits::stores_per_target`] entries of this target.
    #[error("this source stored {0} entries of this key in this window already")]
    Stores(u32),
    /// The table of sources is full.
    #[error("too many sources at once")]
    Sources,
}

#[derive(Debug, Default)]
struct Source {
    since: Duration,
    targets: HashMap<[u8; 20], u32>,
}

/// Per-source accounting of stored targets.
#[derive(Debug)]
pub struct SourceQuota {
    limits: QuotaLimits,
    sources: HashMap<IpAddr, Source>,
}

impl SourceQuota {
    /// An empty account with `limits`.
    pub fn new(limits: QuotaLimits) -> Self {
        Self {
            limits,
            sources: HashMap::new(),
        }
    }

    /// Whether `source` may store (one more entry of) `target` at `now` (any monotonic
    /// or wall-clock duration, as long as it always is the same clock); counts it if so.
    pub fn admit(
        &mut self,
        source: IpAddr,
        target: [u8; 20],
        now: Duration,
    ) -> Result<(), OverQuota> {
        let window = self.limits.window;
        if !self.sources.contains_key(&source) && self.sources.len() >= self.limits.sources {
            self.sources
                .retain(|_, s| now.saturating_sub(s.since) < window);
            if self.sources.len() >= self.limits.sources {
                return Err(OverQuota::Sources);
            }
        }
        let entry = self.sources.entry(source).or_insert_with(|| Source {
            since: now,
            targets: HashMap::new(),
        });
        if now.saturating_sub(entry.since) >= window {
            *entry = Source {
                since: now,
                targets: HashMap::new(),
            };
        }
        let known = entry.targets.len();
        match entry.targets.get_mut(&target) {
            Some(count) if *count >= self.limits.stores_per_target => {
                Err(OverQuota::Stores(*count))
            }
            Some(count) => {
                *count += 1;
                Ok(())
            }
            None if known >= self.limits.targets_per_source => Err(OverQuota::Targets(known)),
            None => {
                entry.targets.insert(target, 1);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::Ipv4Addr;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));

    fn target(i: u32) -> [u8; 20] {
        let mut t = [0u8; 20];
        t[..4].copy_from_slice(&i.to_be_bytes());
        t
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_flood_of_new_targets_from_one_source_stops_at_its_quota() {
        let mut q = SourceQuota::new(QuotaLimits::default());
        let admitted = (0..2_100)
            .filter(|i| q.admit(IP, target(*i), s(0)).is_ok())
            .count();
        assert_eq!(admitted, 64);
        // A live worker's re-announce of a known key still passes, another source too.
        assert!(q.admit(IP, target(0), s(10)).is_ok());
        assert!(q
            .admit(Ipv4Addr::new(198, 51, 100, 1).into(), target(5000), s(10))
            .is_ok());
        // The next window starts afresh.
        assert!(q.admit(IP, target(9999), s(256)).is_ok());
    }

    #[test]
    fn one_source_cannot_crowd_one_key() {
        let mut q = SourceQuota::new(QuotaLimits::default());
        for _ in 0..8 {
            q.admit(IP, target(1), s(0)).unwrap();
        }
        assert_eq!(q.admit(IP, target(1), s(0)), Err(OverQuota::Stores(8)));
    }

    #[test]
    fn the_table_of_sources_is_bounded() {
        let mut q = SourceQuota::new(QuotaLimits {
            sources: 2,
            ..QuotaLimits::default()
        });
        q.admit(Ipv4Addr::new(10, 0, 0, 1).into(), target(1), s(0))
            .unwrap();
        q.admit(Ipv4Addr::new(10, 0, 0, 2).into(), target(1), s(0))
            .unwrap();
        assert_eq!(
            q.admit(Ipv4Addr::new(10, 0, 0, 3).into(), target(1), s(1)),
            Err(OverQuota::Sources)
        );
        // Once the first sources' windows end, new ones are taken.
        assert!(q
            .admit(Ipv4Addr::new(10, 0, 0, 3).into(), target(1), s(300))
            .is_ok());
    }
}
