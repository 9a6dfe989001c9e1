//! A response cache for the relay: the same request within a short time gets the node's
//! earlier answer without asking the node again.
//!
//! The key is the service key and the request's **canonical JSON** (object keys sorted,
//! no whitespace), so that `{"action":"account_info","account":"A"}` and the same for
//! account `B` are different entries (NanoRPCProxy keys on the action alone, which serves
//! one account's answer for another's). How long an answer is kept depends on the action
//! ([`ttl`]):
//!
//! | actions | TTL | why |
//! |---|---|---|
//! | `nano_to_raw`, `raw_to_nano`, `account_key`, `validate_account_number`, `block_hash`, `work_validate` | 1 h | pure functions of the request |
//! | `version` | 60 s | changes only when the node is upgraded |
//! | `block_info`, `blocks_info` whose blocks are all `"confirmed": "true"` | 60 s | a confirmed block's contents never change |
//! | `available_supply`, `representatives`, `confirmation_quorum`, `delegators*`, `frontier_count`, `active_difficulty`, `telemetry`, `uptime`, `representatives_online` | 10 s | network-wide figures that move slowly |
//! | every other read-only action (`block_count`, `account_*`, `receivable`, ...) | 1 s | ledger state, changes with every block |
//! | `process`, `work_generate`, `block_confirm`, anything unknown | never | not reads |
//!
//! The cache checks every request against the relay's [`Policy`] first, once: the key is
//! made from the request as the policy rewrites it (`count` capped, `account_filter` and
//! `uncached` removed), and a request the policy refuses is answered with the refusal and
//! never reaches the cache or the node. The [`CheckedRequest`] goes on to the relay, which
//! posts it without a second check.
//!
//! Only answers with HTTP 200 and no `"error"` field are kept; refusals and failures
//! never are. A cached answer is logged (`answered from cache`) and counted in
//! [`crate::metrics`].
//!
//! # Identical misses share one node request
//!
//! While a cacheable request is on its way to the node, identical requests (same key)
//! wait for its answer instead of asking the node too: a thousand wallets asking
//! `block_count` in the same millisecond cost the node one request. If the request that
//! asks is dropped (its caller went away), one of the waiters asks in its place.
//!
//! # After a `process`
//!
//! A `process` changes the ledger entries its block names ([`CheckedRequest::touched_keys`]:
//! the block's account, its `link`, `previous`, `representative`, ...). From the moment it
//! is sent until the node has answered (or the relay gave up), and for any read that began
//! before that answer, a cached answer whose request names one of those entries
//! ([`CheckedRequest::ledger_keys`]) is not served: the next read of the wallet's account
//! goes to the node, whether the `process` succeeded or not (a refused block may have been
//! published through another node all the same). Reads that name none of them stay cached.
//!
//! A caller can also ask for a read from the node with `"uncached": "true"` (the policy's
//! rule 10, `docs/protocol.md` §4.2); its answer replaces the cached one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::checked::{CheckedRequest, LedgerKey};
use super::policy::Policy;
use super::relay::Forward;
use crate::metrics::WorkerMetrics;
use crate::service::{Handler, Reply, Request};

pub use crate::defaults::DEFAULT_CACHE_ENTRIES;

/// How long an answer to `action` is kept (`None`: never cached); `answer` is the node's
/// JSON answer, used for `block_info` and `blocks_info` (kept longer when confirmed).
pub fn ttl(action: &str, answer: &Value) -> Option<Duration> {
    const SECOND: Duration = Duration::from_secs(1);
    Some(match action {
        "nano_to_raw"
        | "raw_to_nano"
        | "account_key"
        | "validate_account_number"
        | "block_hash"
        | "work_validate" => Duration::from_secs(3600),
        "version" => Duration::from_secs(60),
        "block_info" if is_true(answer.get("confirmed")) => Duration::from_secs(60),
        "blocks_info" if all_confirmed(answer) => Duration::from_secs(60),
        "available_supply"
        | "representatives"
        | "representatives_online"
        | "confirmation_quorum"
        | "delegators"
        | "delegators_count"
        | "frontier_count"
        | "active_difficulty"
        | "telemetry"
        | "uptime" => Duration::from_secs(10),
        action if super::actions::READ_ONLY_ACTIONS.contains(&action) => SECOND,
        _ => return None,
    })
}

fn is_true(value: Option<&Value>) -> bool {
    matches!(value, Some(Value::String(s)) if s == "true") || value == Some(&Value::Bool(true))
}

/// Whether every block of a `blocks_info` answer is confirmed (and there is at least one).
fn all_confirmed(answer: &Value) -> bool {
    match answer.get("blocks") {
        Some(Value::Object(blocks)) if !blocks.is_empty() => {
            blocks.values().all(|b| is_true(b.get("confirmed")))
        }
        _ => false,
    }
}

/// The cache key of a request: service key and canonical JSON, or `None` when the body
/// is not a JSON object with a string action (such requests are not cached).
///
/// [`Cached`] makes its keys from [`CheckedRequest::cache_key`] instead, which needs no
/// parse; this is the same key for a body that needs no rewrite.
pub fn cache_key(service: &str, body: &[u8]) -> Option<(String, String)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let action = value.get("action")?.as_str()?.to_string();
    // serde_json's map is ordered by key (no `preserve_order`), so this is canonical.
    Some((action, format!("{service}\n{value}")))
}

/// The longest TTL of an answer that depends on ledger entries a `process` can change
/// (confirmed `block_info`: its `successor` changes): a touch older than that can no
/// longer make a cached answer stale, and is forgotten.
const LONGEST_LEDGER_TTL: Duration = Duration::from_secs(60);

/// How many touched entries [`Touches`] holds before it first forgets the old ones; after
/// a sweep, the next comes when the map has doubled, so that sweeping stays a constant
/// cost per touch however many entries are recent.
const TOUCHES_SWEEP_AT: usize = 4096;

#[derive(Clone)]
struct Entry {
    status: u16,
    body: Arc<Vec<u8>>,
    ttl: Duration,
    /// [`Touches::now`] when the request that got this answer was sent.
    asked_at: u64,
    /// The ledger entries the request names.
    keys: Arc<[LedgerKey]>,
}

struct PerEntryTtl;

impl moka::Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// When each ledger entry was last touched by a `process`, on a logical clock that ticks
/// once per touch: an answer asked for at tick `t` is stale when one of its entries was
/// touched after `t`.
#[derive(Default)]
struct Touches {
    clock: AtomicU64,
    /// The clock at the latest touch (0: none yet), read without the lock.
    latest: AtomicU64,
    touched: Mutex<Touched>,
}

/// The touched entries (with their tick and time) and the size at which to sweep next.
struct Touched {
    at: HashMap<LedgerKey, (u64, Instant)>,
    sweep_at: usize,
}

impl Default for Touched {
    fn default() -> Self {
        Self {
            at: HashMap::new(),
            sweep_at: TOUCHES_SWEEP_AT,
        }
    }
}

impl Touches {
    /// The current tick: take it before asking the node.
    fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Touched> {
        self.touched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks `keys` as changed now.
    fn touch(&self, keys: &[LedgerKey]) {
        if keys.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut touched = self.lock();
        let tick = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        if touched.at.len() >= touched.sweep_at {
            touched
                .at
                .retain(|_, (_, at)| now.duration_since(*at) <= LONGEST_LEDGER_TTL);
            touched.sweep_at = (2 * touched.at.len()).max(TOUCHES_SWEEP_AT);
        }
        for key in keys {
            touched.at.insert(*key, (tick, now));
        }
        self.latest.store(tick, Ordering::SeqCst);
    }

    /// Whether an answer asked for at `asked_at` about `keys` is still good.
    fn fresh(&self, keys: &[LedgerKey], asked_at: u64) -> bool {
        if keys.is_empty() || self.latest.load(Ordering::SeqCst) <= asked_at {
            return true;
        }
        let touched = self.lock();
        keys.iter().all(|key| {
            touched
                .at
                .get(key)
                .is_none_or(|(tick, _)| *tick <= asked_at)
        })
    }
}

/// One request on its way to the node, which identical requests wait for.
struct Flight {
    asked_at: u64,
    reply: OnceCell<Reply>,
}

/// A [`Handler`] that checks every request against a [`Policy`] once, answers repeated
/// read-only requests from a cache (see the module documentation for keys, TTLs,
/// coalescing and `process`), and forwards the rest to the inner [`Forward`]. It also
/// times every request the inner layer answers, as the node latency of
/// [`WorkerMetrics`].
pub struct Cached<H> {
    inner: H,
    policy: Policy,
    cache: Option<Cache<String, Entry>>,
    metrics: Option<Arc<WorkerMetrics>>,
    in_flight: Mutex<HashMap<String, Arc<Flight>>>,
    touches: Touches,
}

impl<H> std::fmt::Debug for Cached<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("entries", &self.cache.as_ref().map(|c| c.entry_count()))
            .finish_non_exhaustive()
    }
}

impl<H> Cached<H> {
    /// Wraps `inner`: requests are checked against `policy`, and at most `max_entries`
    /// answers are kept (0: no cache, only the check and the timing), reporting to
    /// `metrics`.
    pub fn new(
        inner: H,
        policy: Policy,
        max_entries: u64,
        metrics: Option<Arc<WorkerMetrics>>,
    ) -> Self {
        let cache = (max_entries > 0).then(|| {
            Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build()
        });
        Self {
            inner,
            policy,
            cache,
            metrics,
            in_flight: Mutex::new(HashMap::new()),
            touches: Touches::default(),
        }
    }

    /// The inner layer.
    pub fn inner(&self) -> &H {
        &self.inner
    }

    /// The policy requests are checked against.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn in_flight(&self) -> MutexGuard<'_, HashMap<String, Arc<Flight>>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn hit(&self, peer: SocketAddr, action: &str) {
        tracing::debug!(%peer, %action, "answered from cache");
        if let Some(metrics) = &self.metrics {
            metrics.cache_hit(action);
        }
    }
}

impl<H: Forward> Cached<H> {
    /// The inner layer's answer, timed.
    async fn ask(&self, request: CheckedRequest, peer: SocketAddr) -> Reply {
        let started = Instant::now();
        let reply = self.inner.forward(request, peer).await;
        if let Some(metrics) = &self.metrics {
            if matches!(reply, Reply::Answer { .. }) {
                metrics.node_latency(started.elapsed());
            }
        }
        reply
    }

    /// Asks the node and keeps a cacheable answer under `key`, unless one of `keys` was
    /// touched since `asked_at`.
    async fn ask_and_keep(
        &self,
        cache: &Cache<String, Entry>,
        key: String,
        keys: Arc<[LedgerKey]>,
        asked_at: u64,
        request: CheckedRequest,
        peer: SocketAddr,
    ) -> Reply {
        let action = request.action().to_string();
        let reply = self.ask(request, peer).await;
        if let Reply::Answer { status: 200, body } = &reply {
            if let Ok(answer) = serde_json::from_slice::<Value>(body) {
                if answer.get("error").is_none() && self.touches.fresh(&keys, asked_at) {
                    if let Some(ttl) = ttl(&action, &answer) {
                        let entry = Entry {
                            status: 200,
                            body: Arc::new(body.clone()),
                            ttl,
                            asked_at,
                            keys,
                        };
                        cache.insert(key, entry);
                    }
                }
            }
        }
        reply
    }
}

impl<H: Forward> Handler for Cached<H> {
    async fn handle(&self, request: Request) -> Reply {
        let peer = request.peer;
        let checked = match self.policy.check(&request.body) {
            Ok(checked) => checked,
            Err(refusal) => {
                tracing::debug!(%peer, %refusal, "nano relay refused a request");
                return Reply::Failure(refusal.into());
            }
        };
        let Some(cache) = &self.cache else {
            return self.ask(checked, peer).await;
        };
        let touched = checked.touched_keys();
        if !touched.is_empty() {
            // Before (so that nothing cached is served while it is on its way) and after
            // (so that no read that began before the node's answer is kept or served),
            // also when this request is dropped on the way: the node may have the block.
            self.touches.touch(&touched);
            let _after = TouchOnDrop {
                touches: &self.touches,
                keys: &touched,
            };
            return self.ask(checked, peer).await;
        }
        if ttl(checked.action(), &Value::Null).is_none() {
            return self.ask(checked, peer).await;
        }
        let key = format!("{}\n{}", request.key, checked.cache_key());
        let keys: Arc<[LedgerKey]> = checked.ledger_keys().into();
        if checked.uncached() {
            let asked_at = self.touches.now();
            return self
                .ask_and_keep(cache, key, keys, asked_at, checked, peer)
                .await;
        }
        if let Some(entry) = cache.get(&key) {
            if self.touches.fresh(&entry.keys, entry.asked_at) {
                self.hit(peer, checked.action());
                return Reply::Answer {
                    status: entry.status,
                    body: entry.body.as_ref().clone(),
                };
            }
        }
        // Join the identical request on its way to the node, or be it.
        let now = self.touches.now();
        let flight = {
            let mut in_flight = self.in_flight();
            let flight = in_flight.entry(key.clone()).or_insert_with(|| {
                Arc::new(Flight {
                    asked_at: now,
                    reply: OnceCell::new(),
                })
            });
            if !self.touches.fresh(&keys, flight.asked_at) {
                // Sent before a process touched what it reads: start afresh.
                *flight = Arc::new(Flight {
                    asked_at: now,
                    reply: OnceCell::new(),
                });
            }
            flight.clone()
        };
        let action = checked.action().to_string();
        let asked = AtomicBool::new(false);
        let _leave = Leave {
            cached: self,
            key: &key,
            flight: &flight,
            asked: &asked,
        };
        let reply = flight
            .reply
            .get_or_init(|| {
                asked.store(true, Ordering::Relaxed);
                self.ask_and_keep(cache, key.clone(), keys, flight.asked_at, checked, peer)
            })
            .await
            .clone();
        if !asked.load(Ordering::Relaxed) {
            self.hit(peer, &action);
        }
        reply
    }
}

/// Touches `keys` when dropped: after a `process` was answered, or dropped on its way.
struct TouchOnDrop<'a> {
    touches: &'a Touches,
    keys: &'a [LedgerKey],
}

impl Drop for TouchOnDrop<'_> {
    fn drop(&mut self) {
        self.touches.touch(self.keys);
    }
}

/// Takes a [`Flight`] out of the in-flight map when the request that asked the node for
/// it is done, or dropped before it was (then a waiter, if any, asks in its place, and
/// a new identical request starts a new flight).
struct Leave<'a, H> {
    cached: &'a Cached<H>,
    key: &'a str,
    flight: &'a Arc<Flight>,
    asked: &'a AtomicBool,
}

impl<H> Drop for Leave<'_, H> {
    fn drop(&mut self) {
        if !self.asked.load(Ordering::Relaxed) {
            return;
        }
        let mut in_flight = self.cached.in_flight();
        if in_flight
            .get(self.key)
            .is_some_and(|current| Arc::ptr_eq(current, self.flight))
        {
            in_flight.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::AtomicUsize;

    /// Answers every request with its own body and counts the calls.
    #[derive(Default)]
    struct Echo(AtomicUsize);

    impl Forward for Echo {
        fn forward(
            &self,
            request: CheckedRequest,
            _peer: SocketAddr,
        ) -> impl std::future::Future<Output = Reply> + Send {
            self.0.fetch_add(1, Ordering::SeqCst);
            async move { Reply::ok(request.body().to_vec()) }
        }
    }

    fn request(body: &str) -> Request {
        Request {
            key: "nano_rpc".into(),
            body: body.as_bytes().to_vec(),
            peer: "192.0.2.1:1".parse().expect("address"),
        }
    }

    #[tokio::test]
    async fn policy_rewrites_make_one_entry_and_refused_requests_never_pass() {
        let cached = Cached::new(Echo::default(), Policy::read_only(), 100, None);
        let a = r#"{"action":"account_history","account":"A","count":"5000"}"#;
        let b = r#"{"action":"account_history","account":"A","count":"1000"}"#;
        cached.handle(request(a)).await;
        cached.handle(request(b)).await;
        assert_eq!(
            cached.inner().0.load(Ordering::SeqCst),
            1,
            "same capped request"
        );
        // Repeated keys: the policy refuses them, before the cache and the node.
        let c = r#"{"action":"account_balance","account":"B"}"#;
        cached.handle(request(c)).await;
        let twice = r#"{"action":"account_balance","account":"A","account":"B"}"#;
        assert!(matches!(
            cached.handle(request(twice)).await,
            Reply::Failure(_)
        ));
        assert_eq!(cached.inner().0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn touches_make_older_answers_stale_and_are_forgotten_in_time() {
        let touches = Touches::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let before = touches.now();
        assert!(touches.fresh(&[a], before));
        touches.touch(&[a]);
        assert!(!touches.fresh(&[a], before));
        assert!(touches.fresh(&[b], before), "b was not touched");
        assert!(touches.fresh(&[], before));
        assert!(touches.fresh(&[a], touches.now()), "asked after the touch");
    }

    #[test]
    fn touches_sweep_only_what_no_cached_answer_can_need() {
        let touches = Touches::default();
        let old = Instant::now()
            .checked_sub(LONGEST_LEDGER_TTL + Duration::from_secs(1))
            .expect("an instant a minute ago");
        {
            let mut touched = touches.lock();
            for i in 0..TOUCHES_SWEEP_AT as u32 {
                let mut key = [0u8; 32];
                key[..4].copy_from_slice(&i.to_be_bytes());
                touched.at.insert(key, (0, old));
            }
        }
        let recent = [9u8; 32];
        touches.touch(&[recent]);
        let touched = touches.lock();
        assert_eq!(touched.at.len(), 1, "the old touches are gone");
        assert!(touched.at.contains_key(&recent));
        assert_eq!(touched.sweep_at, TOUCHES_SWEEP_AT);
    }

    /// Answers after `delay`, counting the calls.
    struct Slow {
        calls: AtomicUsize,
        delay: Duration,
    }

    impl Forward for Slow {
        fn forward(
            &self,
            request: CheckedRequest,
            _peer: SocketAddr,
        ) -> impl std::future::Future<Output = Reply> + Send {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let delay = self.delay;
            async move {
                tokio::time::sleep(delay).await;
                Reply::ok(request.body().to_vec())
            }
        }
    }

    /// Polls `done` every millisecond for at most two seconds.
    async fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn a_dropped_asker_hands_over_to_a_waiter_and_no_flight_is_left() {
        let slow = Slow {
            calls: AtomicUsize::new(0),
            delay: Duration::from_millis(200),
        };
        let cached = Arc::new(Cached::new(slow, Policy::read_only(), 100, None));
        let body = r#"{"action":"block_count"}"#;
        let ask = || {
            let cached = cached.clone();
            tokio::spawn(async move { cached.handle(request(body)).await })
        };
        let asker = ask();
        wait_for("the first request to ask", || {
            cached.inner().calls.load(Ordering::SeqCst) == 1
        })
        .await;
        let waiter = ask();
        wait_for("the second request to wait", || {
            cached
                .in_flight()
                .values()
                .next()
                .is_some_and(|flight| Arc::strong_count(flight) == 3)
        })
        .await;
        asker.abort();
        assert_eq!(
            waiter.await.expect("waiter"),
            Reply::ok(body.as_bytes().to_vec())
        );
        assert_eq!(cached.inner().calls.load(Ordering::SeqCst), 2);
        assert!(cached.in_flight().is_empty());
        // Now cached.
        cached.handle(request(body)).await;
        assert_eq!(cached.inner().calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_process_dropped_on_its_way_still_touches_after() {
        let slow = Slow {
            calls: AtomicUsize::new(0),
            delay: Duration::from_secs(5),
        };
        let mut policy = Policy::read_only();
        policy.allow("process").expect("opt-in");
        let cached = Arc::new(Cached::new(slow, policy, 100, None));
        let body = serde_json::json!({
            "action": "process",
            "block": { "account": "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo" },
        })
        .to_string();
        let task = {
            let cached = cached.clone();
            tokio::spawn(async move { cached.handle(request(&body)).await })
        };
        wait_for("the process to be sent", || {
            cached.inner().calls.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(cached.touches.latest.load(Ordering::SeqCst), 1, "before");
        task.abort();
        assert!(task.await.is_err(), "aborted");
        assert_eq!(cached.touches.latest.load(Ordering::SeqCst), 2, "after");
    }

    #[test]
    fn key_is_canonical_and_includes_parameters() {
        let a = cache_key("nano_rpc", br#"{"account":"A","action":"account_info"}"#);
        let b = cache_key(
            "nano_rpc",
            br#"{ "action": "account_info", "account": "A" }"#,
        );
        let c = cache_key("nano_rpc", br#"{"action":"account_info","account":"B"}"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.map(|(action, _)| action).as_deref(), Some("account_info"));
        assert_eq!(cache_key("nano_rpc", b"[1]"), None);
        assert_eq!(cache_key("nano_rpc", br#"{"action":1}"#), None);
    }

    #[test]
    fn ttl_table() {
        let none = json!({});
        assert_eq!(ttl("block_count", &none), Some(Duration::from_secs(1)));
        assert_eq!(ttl("version", &none), Some(Duration::from_secs(60)));
        assert_eq!(ttl("nano_to_raw", &none), Some(Duration::from_secs(3600)));
        assert_eq!(ttl("telemetry", &none), Some(Duration::from_secs(10)));
        assert_eq!(ttl("process", &none), None);
        assert_eq!(ttl("work_generate", &none), None);
        assert_eq!(ttl("wallet_create", &none), None);
        assert_eq!(
            ttl("block_info", &json!({"confirmed": "true"})),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            ttl("block_info", &json!({"confirmed": "false"})),
            Some(Duration::from_secs(1))
        );
        let confirmed = json!({"blocks": {"A": {"confirmed": "true"}, "B": {"confirmed": "true"}}});
        let mixed = json!({"blocks": {"A": {"confirmed": "true"}, "B": {"confirmed": "false"}}});
        assert_eq!(
            ttl("blocks_info", &confirmed),
            Some(Duration::from_secs(60))
        );
        assert_eq!(ttl("blocks_info", &mixed), Some(Duration::from_secs(1)));
    }
}
