//! The grape's mainline DHT node: time-slotted announces and lookups (BEP 5), and BEP 44
//! items.
//!
//! [`GrapeDht`] wraps one server-mode `mainline` node. mainline runs its own OS thread and
//! UDP socket; this module is the async edge around it. It reads the wall clock (for the
//! slot of an announce or lookup) and runs the timers; the slot rules themselves are pure
//! and live in [`mod@crate::infohash`], the BEP 44 rules in [`crate::bep44`].
//!
//! # Lookups: freshest slots first, batches as they come
//!
//! A mainline query only ends when every node it asked has answered or timed out (one
//! dead node adds mainline's full request timeout, 2 s), and once started it runs to its
//! end whether anyone listens or not. A lookup therefore collects peers as batches come
//! (one batch per responding node, at most 10 random peers of those it stores) and
//! stops at whichever comes first:
//!
//! 1. it has the number of distinct peers it wants (default 32: a `--quorum` of 15 and
//!    failover; [`GrapeDht::with_lookup_want`]);
//! 2. no new peer arrived for the settle period (default 150 ms) after the last new one;
//! 3. every query it started has ended;
//! 4. the deadline (default 2 s).
//!
//! Which slots it asks: when the last lookup of the key found as many peers as wanted
//! (a key with many announcers), only the current slot and the one before it, and the
//! two older slots only if those fall short: each slot holds about half of the live
//! announcers (an announce every 60–180 s, slots of 64 s), so two slots are plenty, and a
//! query not started is the only query that costs no messages. Otherwise (a key with
//! few announcers, or one not looked up before) all four at once, since every announcer
//! counts. Measured on a simulated DHT of 1,000 nodes (`examples/dht_sim`,
//! `docs/scaling.md`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::poll_fn;
use std::net::{Ipv4Addr, SocketAddrV4, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::Stream;
use mainline::async_dht::AsyncDht;
use mainline::{Dht, Id, MutableItem, ServerSettings};
use tokio::time::Instant;

use crate::bep44;
use crate::defaults::{
    DEFAULT_DHT_TARGETS_PER_SOURCE, DEFAULT_MAX_INFO_HASHES, DEFAULT_MAX_PEERS_PER_INFO_HASH,
};
use crate::defaults::{DEFAULT_KNOWN_KEYS, DEFAULT_LOOKUP_WANT, DEFAULT_PUT_TIMEOUT};
use crate::error::GrapeError;
use crate::filter::SourceFilter;
use crate::infohash::{Infohash, SlotSchedule};
use crate::quota::{OverQuota, QuotaLimits, SourceQuota};
use crate::store::LocalStore;
use crate::GrapeConfig;

mod lookup;

pub use lookup::{LookupEnd, LookupReport};

/// A server-mode mainline DHT node with the grape's announce, lookup, put and get.
///
/// Announces and lookups go through the time slots of a [`SlotSchedule`] (see
/// [`mod@crate::infohash`]); puts and gets are plain BEP 44.
///
/// Facts about mainline 8.0.1 that shape this type:
/// - a node never stores its own announces or items, so every announce and put made
///   through a grape is also kept in its own [`LocalStore`], and its lookups and gets
///   add what is there: a lone grape serves what was announced through it, and a grape
///   is never worse than its peers at finding what it was told itself;
/// - two announces of one infohash in flight at once on one node would overwrite each
///   other inside mainline, so announces of the same slot infohash are serialized here.
#[derive(Debug)]
pub struct GrapeDht {
    dht: AsyncDht,
    local_addr: SocketAddrV4,
    schedule: SlotSchedule,
    lookup_settle: Duration,
    lookup_want: usize,
    lookup_memory: Mutex<lookup::LookupMemory>,
    announce_locks: Mutex<HashMap<Infohash, Weak<tokio::sync::Mutex<()>>>>,
    known_keys: Mutex<KnownKeys>,
    observer: OnceLock<Arc<dyn DhtObserver>>,
    local: Mutex<LocalStore>,
    /// What the HTTP API's clients made this grape store, per client address.
    api_quota: Mutex<SourceQuota>,
    /// The guard on the DHT port (its refusal count).
    filter: SourceFilter,
    /// The address this node's own announces are served with from the local store, when
    /// it is known from the configuration (`public_ip`, or a specific `bind`).
    own_ip: Option<Ipv4Addr>,
}

/// Told of every announce and lookup a [`GrapeDht`] makes, for metrics
/// ([`GrapeDht::set_observer`]). Called on the task that made the call; keep it cheap.
pub trait DhtObserver: std::fmt::Debug + Send + Sync + 'static {
    /// An announce ended, stored (`ok`) or not, after `took`.
    fn announced(&self, ok: bool, took: Duration);
    /// A lookup ended with `found` peers after `took`.
    fn looked_up(&self, found: usize, took: Duration);
}

/// What names a BEP 44 mutable item besides its target: the public key and the salt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutableKey {
    /// The ed25519 public key.
    pub k: [u8; 32],
    /// The salt, if any (never empty).
    pub salt: Option<Box<[u8]>>,
}

/// Mutable keys by target, oldest dropped first (see
/// [`crate::defaults::DEFAULT_KNOWN_KEYS`]).
#[derive(Debug, Default)]
struct KnownKeys {
    by_target: HashMap<Id, MutableKey>,
    order: VecDeque<Id>,
}

impl KnownKeys {
    fn insert(&mut self, target: Id, k: [u8; 32], salt: Option<&[u8]>) {
        let key = MutableKey {
            k,
            salt: salt.map(Into::into),
        };
        if self.by_target.insert(target, key).is_none() {
            self.order.push_back(target);
        }
        while self.order.len() > DEFAULT_KNOWN_KEYS {
            if let Some(old) = self.order.pop_front() {
                self.by_target.remove(&old);
            }
        }
    }
}

/// Locks a mutex, recovering the data of a poisoned one (a panicked holder leaves the
/// map in a usable state here).
fn lock_or_recover<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The current time as a duration since the Unix epoch (a clock before 1970 reads as 0).
pub(crate) fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Resolves bootstrap nodes given as `IP:PORT` or `HOST:PORT` to IPv4 socket addresses.
pub(crate) fn resolve_bootstrap(nodes: &[String]) -> Result<Vec<SocketAddrV4>, GrapeError> {
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        let addrs = node.to_socket_addrs().map_err(|e| GrapeError::Bootstrap {
            node: node.clone(),
            reason: e.to_string(),
        })?;
        let v4: Vec<SocketAddrV4> = addrs
            .filter_map(|a| match a {
                std::net::SocketAddr::V4(a) => Some(a),
                std::net::SocketAddr::V6(_) => None,
            })
            .collect();
        if v4.is_empty() {
            return Err(GrapeError::Bootstrap {
                node: node.clone(),
                reason: "it has no IPv4 address".to_owned(),
            });
        }
        out.extend(v4);
    }
    Ok(out)
}

impl GrapeDht {
    /// Starts a server-mode mainline node on `config.bind:config.dht_port` (port 0: any),
    /// bootstrapped from `config.bootstrap` (`None`: the public mainline network;
    /// `Some(vec![])`: none, the first node of a private network).
    ///
    /// Uses `bind`, `dht_port`, `bootstrap`, `public_ip`, `announce_window` and
    /// `lookup_settle` from the config. Returns once the socket is bound; bootstrapping
    /// goes on in the background (see [`Self::bootstrapped`]).
    ///
    /// # Errors
    ///
    /// [`GrapeError::WindowTooShort`], [`GrapeError::Bootstrap`] for a bootstrap node that
    /// does not resolve, [`GrapeError::DhtBind`] if the UDP socket cannot be bound.
    pub async fn start(config: &GrapeConfig) -> Result<Self, GrapeError> {
        let schedule = SlotSchedule::new(config.announce_window)?;
        let mut builder = Dht::builder();
        builder.bind_address(config.bind).port(config.dht_port);
        // Other DHT nodes announce for many more keys than an API client: a broker's grape
        // announces each key it serves in every slot (4 targets per key per window).
        let filter = SourceFilter::new(QuotaLimits {
            window: config.announce_window,
            targets_per_source: DEFAULT_DHT_TARGETS_PER_SOURCE,
            ..QuotaLimits::default()
        });
        if !config.client_mode {
            builder.server_mode().server_settings(ServerSettings {
                max_info_hashes: DEFAULT_MAX_INFO_HASHES,
                max_peers_per_info_hash: DEFAULT_MAX_PEERS_PER_INFO_HASH,
                filter: Box::new(filter.clone()),
                ..ServerSettings::default()
            });
        }
        match &config.bootstrap {
            None => {}
            Some(nodes) if nodes.is_empty() => {
                builder.no_bootstrap();
            }
            Some(nodes) => {
                let nodes = tokio::task::spawn_blocking({
                    let nodes = nodes.clone();
                    move || resolve_bootstrap(&nodes)
                })
                .await
                .map_err(|e| GrapeError::Bootstrap {
                    node: nodes.join(","),
                    reason: e.to_string(),
                })??;
                builder.bootstrap(&nodes);
            }
        }
        if let Some(ip) = config.public_ip {
            builder.public_ip(ip);
        }
        let bind_addr = SocketAddrV4::new(config.bind, config.dht_port);
        // Dht::build spawns the actor thread and blocks until its socket is bound.
        let dht = tokio::task::spawn_blocking(move || builder.build())
            .await
            .map_err(|e| GrapeError::DhtBind {
                addr: bind_addr,
                source: std::io::Error::other(e),
            })?
            .map_err(|source| GrapeError::DhtBind {
                addr: bind_addr,
                source,
            })?
            .as_async();
        let local_addr = dht.info().await.local_addr();
        tracing::info!(%local_addr, window = ?schedule.window(), "grape DHT node started");
        Ok(Self {
            dht,
            local_addr,
            schedule,
            lookup_settle: config.lookup_settle,
            lookup_want: DEFAULT_LOOKUP_WANT,
            lookup_memory: Mutex::new(lookup::LookupMemory::default()),
            announce_locks: Mutex::new(HashMap::new()),
            known_keys: Mutex::new(KnownKeys::default()),
            observer: OnceLock::new(),
            local: Mutex::new(LocalStore::new()),
            api_quota: Mutex::new(SourceQuota::new(QuotaLimits {
                window: config.announce_window,
                ..QuotaLimits::default()
            })),
            filter,
            own_ip: config
                .public_ip
                .or((!config.bind.is_unspecified()).then_some(config.bind)),
        })
    }

    /// Wraps a mainline node that the caller built, for what [`Self::start`] does not
    /// offer: a client-mode node (BEP 5 "read-only": it asks, answers nothing, and other
    /// nodes leave it out of their routing tables), custom `ServerSettings` (a request
    /// filter, store sizes), or a node of a simulated network (`examples/dht_sim`).
    ///
    /// `schedule` and `lookup_settle` play the part of the config's `announce_window` and
    /// `lookup_settle`. Waits for one round trip to the node's thread (to read its bound
    /// address).
    pub async fn from_mainline(dht: Dht, schedule: SlotSchedule, lookup_settle: Duration) -> Self {
        let dht = dht.as_async();
        let local_addr = dht.info().await.local_addr();
        Self {
            dht,
            local_addr,
            lookup_settle,
            lookup_want: DEFAULT_LOOKUP_WANT,
            lookup_memory: Mutex::new(lookup::LookupMemory::default()),
            announce_locks: Mutex::new(HashMap::new()),
            known_keys: Mutex::new(KnownKeys::default()),
            observer: OnceLock::new(),
            local: Mutex::new(LocalStore::new()),
            api_quota: Mutex::new(SourceQuota::new(QuotaLimits {
                window: schedule.window(),
                ..QuotaLimits::default()
            })),
            // Not installed in the caller's node: its ServerSettings are the caller's.
            filter: SourceFilter::new(QuotaLimits {
                window: schedule.window(),
                targets_per_source: DEFAULT_DHT_TARGETS_PER_SOURCE,
                ..QuotaLimits::default()
            }),
            own_ip: (!local_addr.ip().is_unspecified()).then_some(*local_addr.ip()),
            schedule,
        }
    }

    /// Sets how many distinct peers a lookup is content with (default
    /// [`DEFAULT_LOOKUP_WANT`], at least 1): it returns as soon as it has them, and a key
    /// whose last lookup had them is next looked up in the two freshest slots first.
    pub fn with_lookup_want(mut self, want: usize) -> Self {
        self.lookup_want = want.max(1);
        self
    }

    /// Sets the observer told of announces and lookups; only the first call takes
    /// effect (returns `false` after that).
    pub fn set_observer(&self, observer: Arc<dyn DhtObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// The UDP address the DHT node is bound to (`0.0.0.0:PORT` when bound to all
    /// interfaces). Give it to other grapes as a bootstrap node (`--bn`).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local_addr
    }

    /// The time-slot rules this node announces and looks up with.
    pub fn schedule(&self) -> &SlotSchedule {
        &self.schedule
    }

    /// The mainline node itself, for what this type does not wrap (`info`, `to_bootstrap`,
    /// raw `get_peers` without time slots, ...).
    pub fn inner(&self) -> &AsyncDht {
        &self.dht
    }

    /// Whether the node has found other DHT nodes: runs a `find_node` for its own id and
    /// answers `true` if any node answered. Takes up to mainline's request timeout (2 s)
    /// when a bootstrap node is down. The first grape of a private network answers `false`
    /// until another grape has bootstrapped from it.
    pub async fn bootstrapped(&self) -> bool {
        self.dht.bootstrapped().await
    }

    /// Announces `key` with `port` into the current time slot (BEP 5 `announce_peer` with
    /// an explicit port; the DHT nodes record the IP they see the request come from).
    ///
    /// Returns the number of slot infohashes announced to (always 1: mainline 8.0.1 does
    /// not report how many nodes stored an announce). The announce is visible to lookups
    /// for 3/4 to 4/4 of the announce window; renew it within
    /// [`SlotSchedule::renew_within`].
    ///
    /// # Errors
    ///
    /// [`GrapeError::NoNodes`] when the node knows no other node (not bootstrapped),
    /// [`GrapeError::Timeout`] when no node answered, [`GrapeError::Refused`].
    pub async fn announce(&self, key: &str, port: u16) -> Result<usize, GrapeError> {
        self.announce_at(key, port, unix_now()).await
    }

    /// [`Self::announce`] as if the time were `unix_time` (since the Unix epoch): the slot
    /// comes from this time instead of the clock.
    pub async fn announce_at(
        &self,
        key: &str,
        port: u16,
        unix_time: Duration,
    ) -> Result<usize, GrapeError> {
        let infohash = self.schedule.announce_infohash(key, unix_time);
        let target = Id::from(infohash);
        let peer = SocketAddrV4::new(self.own_ip().await, port);
        let kept = self
            .local()
            .announce(
                infohash,
                peer,
                unix_now(),
                unix_time + self.schedule.vanish_within(),
            )
            .is_ok();
        let lock = self.announce_lock(infohash);
        let _guard = lock.lock().await;
        let started = Instant::now();
        let result = tokio::time::timeout(
            DEFAULT_PUT_TIMEOUT,
            self.dht.announce_peer(target, Some(port)),
        )
        .await;
        let outcome = match result {
            Ok(Ok(_)) => {
                tracing::debug!(key, port, %target, elapsed = ?started.elapsed(), "announced");
                Ok(1)
            }
            // Nobody else to store it (a lone grape): this grape serves it itself.
            Ok(Err(mainline::errors::PutQueryError::NoClosestNodes)) if kept => {
                tracing::debug!(
                    key,
                    port,
                    "announce kept by this grape only (no other DHT node)"
                );
                Ok(0)
            }
            Ok(Err(e)) => Err(GrapeError::from_put(target, e)),
            Err(_) => Err(GrapeError::Timeout { target }),
        };
        if let Some(observer) = self.observer.get() {
            observer.announced(outcome.is_ok(), started.elapsed());
        }
        outcome
    }

    /// Whether the API client at `source` may make this grape store `entry` of `target`
    /// (the per-source quota of [`crate::quota`]: `entry` is the announced port, 0 for a
    /// put); an announce or put through the HTTP API asks first.
    pub fn admit(
        &self,
        source: std::net::IpAddr,
        target: &Infohash,
        entry: u64,
    ) -> Result<(), OverQuota> {
        let mut quota = match self.api_quota.lock() {
            Ok(quota) => quota,
            Err(poisoned) => poisoned.into_inner(),
        };
        quota.admit(source, *target, entry, unix_now())
    }

    /// Requests the DHT port refused so far (over a source's rate or store quota).
    pub fn refused_requests(&self) -> u64 {
        self.filter.refused()
    }

    fn local(&self) -> std::sync::MutexGuard<'_, LocalStore> {
        match self.local.lock() {
            Ok(local) => local,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The IPv4 address this node's own announces are served with from its local store:
    /// the configured public IP or specific bind address, else the public address mainline
    /// learned from its peers, else loopback (a grape on `0.0.0.0` that knows no better
    /// serves its own host).
    async fn own_ip(&self) -> Ipv4Addr {
        match self.own_ip {
            Some(ip) => ip,
            None => self.public_ip().await.unwrap_or(Ipv4Addr::LOCALHOST),
        }
    }

    fn announce_lock(&self, infohash: Infohash) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.announce_locks.lock() {
            Ok(locks) => locks,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.retain(|_, lock| lock.strong_count() > 0);
        if let Some(lock) = locks.get(&infohash).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(infohash, Arc::downgrade(&lock));
        lock
    }

    /// Looks up the peers announced for `key` in the current slot and the three before it
    /// (BEP 5 `get_peers` on the slot infohashes).
    ///
    /// Returns the de-duplicated union, sorted by IP then port; empty when nobody
    /// announced. Stops as soon as it has the number of distinct peers it wants (default
    /// 32), when no new peer came for the settle period (config `lookup_settle`) after the
    /// last new one, when its queries ended, or at `deadline`; asks the two older slots
    /// only when needed (see the [module doc](self)). Each node returns at most 10 random
    /// peers per infohash, so a key with many announcers is sampled, not listed.
    ///
    /// # Errors
    ///
    /// None at present (a lookup that finds nothing answers an empty list); the `Result`
    /// leaves room for a shut-down node.
    pub async fn lookup(
        &self,
        key: &str,
        deadline: Duration,
    ) -> Result<Vec<SocketAddrV4>, GrapeError> {
        self.lookup_at(key, unix_now(), deadline).await
    }

    /// [`Self::lookup`] as if the time were `unix_time` (since the Unix epoch).
    pub async fn lookup_at(
        &self,
        key: &str,
        unix_time: Duration,
        deadline: Duration,
    ) -> Result<Vec<SocketAddrV4>, GrapeError> {
        Ok(self.lookup_report(key, unix_time, deadline).await.peers)
    }

    /// [`Self::lookup_at`], with how the lookup went: slots asked, why it stopped, time.
    pub async fn lookup_report(
        &self,
        key: &str,
        unix_time: Duration,
        deadline: Duration,
    ) -> LookupReport {
        let started = Instant::now();
        let mut hashes = self.schedule.lookup_infohashes(key, unix_time).to_vec();
        hashes.dedup(); // only near the epoch
                        // What this grape holds itself is the first batch (docs/protocol.md §1.3).
        let held: BTreeSet<SocketAddrV4> = self.local().peers(&hashes, unix_now());
        let abundant = lock_or_recover(&self.lookup_memory).abundant(key);
        let fresh_count = if abundant {
            2.min(hashes.len())
        } else {
            hashes.len()
        };
        let older_hashes = hashes.split_off(fresh_count);
        let fresh = hashes
            .iter()
            .map(|h| self.dht.get_peers(Id::from(*h)))
            .collect();
        let older = (!older_hashes.is_empty()).then_some(move || {
            older_hashes
                .iter()
                .map(|h| self.dht.get_peers(Id::from(*h)))
                .collect()
        });
        let params = lookup::Collect {
            want: self.lookup_want,
            settle: self.lookup_settle,
            deadline,
        };
        let (peers, slots_asked, end) = lookup::collect(held, fresh, older, params).await;
        lock_or_recover(&self.lookup_memory).record(key, peers.len() >= self.lookup_want);
        let took = started.elapsed();
        tracing::debug!(key, found = peers.len(), slots_asked, ?end, ?took, "lookup");
        if let Some(observer) = self.observer.get() {
            observer.looked_up(peers.len(), took);
        }
        LookupReport {
            peers: peers.into_iter().collect(),
            slots_asked,
            end,
            took,
        }
    }

    /// Stores an immutable item (BEP 44 `put` without a key). Returns its target,
    /// `SHA-1("{len}:{v}")`.
    ///
    /// # Errors
    ///
    /// [`GrapeError::InvalidItem`] for a value over 1000 bytes, otherwise as
    /// [`Self::announce`].
    pub async fn put_immutable(&self, value: &[u8]) -> Result<Id, GrapeError> {
        bep44::check_sizes(value, None)?;
        let target = bep44::immutable_target(value);
        let kept = self
            .local()
            .put_immutable(target, value, unix_now())
            .is_ok();
        match tokio::time::timeout(DEFAULT_PUT_TIMEOUT, self.dht.put_immutable(value)).await {
            Ok(Ok(target)) => Ok(target),
            // Nobody else to store it (a lone grape): this grape serves it itself.
            Ok(Err(mainline::errors::PutQueryError::NoClosestNodes)) if kept => Ok(target),
            Ok(Err(e)) => Err(GrapeError::from_put(target, e)),
            Err(_) => Err(GrapeError::Timeout { target }),
        }
    }

    /// Fetches an immutable item by target (BEP 44 `get`): the first value that hashes to
    /// the target, or `None` if none arrived before the query ended or `deadline` passed.
    pub async fn get_immutable(&self, target: Id, deadline: Duration) -> Option<Box<[u8]>> {
        if let Some(value) = self.local().immutable(&target, unix_now()) {
            return Some(value.into());
        }
        tokio::time::timeout(deadline, self.dht.get_immutable(target))
            .await
            .ok()
            .flatten()
    }

    /// Stores a mutable item that the client signed (BEP 44 `put` with `k`, `sig`, `seq`,
    /// optional `salt` and `cas`). Build `item` with [`bep44::verify_mutable`]. Returns
    /// the number of nodes that stored it; the target is `item.target()`.
    ///
    /// This grape remembers the item's key and salt by target, so that
    /// [`Self::known_key`] (and `/get` by target alone) can find it later.
    ///
    /// # Errors
    ///
    /// [`GrapeError::Conflict`] when `seq` is not newer than what the nodes hold or `cas`
    /// does not match, otherwise as [`Self::announce`].
    pub async fn put_mutable(
        &self,
        item: MutableItem,
        cas: Option<i64>,
    ) -> Result<u32, GrapeError> {
        let target = *item.target();
        let (k, salt) = (*item.key(), item.salt().map(Box::<[u8]>::from));
        let kept = self.local().put(item.clone(), unix_now()).is_ok();
        if kept {
            self.remember_key(target, k, salt.as_deref());
        }
        match tokio::time::timeout(DEFAULT_PUT_TIMEOUT, self.dht.put_mutable(item, cas)).await {
            Ok(Ok(outcome)) => {
                self.remember_key(target, k, salt.as_deref());
                Ok(outcome.stored_at)
            }
            // Nobody else to store it (a lone grape): this grape serves it itself.
            Ok(Err(mainline::errors::PutMutableError::Query(
                mainline::errors::PutQueryError::NoClosestNodes,
            ))) if kept => Ok(0),
            Ok(Err(e)) => Err(GrapeError::from_put_mutable(target, e)),
            Err(_) => Err(GrapeError::Timeout { target }),
        }
    }

    /// Fetches the most recent mutable item for a public key and salt (BEP 44 `get`):
    /// the item with the highest `seq` (then the greatest value) among those that arrive
    /// until the query ends, a settle period after the first item, or `deadline`.
    pub async fn get_mutable(
        &self,
        k: &[u8; 32],
        salt: Option<&[u8]>,
        deadline: Duration,
    ) -> Option<MutableItem> {
        let salt = salt.filter(|s| !s.is_empty());
        let stream = self.dht.get_mutable(k, salt, None);
        let target = crate::bep44::mutable_target(k, salt);
        let mut best: Option<MutableItem> = self.local().item(&target, unix_now()).cloned();
        let deadline = if best.is_none() {
            deadline
        } else {
            deadline.min(self.lookup_settle)
        };
        collect_settled(
            vec![stream],
            deadline,
            self.lookup_settle,
            |_| true,
            |item| {
                let newer = best.as_ref().is_none_or(|b| {
                    item.seq() > b.seq() || (item.seq() == b.seq() && item.value() > b.value())
                });
                if newer {
                    best = Some(item);
                }
            },
        )
        .await;
        if let Some(item) = &best {
            self.remember_key(*item.target(), *k, salt);
        }
        best
    }

    /// The public key and salt of a mutable target that was put or fetched through this
    /// grape, if it is still remembered (the last 1024 targets).
    pub fn known_key(&self, target: &Id) -> Option<MutableKey> {
        let known = match self.known_keys.lock() {
            Ok(known) => known,
            Err(poisoned) => poisoned.into_inner(),
        };
        known.by_target.get(target).cloned()
    }

    fn remember_key(&self, target: Id, k: [u8; 32], salt: Option<&[u8]>) {
        let mut known = match self.known_keys.lock() {
            Ok(known) => known,
            Err(poisoned) => poisoned.into_inner(),
        };
        known.insert(target, k, salt);
    }

    /// The node's IPv4 address as other nodes see it, if it has learned it (or was given
    /// `public_ip`).
    pub async fn public_ip(&self) -> Option<Ipv4Addr> {
        self.dht.info().await.public_address().map(|a| *a.ip())
    }
}

/// Drains `streams` concurrently into `sink` until all have ended, `settle` after the
/// first item for which `counts` is true, or `deadline` from now, whichever comes first.
async fn collect_settled<S, T>(
    mut streams: Vec<S>,
    deadline: Duration,
    settle: Duration,
    counts: impl Fn(&T) -> bool,
    mut sink: impl FnMut(T),
) where
    S: Stream<Item = T> + Unpin,
{
    let hard_stop = Instant::now() + deadline;
    let mut stop = hard_stop;
    let mut settling = false;
    loop {
        let next = poll_fn(|cx| {
            let mut i = 0;
            while i < streams.len() {
                match Pin::new(&mut streams[i]).poll_next(cx) {
                    Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
                    Poll::Ready(None) => {
                        streams.swap_remove(i);
                    }
                    Poll::Pending => i += 1,
                }
            }
            if streams.is_empty() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        });
        match tokio::time::timeout_at(stop, next).await {
            Ok(Some(item)) => {
                if !settling && counts(&item) {
                    settling = true;
                    stop = hard_stop.min(Instant::now() + settle);
                }
                sink(item);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::stream;

    type TestStream = Pin<Box<dyn Stream<Item = u32> + Send>>;

    /// A stream that yields `items`, each after its delay (in ms, from the previous item),
    /// then ends after `end_after` more ms, or never ends if `None`.
    fn timed(items: Vec<(u64, u32)>, end_after: Option<u64>) -> TestStream {
        let items = stream::unfold(items.into_iter(), |mut it| async move {
            let (delay, item) = it.next()?;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Some((item, it))
        });
        let tail = stream::unfold(end_after, |end| async move {
            match end {
                Some(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    None
                }
                None => {
                    std::future::pending::<()>().await;
                    None
                }
            }
        });
        Box::pin(futures_lite::StreamExt::chain(items, tail))
    }

    async fn run(streams: Vec<TestStream>, deadline: u64, settle: u64) -> (Vec<u32>, u64) {
        let start = Instant::now();
        let mut got = Vec::new();
        collect_settled(
            streams,
            Duration::from_millis(deadline),
            Duration::from_millis(settle),
            |&x| x != 0,
            |x| got.push(x),
        )
        .await;
        (got, start.elapsed().as_millis() as u64)
    }

    // These tests run on tokio's paused clock: timers fire in virtual time, so the timing
    // assertions are exact and the tests take no real time.

    #[tokio::test(start_paused = true)]
    async fn ends_when_all_streams_end() {
        let s = vec![timed(vec![(10, 1)], Some(5)), timed(vec![], Some(20))];
        let (got, ms) = run(s, 2000, 150).await;
        assert_eq!(got, vec![1]);
        assert_eq!(ms, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn settles_after_first_counted_item() {
        // A dead node keeps the stream open; the settle period ends the collection.
        let s = vec![
            timed(vec![(60, 1), (50, 2), (200, 3)], None),
            timed(vec![(100, 4)], None),
        ];
        let (got, ms) = run(s, 2000, 150).await;
        assert_eq!(got, vec![1, 4, 2]);
        assert_eq!(ms, 60 + 150);
    }

    #[tokio::test(start_paused = true)]
    async fn uncounted_items_do_not_start_settling() {
        // Empty batches (0 here) do not start the settle period.
        let s = vec![timed(vec![(10, 0), (300, 5)], None)];
        let (got, ms) = run(s, 2000, 150).await;
        assert_eq!(got, vec![0, 5]);
        assert_eq!(ms, 310 + 150);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_caps_everything() {
        let s = vec![timed(vec![(1900, 1)], None)];
        let (got, ms) = run(s, 2000, 150).await;
        assert_eq!(got, vec![1]);
        assert_eq!(ms, 2000);
        let (got, ms) = run(vec![timed(vec![], None)], 500, 150).await;
        assert!(got.is_empty());
        assert_eq!(ms, 500);
    }

    #[tokio::test(start_paused = true)]
    async fn no_streams_returns_at_once() {
        let (got, ms) = run(vec![], 2000, 150).await;
        assert!(got.is_empty());
        assert_eq!(ms, 0);
    }

    #[test]
    fn known_keys_are_bounded() {
        let mut known = KnownKeys::default();
        for i in 0..(DEFAULT_KNOWN_KEYS + 10) {
            let mut t = [0u8; 20];
            t[..8].copy_from_slice(&(i as u64).to_be_bytes());
            known.insert(Id::from(t), [1; 32], None);
        }
        assert_eq!(known.by_target.len(), DEFAULT_KNOWN_KEYS);
        assert_eq!(known.order.len(), DEFAULT_KNOWN_KEYS);
        // The oldest went first.
        assert!(!known.by_target.contains_key(&Id::from([0u8; 20])));
        // Re-inserting a known target does not grow the order.
        let last = *known.order.back().unwrap();
        known.insert(last, [2; 32], Some(b"s"));
        assert_eq!(known.order.len(), DEFAULT_KNOWN_KEYS);
        assert_eq!(known.by_target[&last].k, [2; 32]);
    }

    #[test]
    fn bootstrap_resolution() {
        assert_eq!(
            resolve_bootstrap(&["127.0.0.1:20001".to_owned()]).unwrap(),
            vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, 20001)]
        );
        assert!(matches!(
            resolve_bootstrap(&["127.0.0.1".to_owned()]),
            Err(GrapeError::Bootstrap { node, .. }) if node == "127.0.0.1"
        ));
        assert!(matches!(
            resolve_bootstrap(&["[::1]:20001".to_owned()]),
            Err(GrapeError::Bootstrap { .. })
        ));
    }
}
