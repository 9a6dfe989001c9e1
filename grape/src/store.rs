//! What a grape was told itself: the announces and BEP 44 items that came through its
//! own API (pure; the time is an argument).
//!
//! mainline never stores its own announces or items at itself (it sends them to the
//! closest *other* nodes), so a lone grape could not answer a lookup of what was just
//! announced through it, and a grape that had lost its peers would find less than they
//! do. Grenache's grape answers from its own store in that case, and so does this one:
//! every announce and put through a grape is kept here too, and its lookups and gets
//! add what is here to what the DHT answers.
//!
//! Bounds: entries expire with the DHT's own rules (an announce after its slot window,
//! see [`crate::infohash`]; an item after [`ITEM_TTL`]), and when the store is full a
//! new infohash or item is refused rather than an old one evicted, so a flood of new keys
//! cannot push out a live worker.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddrV4;
use std::time::Duration;

use mainline::{Id, MutableItem};

use crate::infohash::Infohash;

/// Infohashes with local announces kept at most.
pub const MAX_INFOHASHES: usize = 4096;

/// Peers kept per infohash at most (mainline keeps 500 per infohash).
pub const MAX_PEERS_PER_INFOHASH: usize = 500;

/// BEP 44 items kept at most.
pub const MAX_ITEMS: usize = 4096;

/// How long an item put through this grape is served from here: BEP 44 nodes drop items
/// after about two hours unless they are put again.
pub const ITEM_TTL: Duration = Duration::from_secs(2 * 3600);

/// Why the store did not take something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreFull {
    /// [`MAX_INFOHASHES`] infohashes or [`MAX_PEERS_PER_INFOHASH`] peers of one are
    /// held and live.
    #[error("the grape's own announce store is full")]
    Announces,
    /// [`MAX_ITEMS`] items are held and live.
    #[error("the grape's own item store is full")]
    Items,
}

/// Announces and items that came through this grape, with their expiry times.
#[derive(Debug, Default)]
pub struct LocalStore {
    /// Infohash → peer → when it stops being served (since the Unix epoch).
    peers: HashMap<Infohash, HashMap<SocketAddrV4, Duration>>,
    /// Target → the newest item and when it stops being served.
    items: HashMap<Id, (MutableItem, Duration)>,
    /// Target → an immutable value and when it stops being served.
    values: HashMap<Id, (Box<[u8]>, Duration)>,
}

impl LocalStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `peer` under `infohash` until `until` (a time since the Unix epoch); `now`
    /// is the current time. Refreshing a peer moves its expiry.
    pub fn announce(
        &mut self,
        infohash: Infohash,
        peer: SocketAddrV4,
        now: Duration,
        until: Duration,
    ) -> Result<(), StoreFull> {
        if !self.peers.contains_key(&infohash) && self.peers.len() >= MAX_INFOHASHES {
            self.expire(now);
            if self.peers.len() >= MAX_INFOHASHES {
                return Err(StoreFull::Announces);
            }
        }
        let peers = self.peers.entry(infohash).or_default();
        if !peers.contains_key(&peer) && peers.len() >= MAX_PEERS_PER_INFOHASH {
            peers.retain(|_, expires| *expires > now);
            if peers.len() >= MAX_PEERS_PER_INFOHASH {
                return Err(StoreFull::Announces);
            }
        }
        peers.insert(peer, until);
        Ok(())
    }

    /// The live peers of `infohashes`, de-duplicated, in address order.
    pub fn peers(&self, infohashes: &[Infohash], now: Duration) -> BTreeSet<SocketAddrV4> {
        infohashes
            .iter()
            .filter_map(|h| self.peers.get(h))
            .flat_map(|peers| peers.iter())
            .filter(|(_, expires)| **expires > now)
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Keeps `item` until `now + ITEM_TTL`, unless a newer one (higher `seq`) is held.
    pub fn put(&mut self, item: MutableItem, now: Duration) -> Result<(), StoreFull> {
        let target = *item.target();
        if let Some((held, expires)) = self.items.get(&target) {
            if *expires > now && held.seq() > item.seq() {
                return Ok(());
            }
        } else if self.items.len() >= MAX_ITEMS {
            self.expire(now);
            if self.items.len() >= MAX_ITEMS {
                return Err(StoreFull::Items);
            }
        }
        self.items.insert(target, (item, now + ITEM_TTL));
        Ok(())
    }

    /// Keeps an immutable value (BEP 44) under its `target` until `now + ITEM_TTL`.
    pub fn put_immutable(
        &mut self,
        target: Id,
        value: &[u8],
        now: Duration,
    ) -> Result<(), StoreFull> {
        if !self.values.contains_key(&target) && self.values.len() >= MAX_ITEMS {
            self.expire(now);
            if self.values.len() >= MAX_ITEMS {
                return Err(StoreFull::Items);
            }
        }
        self.values.insert(target, (value.into(), now + ITEM_TTL));
        Ok(())
    }

    /// The live immutable value of `target`, if one came through here.
    pub fn immutable(&self, target: &Id, now: Duration) -> Option<&[u8]> {
        match self.values.get(target) {
            Some((value, expires)) if *expires > now => Some(value),
            _ => None,
        }
    }

    /// The live item of `target`, if one came through here.
    pub fn item(&self, target: &Id, now: Duration) -> Option<&MutableItem> {
        match self.items.get(target) {
            Some((item, expires)) if *expires > now => Some(item),
            _ => None,
        }
    }

    /// Drops everything expired at `now`.
    pub fn expire(&mut self, now: Duration) {
        for peers in self.peers.values_mut() {
            peers.retain(|_, expires| *expires > now);
        }
        self.peers.retain(|_, peers| !peers.is_empty());
        self.items.retain(|_, (_, expires)| *expires > now);
        self.values.retain(|_, (_, expires)| *expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn peer(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port)
    }

    #[test]
    fn announces_are_served_until_they_expire() {
        let mut store = LocalStore::new();
        store.announce([1; 20], peer(1), s(0), s(10)).unwrap();
        store.announce([2; 20], peer(2), s(0), s(20)).unwrap();
        let both = [[1; 20], [2; 20], [3; 20]];
        assert_eq!(store.peers(&both, s(5)).len(), 2);
        assert_eq!(store.peers(&both, s(10)), [peer(2)].into());
        assert!(store.peers(&both, s(20)).is_empty());
        // A refresh moves the expiry.
        store.announce([1; 20], peer(1), s(9), s(30)).unwrap();
        assert_eq!(store.peers(&both, s(25)), [peer(1)].into());
    }

    #[test]
    fn a_flood_of_new_keys_is_refused_and_evicts_nothing() {
        let mut store = LocalStore::new();
        store.announce([0; 20], peer(7000), s(0), s(100)).unwrap();
        let mut refused = 0;
        for i in 1..(MAX_INFOHASHES as u32 + 100) {
            let mut h = [0u8; 20];
            h[..4].copy_from_slice(&i.to_be_bytes());
            if store.announce(h, peer(1), s(0), s(100)).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 100);
        assert_eq!(store.peers(&[[0; 20]], s(1)), [peer(7000)].into());
        // Once the flood expires, new keys are taken again.
        assert!(store.announce([9; 20], peer(1), s(100), s(200)).is_ok());
    }

    #[test]
    fn items_keep_the_newest_and_expire() {
        let key = mainline::SigningKey::from_bytes(&[1; 32]);
        let old = MutableItem::new(key.clone(), b"old", 1, Some(b"s"));
        let new = MutableItem::new(key, b"new", 2, Some(b"s"));
        let target = *new.target();
        let mut store = LocalStore::new();
        store.put(new, s(0)).unwrap();
        store.put(old, s(1)).unwrap();
        assert_eq!(store.item(&target, s(2)).unwrap().value(), b"new");
        assert!(store.item(&target, ITEM_TTL).is_none());
    }
}
