//! A small on-disk cache of workers that answered recently, so that a cold `call` or a
//! fresh gateway reaches a known worker at once while the DHT lookup runs beside it.
//!
//! One JSON file (default [`default_path`]) holds at most [`MAX_ENTRIES`] entries, each a
//! node id, its addresses and brokers, the service key and when it last answered. An
//! entry is a hint, never trusted: a cached worker is dialed by its node id, so only that
//! node can answer, and entries older than [`MAX_AGE`] are dropped. The file is written
//! anew (write to a temporary file, then rename) when an answer changes what it holds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::debug;

use super::resolve::{Candidate, Origin};
use crate::protocol::identity::NodeId;

/// Entries kept at most (the newest).
pub const MAX_ENTRIES: usize = 64;

/// Entries older than this are dropped: a week, about how long a volunteer's worker
/// keeps one address.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Cached candidates tried before a lookup answers, at most.
pub const TRIED_FIRST: usize = 4;

/// File name in the cache directory.
pub const CACHE_FILE_NAME: &str = "workers.json";

/// `$XDG_CACHE_HOME/nano-connect/workers.json`, else `~/.cache/nano-connect/workers.json`
/// (on Linux; the platform's cache directory elsewhere); `None` without a home.
pub fn default_path() -> Option<PathBuf> {
    Some(
        dirs::cache_dir()?
            .join("nano-connect")
            .join(CACHE_FILE_NAME),
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    key: String,
    node: NodeId,
    #[serde(default)]
    addrs: Vec<SocketAddr>,
    #[serde(default)]
    brokers: Vec<SocketAddr>,
    /// When it last answered, ms since the Unix epoch.
    seen_ms: u64,
}

/// The cache of one client.
#[derive(Debug)]
pub struct WorkerCache {
    path: PathBuf,
    entries: Mutex<Vec<Entry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl WorkerCache {
    /// Reads the cache at `path` (an unreadable or malformed file counts as empty: it is
    /// only a hint, and is written anew later).
    pub fn open(path: &Path) -> Self {
        let entries = std::fs::read(path)
            .ok()
            .and_then(|bytes| match serde_json::from_slice::<Vec<Entry>>(&bytes) {
                Ok(entries) => Some(entries),
                Err(e) => {
                    debug!(path = %path.display(), error = %e, "worker cache not readable; starting empty");
                    None
                }
            })
            .unwrap_or_default();
        Self {
            path: path.to_path_buf(),
            entries: Mutex::new(entries),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Workers of `key` that answered within [`MAX_AGE`] of `now_ms`, newest first, at
    /// most [`TRIED_FIRST`].
    pub fn candidates(&self, key: &str, now_ms: u64) -> Vec<Candidate> {
        let max_age = u64::try_from(MAX_AGE.as_millis()).unwrap_or(u64::MAX);
        let mut found: Vec<Entry> = lock(&self.entries)
            .iter()
            .filter(|e| e.key == key && now_ms.saturating_sub(e.seen_ms) < max_age)
            .cloned()
            .collect();
        found.sort_by_key(|e| std::cmp::Reverse(e.seen_ms));
        found
            .into_iter()
            .take(TRIED_FIRST)
            .map(|e| Candidate {
                node: Some(e.node),
                addrs: e.addrs,
                brokers: e.brokers,
                origin: Origin::Cache,
            })
            .collect()
    }

    /// Notes that `node` answered for `key` at `now_ms`, reached through `addrs` or
    /// `brokers`; writes the file when the entry's ways changed or a minute passed.
    pub fn remember(
        &self,
        key: &str,
        node: NodeId,
        addrs: Vec<SocketAddr>,
        brokers: Vec<SocketAddr>,
        now_ms: u64,
    ) {
        let snapshot = {
            let mut entries = lock(&self.entries);
            let fresh = Entry {
                key: key.to_string(),
                node,
                addrs,
                brokers,
                seen_ms: now_ms,
            };
            match entries.iter_mut().find(|e| e.key == key && e.node == node) {
                Some(e)
                    if e.addrs == fresh.addrs
                        && e.brokers == fresh.brokers
                        && now_ms.saturating_sub(e.seen_ms) < 60_000 =>
                {
                    return;
                }
                Some(e) => *e = fresh,
                None => entries.push(fresh),
            }
            entries.sort_by_key(|e| std::cmp::Reverse(e.seen_ms));
            entries.truncate(MAX_ENTRIES);
            entries.clone()
        };
        if let Err(e) = self.write(&snapshot) {
            debug!(path = %self.path.display(), error = %e, "worker cache not written");
        }
    }

    /// Forgets `node` for `key` (it failed to answer when dialed by its cached ways).
    pub fn forget(&self, key: &str, node: &NodeId) {
        let snapshot = {
            let mut entries = lock(&self.entries);
            let before = entries.len();
            entries.retain(|e| !(e.key == key && e.node == *node));
            if entries.len() == before {
                return;
            }
            entries.clone()
        };
        let _ = self.write(&snapshot);
    }

    fn write(&self, entries: &[Entry]) -> std::io::Result<()> {
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(entries)?)?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::identity::NodeKey;

    const NOW: u64 = 1_795_317_760_000;

    #[test]
    fn what_answered_comes_back_newest_first_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c").join("workers.json");
        let cache = WorkerCache::open(&path);
        assert!(cache.candidates("nano_rpc", NOW).is_empty());
        let (a, b) = (
            NodeKey::from_seed([1; 32]).node_id(),
            NodeKey::from_seed([2; 32]).node_id(),
        );
        let broker: SocketAddr = "203.0.113.11:30001".parse().unwrap();
        cache.remember(
            "nano_rpc",
            a,
            vec!["203.0.113.5:4433".parse().unwrap()],
            vec![],
            NOW,
        );
        cache.remember("nano_rpc", b, vec![], vec![broker], NOW + 1);
        cache.remember("echo", a, vec![], vec![], NOW + 2);
        let again = WorkerCache::open(&path);
        let found = again.candidates("nano_rpc", NOW + 10);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].node, Some(b));
        assert_eq!(found[0].brokers, vec![broker]);
        assert_eq!(found[0].origin, Origin::Cache);
        again.forget("nano_rpc", &b);
        assert_eq!(
            WorkerCache::open(&path)
                .candidates("nano_rpc", NOW + 10)
                .len(),
            1
        );
    }

    #[test]
    fn old_entries_and_a_broken_file_give_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workers.json");
        std::fs::write(&path, "{not json").unwrap();
        let cache = WorkerCache::open(&path);
        assert!(cache.candidates("k", NOW).is_empty());
        let a = NodeKey::from_seed([3; 32]).node_id();
        cache.remember("k", a, vec![], vec![], NOW);
        let week = u64::try_from(MAX_AGE.as_millis()).unwrap();
        assert_eq!(cache.candidates("k", NOW + week - 1).len(), 1);
        assert!(cache.candidates("k", NOW + week).is_empty());
    }
}
