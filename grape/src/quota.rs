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
    /// Distinct entries of one target one source may store per window (announces of
    /// different ports; a put of an item is one entry, whatever its `seq`). Default 8: a
    /// host runs a few workers of one key. Storing an entry again (a re-announce, a
    /// republished record) counts nothing new.
    pub stores_per_target: usize,
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
    Stores(usize),
    /// The table of sources is full.
    #[error("too many sources at once")]
    Sources,
}

#[derive(Debug, Default)]
struct Source {
    since: Duration,
    /// The entries stored per target: an announce's port, 0 for a put.
    targets: HashMap<[u8; 20], Vec<u64>>,
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

    /// Whether `source` may store `entry` of `target` at `now` (any monotonic or
    /// wall-clock duration, as long as it always is the same clock); counts it if so.
    /// `entry` tells the entries of one target apart: the announced port for BEP 5
    /// `announce_peer`, 0 for a BEP 44 put (a newer `seq` replaces the item). An entry
    /// already counted this window is admitted and counts nothing new.
    pub fn admit(
        &mut self,
        source: IpAddr,
        target: [u8; 20],
        entry: u64,
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
        let stored = entry;
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
            Some(entries) if entries.contains(&stored) => Ok(()),
            Some(entries) if entries.len() >= self.limits.stores_per_target => {
                Err(OverQuota::Stores(entries.len()))
            }
            Some(entries) => {
                entries.push(stored);
                Ok(())
            }
            None if known >= self.limits.targets_per_source => Err(OverQuota::Targets(known)),
            None => {
                entry.targets.insert(target, vec![stored]);
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
            .filter(|i| q.admit(IP, target(*i), 0, s(0)).is_ok())
            .count();
        assert_eq!(admitted, 64);
        // A live worker's re-announce of a known key still passes, another source too.
        assert!(q.admit(IP, target(0), 0, s(10)).is_ok());
        assert!(q
            .admit(
                Ipv4Addr::new(198, 51, 100, 1).into(),
                target(5000),
                0,
                s(10)
            )
            .is_ok());
        // The next window starts afresh.
        assert!(q.admit(IP, target(9999), 0, s(256)).is_ok());
    }

    #[test]
    fn one_source_cannot_crowd_one_key() {
        let mut q = SourceQuota::new(QuotaLimits::default());
        for port in 0..8 {
            q.admit(IP, target(1), port, s(0)).unwrap();
        }
        assert_eq!(q.admit(IP, target(1), 8, s(0)), Err(OverQuota::Stores(8)));
    }

    #[test]
    fn storing_an_entry_again_counts_nothing_new() {
        // A worker re-announcing every 5 s, and republishing its record, for a whole
        // window: every store is taken, and room stays for other entries.
        let mut q = SourceQuota::new(QuotaLimits::default());
        for i in 0..100 {
            assert_eq!(q.admit(IP, target(1), 4433, s(i)), Ok(()));
            assert_eq!(q.admit(IP, target(2), 0, s(i)), Ok(()));
        }
        for port in 1..8 {
            assert_eq!(q.admit(IP, target(1), port, s(100)), Ok(()));
        }
        assert_eq!(q.admit(IP, target(1), 8, s(100)), Err(OverQuota::Stores(8)));
    }

    #[test]
    fn the_table_of_sources_is_bounded() {
        let mut q = SourceQuota::new(QuotaLimits {
            sources: 2,
            ..QuotaLimits::default()
        });
        q.admit(Ipv4Addr::new(10, 0, 0, 1).into(), target(1), 0, s(0))
            .unwrap();
        q.admit(Ipv4Addr::new(10, 0, 0, 2).into(), target(1), 0, s(0))
            .unwrap();
        assert_eq!(
            q.admit(Ipv4Addr::new(10, 0, 0, 3).into(), target(1), 0, s(1)),
            Err(OverQuota::Sources)
        );
        // Once the first sources' windows end, new ones are taken.
        assert!(q
            .admit(Ipv4Addr::new(10, 0, 0, 3).into(), target(1), 0, s(300))
            .is_ok());
    }
}
