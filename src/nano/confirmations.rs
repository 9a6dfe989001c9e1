//! Confirmations for subscribers: the worker's fan-out of its node's `confirmation`
//! topic to subscription sessions (docs/protocol.md §8), each filtered by the accounts
//! that session asked for, within the operator's limits.
//!
//! ```text
//!   node websocket (super::ws, one subscription, every account)
//!        │ message
//!        ▼
//!   Confirmations::deliver: parse once (hash, account, destination, type)
//!        │ index: account → sessions          (an all-accounts session: every message)
//!        ▼
//!   per session: type filter → rate bucket → variant (block / election_info kept or not,
//!   encoded once per message and shared) → Outbox::push (full: dropped and counted)
//! ```
//!
//! # Rules, in the relay policy's spirit
//!
//! 1. **Accounts only.** Every entry of `accounts`, `accounts_add` and `accounts_del` must be
//!    a Nano account address (`nano_` or `xrb_`); the two prefixes name the same account,
//!    as in the node, which decodes addresses before it compares them.
//! 2. **Which blocks count.** A confirmation goes to a session that follows its `account`
//!    or the destination of a send (`block.link_as_account`), as nano-node's
//!    `confirmation_options::should_filter` does; once per session even when it follows
//!    both.
//! 3. **No all-accounts subscriptions** unless the operator opts in
//!    ([`ConfirmationsConfig::allow_all_accounts`]): one all-accounts session costs a
//!    message per confirmation of the network (public proxies refuse them for this fan-out).
//! 4. **Caps**: accounts per session ([`DEFAULT_MAX_ACCOUNTS`], the relay's array cap),
//!    sessions per worker ([`DEFAULT_MAX_SUBSCRIBERS`]), messages per second per session
//!    ([`DEFAULT_MAX_RATE`], a token bucket of one second's worth): over the rate a
//!    message is dropped and counted.
//! 5. **Slow readers lose messages**, never memory: each session has a queue of at most
//!    [`DEFAULT_QUEUE`] frames; a message for a full queue is dropped and counted, and the
//!    session is told in a `notice` before its next message.
//! 6. **The node's words.** Messages are the node's JSON, byte for byte when the session
//!    wants what the worker asked the node for (`block` and `election_info`); otherwise
//!    those members are removed and the rest is kept in the node's order and spelling.
//! 7. **No node, no sessions.** While the node's websocket is down, sessions are closed
//!    with `upstream_unreachable` (their callers move to another worker) and new ones are
//!    refused.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::checked::{ledger_key, LedgerKey};
use super::ws::{self, NodeWsEvent};
use crate::protocol::frame::PROTOCOL_VERSION;
use crate::protocol::subscription::{
    self, Confirmation, RefusalCode, Subscribe, Update, WorkerFrame, MAX_WORKER_FRAME_BYTES,
    TOPIC_CONFIRMATION,
};
use crate::subscription::{
    Accepted, DropReason, Outbox, Refusal, Session, SessionControl, SubscriptionService,
};

/// Accounts one session may follow: the relay's cap on an RPC request's `accounts`
/// (`DEFAULT_MAX_ARRAY_LEN`), so that a wallet that can ask `accounts_balances` for its
/// accounts can follow them too.
pub const DEFAULT_MAX_ACCOUNTS: usize = 500;

/// Sessions one worker serves: docs/benchmarks.md ("Confirmations") measured one worker
/// serving 1000 sessions at 100 confirmations a second with a few percent of a core.
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 1000;

/// Messages per second to one session: the live network confirms a few to a few tens of
/// blocks a second in all, so a session following its own accounts stays far below it.
pub const DEFAULT_MAX_RATE: u32 = 100;

/// Frames queued for one session: about a second of the rate, shared with other
/// sessions (the frames are reference-counted).
pub const DEFAULT_QUEUE: usize = 128;

/// Settings of [`Confirmations`].
#[derive(Debug, Clone)]
pub struct ConfirmationsConfig {
    /// The node's websocket, such as `ws://127.0.0.1:7078` (live) or `ws://[::1]:47000`
    /// (dev network).
    pub node_url: String,
    /// Accounts per session (default [`DEFAULT_MAX_ACCOUNTS`]).
    pub max_accounts: usize,
    /// Sessions at once (default [`DEFAULT_MAX_SUBSCRIBERS`]).
    pub max_subscribers: usize,
    /// Messages per second per session, 0 for no limit (default [`DEFAULT_MAX_RATE`]).
    pub max_rate: u32,
    /// Frames queued per session (default [`DEFAULT_QUEUE`]).
    pub queue: usize,
    /// Take subscriptions without `accounts` (every confirmation). Default false.
    pub allow_all_accounts: bool,
}

impl ConfirmationsConfig {
    /// The defaults, for the node websocket at `node_url`.
    pub fn new(node_url: impl Into<String>) -> Self {
        Self {
            node_url: node_url.into(),
            max_accounts: DEFAULT_MAX_ACCOUNTS,
            max_subscribers: DEFAULT_MAX_SUBSCRIBERS,
            max_rate: DEFAULT_MAX_RATE,
            queue: DEFAULT_QUEUE,
            allow_all_accounts: false,
        }
    }
}

/// The metrics of [`Confirmations`], registered in a worker's registry.
///
/// | metric | type | labels |
/// |---|---|---|
/// | `nano_connect_node_ws_up` | gauge | (1 while the node's websocket subscription is up) |
/// | `nano_connect_node_ws_connects_total` | counter | `outcome` = `up`, `down` |
/// | `nano_connect_node_ws_confirmations_total` | counter | (confirmations from the node) |
/// | `nano_connect_subscribers` | gauge | (sessions open) |
/// | `nano_connect_subscribed_accounts` | gauge | (accounts followed, summed over sessions) |
/// | `nano_connect_subscriptions_total` | counter | `outcome` = `accepted` or the refusal code |
/// | `nano_connect_subscription_messages_total` | counter | (messages queued to sessions) |
/// | `nano_connect_subscription_dropped_total` | counter | `reason` = `slow_reader`, `rate_limit` |
#[derive(Debug, Clone)]
pub struct ConfirmationsMetrics {
    up: IntGauge,
    connects: IntCounterVec,
    confirmations: IntCounter,
    subscribers: IntGauge,
    accounts: IntGauge,
    subscriptions: IntCounterVec,
    messages: IntCounter,
    dropped: IntCounterVec,
}

impl ConfirmationsMetrics {
    /// Fresh metrics, registered in `registry`.
    ///
    /// Errors: a metric of the same name is registered there already.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let up = IntGauge::new(
            "nano_connect_node_ws_up",
            "1 while the worker's subscription to its node's websocket is up",
        )?;
        let connects = IntCounterVec::new(
            Opts::new(
                "nano_connect_node_ws_connects_total",
                "Node websocket subscriptions that came up or went down",
            ),
            &["outcome"],
        )?;
        let confirmations = IntCounter::new(
            "nano_connect_node_ws_confirmations_total",
            "Confirmations received from the node's websocket",
        )?;
        let subscribers = IntGauge::new("nano_connect_subscribers", "Subscription sessions open")?;
        let accounts = IntGauge::new(
            "nano_connect_subscribed_accounts",
            "Accounts followed, summed over the open sessions",
        )?;
        let subscriptions = IntCounterVec::new(
            Opts::new(
                "nano_connect_subscriptions_total",
                "Subscribe requests, by outcome (accepted or the refusal code)",
            ),
            &["outcome"],
        )?;
        let messages = IntCounter::new(
            "nano_connect_subscription_messages_total",
            "Confirmation messages queued to sessions",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "nano_connect_subscription_dropped_total",
                "Confirmation messages dropped for sessions, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(connects.clone()))?;
        registry.register(Box::new(confirmations.clone()))?;
        registry.register(Box::new(subscribers.clone()))?;
        registry.register(Box::new(accounts.clone()))?;
        registry.register(Box::new(subscriptions.clone()))?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        Ok(Self {
            up,
            connects,
            confirmations,
            subscribers,
            accounts,
            subscriptions,
            messages,
            dropped,
        })
    }
}

/// Which `confirmation_type`s a session takes (the node's option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Types {
    active_quorum: bool,
    active_confirmation_height: bool,
    inactive: bool,
}

impl Types {
    /// The node's names, case-insensitive as in nano-node.
    fn parse(text: &str) -> Result<Self, Refusal> {
        let (q, h, i) = match text.to_ascii_lowercase().as_str() {
            "all" | "" => (true, true, true),
            "active" => (true, true, false),
            "active_quorum" => (true, false, false),
            "active_confirmation_height" => (false, true, false),
            "inactive" => (false, false, true),
            _ => {
                return Err(Refusal::new(
                    RefusalCode::UnknownTopic,
                    format!(
                        "confirmation_type {text:?} is not one of the node's (all, active, \
                         active_quorum, active_confirmation_height, inactive)"
                    ),
                ))
            }
        };
        Ok(Self {
            active_quorum: q,
            active_confirmation_height: h,
            inactive: i,
        })
    }

    fn takes(&self, kind: Option<&str>) -> bool {
        match kind {
            Some("active_quorum") => self.active_quorum,
            Some("active_confirmation_height") => self.active_confirmation_height,
            Some("inactive") => self.inactive,
            // Unknown or missing: only sessions that take everything.
            _ => self.active_quorum && self.active_confirmation_height && self.inactive,
        }
    }
}

/// One session's filter and state.
struct Entry {
    outbox: Arc<Outbox>,
    /// `None`: every account.
    accounts: Option<HashSet<LedgerKey>>,
    include_block: bool,
    include_election_info: bool,
    types: Types,
    bucket: Bucket,
}

#[derive(Default)]
struct State {
    sessions: HashMap<u64, Entry>,
    by_account: HashMap<LedgerKey, Vec<u64>>,
    all: Vec<u64>,
    accounts_total: usize,
}

struct Hub {
    config: ConfirmationsConfig,
    metrics: Option<ConfirmationsMetrics>,
    state: Mutex<State>,
    up: AtomicBool,
    next_id: AtomicU64,
}

/// The confirmation fan-out: a [`SubscriptionService`] for a worker
/// ([`crate::worker::WorkerBuilder::subscriptions`]), fed by its node's websocket.
#[derive(Clone)]
pub struct Confirmations {
    hub: Arc<Hub>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Confirmations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirmations")
            .field("node_url", &self.hub.config.node_url)
            .finish_non_exhaustive()
    }
}

impl Confirmations {
    /// A fan-out with no node connection: messages come from [`Confirmations::deliver`]
    /// (tests and benchmarks), and it counts as up.
    pub fn new(config: ConfirmationsConfig, metrics: Option<ConfirmationsMetrics>) -> Self {
        let hub = Arc::new(Hub {
            config,
            metrics,
            state: Mutex::default(),
            up: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
        });
        Self {
            hub,
            cancel: CancellationToken::new(),
        }
    }

    /// A fan-out fed by the node's websocket at `config.node_url`, kept up by a task of
    /// its own until [`Confirmations::stop`] ([`super::ws::run`]). Needs a tokio runtime.
    pub fn start(config: ConfirmationsConfig, metrics: Option<ConfirmationsMetrics>) -> Self {
        let this = Self::new(config, metrics);
        this.hub.up.store(false, Ordering::Relaxed);
        let hub = this.hub.clone();
        let url = hub.config.node_url.clone();
        let cancel = this.cancel.clone();
        tokio::spawn(async move {
            ws::run(url, move |event| hub.handle(event), cancel).await;
        });
        this
    }

    /// Stops the node connection and closes every session.
    pub fn stop(&self) {
        self.cancel.cancel();
        self.hub
            .close_all(RefusalCode::ShuttingDown, "the worker is shutting down");
    }

    /// Whether the node's subscription is up.
    pub fn is_up(&self) -> bool {
        self.hub.up.load(Ordering::Relaxed)
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.hub.state().sessions.len()
    }

    /// Fans one of the node's websocket messages out (anything but a confirmation is
    /// ignored); returns how many sessions it was queued for.
    pub fn deliver(&self, text: &str) -> usize {
        self.hub.deliver(text)
    }
}

impl SubscriptionService for Confirmations {
    fn open(&self, request: &Subscribe, _peer: SocketAddr) -> Result<Session, Refusal> {
        let result = self.hub.open(request);
        if let Some(m) = &self.hub.metrics {
            let outcome = match &result {
                Ok(_) => "accepted",
                Err(r) => r.code.as_str(),
            };
            m.subscriptions.with_label_values(&[outcome]).inc();
        }
        let (id, outbox, accepted) = result?;
        Ok(Session {
            outbox,
            control: Box::new(Handle {
                hub: self.hub.clone(),
                id,
            }),
            accepted,
        })
    }
}

/// A session's handle in the hub; dropping it removes the session.
struct Handle {
    hub: Arc<Hub>,
    id: u64,
}

impl SessionControl for Handle {
    fn update(&self, update: &Update) -> Result<Accepted, Refusal> {
        self.hub.update(self.id, update)
    }

    fn replace(&self, subscribe: &Subscribe) -> Result<Accepted, Refusal> {
        self.hub.replace(self.id, subscribe)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

/// Accounts as keys (rule 1).
fn parse_accounts(accounts: &[String]) -> Result<Vec<LedgerKey>, Refusal> {
    accounts
        .iter()
        .map(|a| {
            let key = (a.starts_with("nano_") || a.starts_with("xrb_"))
                .then(|| ledger_key(a))
                .flatten();
            key.ok_or_else(|| {
                Refusal::new(
                    RefusalCode::InvalidAccount,
                    format!(
                        "{:?} is not a Nano account address (nano_ and 60 base32 digits)",
                        shorten(a)
                    ),
                )
            })
        })
        .collect()
}

fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}

/// The parts of a confirmation the fan-out reads (rule 2).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    topic: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    account: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    hash: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    confirmation_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    block: Option<BlockPart>,
    #[serde(default)]
    election_info: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct BlockPart {
    #[serde(default)]
    link_as_account: Option<String>,
}

/// A confirmation read once, with its four variants encoded on demand.
struct Parsed<'a> {
    text: &'a str,
    message: &'a RawValue,
    hash: String,
    kind: Option<String>,
    has_block: bool,
    has_info: bool,
    variants: [Option<Bytes>; 4],
}

impl Parsed<'_> {
    /// The frame for a session that wants `block` and `election_info` or not (rule 6).
    fn frame(&mut self, block: bool, info: bool) -> Option<Bytes> {
        // What the session gets is the original when it drops nothing the node sent.
        let drop_block = !block && self.has_block;
        let drop_info = !info && self.has_info;
        let index = usize::from(drop_block) | (usize::from(drop_info) << 1);
        if let Some(frame) = &self.variants[index] {
            return Some(frame.clone());
        }
        let message = if index == 0 {
            self.text.as_bytes().to_vec()
        } else {
            without(self.text, self.message, drop_block, drop_info)?
        };
        let frame = WorkerFrame::Confirmation(Confirmation {
            v: PROTOCOL_VERSION,
            hash: self.hash.clone(),
            message,
        });
        let bytes = Bytes::from(subscription::encode(&frame, MAX_WORKER_FRAME_BYTES).ok()?);
        self.variants[index] = Some(bytes.clone());
        Some(bytes)
    }
}

/// Members of a JSON object in their order, values as they were written.
struct Ordered<'a>(Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Ordered<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Ordered<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((key, value));
                }
                Ok(Ordered(members))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// `text` (the node's envelope) with `message.block` and/or `message.election_info`
/// removed, everything else as the node wrote it.
fn without(text: &str, message: &RawValue, block: bool, info: bool) -> Option<Vec<u8>> {
    let outer: Ordered<'_> = serde_json::from_str(text).ok()?;
    let inner: Ordered<'_> = serde_json::from_str(message.get()).ok()?;
    let mut out = String::with_capacity(text.len());
    let write_key = |out: &mut String, key: &str| {
        out.push_str(&serde_json::to_string(key).unwrap_or_default());
        out.push(':');
    };
    out.push('{');
    for (n, (key, value)) in outer.0.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        write_key(&mut out, key);
        if key == "message" {
            out.push('{');
            let mut first = true;
            for (k, v) in &inner.0 {
                if (block && k == "block") || (info && k == "election_info") {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                write_key(&mut out, k);
                out.push_str(v.get());
            }
            out.push('}');
        } else {
            out.push_str(value.get());
        }
    }
    out.push('}');
    Some(out.into_bytes())
}

/// A token bucket of `rate` per second holding at most one second's worth.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Hub {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, event: NodeWsEvent) {
        match event {
            NodeWsEvent::Up => {
                self.up.store(true, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.up.set(1);
                    m.connects.with_label_values(&["up"]).inc();
                }
            }
            NodeWsEvent::Down(reason) => {
                let was = self.up.swap(false, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.up.set(0);
                    if was {
                        m.connects.with_label_values(&["down"]).inc();
                    }
                }
                if was {
                    self.close_all(
                        RefusalCode::UpstreamUnreachable,
                        &format!("the worker's node websocket went down: {reason}"),
                    );
                }
            }
            NodeWsEvent::Message(text) => {
                self.deliver(&text);
            }
        }
    }

    fn close_all(&self, code: RefusalCode, message: &str) {
        let state = self.state();
        for entry in state.sessions.values() {
            entry.outbox.close(Refusal::new(code, message));
        }
    }

    /// Checks a subscribe's options (rules 1, 3, 4): the entry it makes, and its
    /// account keys.
    fn entry_of(&self, request: &Subscribe, outbox: Arc<Outbox>) -> Result<Entry, Refusal> {
        if request.topic != TOPIC_CONFIRMATION {
            return Err(Refusal::new(
                RefusalCode::UnknownTopic,
                format!(
                    "topic {:?} is not carried; only \"confirmation\"",
                    shorten(&request.topic)
                ),
            ));
        }
        let types = Types::parse(&request.confirmation_type)?;
        let accounts = match &request.accounts {
            None if !self.config.allow_all_accounts => {
                return Err(Refusal::new(
                    RefusalCode::AllAccountsRefused,
                    "a subscription for every account is refused: name the accounts \
                     (options.accounts) to follow",
                ))
            }
            None => None,
            Some(list) => {
                if list.len() > self.config.max_accounts {
                    return Err(too_many(list.len(), self.config.max_accounts));
                }
                Some(parse_accounts(list)?.into_iter().collect::<HashSet<_>>())
            }
        };
        Ok(Entry {
            outbox,
            accounts,
            include_block: request.include_block,
            include_election_info: request.include_election_info,
            types,
            bucket: Bucket::new(self.config.max_rate),
        })
    }

    fn accepted(&self, entry: &Entry) -> Accepted {
        Accepted {
            accounts: count(entry.accounts.as_ref().map_or(0, HashSet::len)),
            max_accounts: count(self.config.max_accounts),
            max_rate: self.config.max_rate,
        }
    }

    fn open(&self, request: &Subscribe) -> Result<(u64, Arc<Outbox>, Accepted), Refusal> {
        if !self.up.load(Ordering::Relaxed) {
            return Err(Refusal::new(
                RefusalCode::UpstreamUnreachable,
                "this worker's node websocket is down; try another worker",
            ));
        }
        let outbox = Arc::new(Outbox::new(self.config.queue));
        let entry = self.entry_of(request, outbox.clone())?;
        let accepted = self.accepted(&entry);
        let mut state = self.state();
        if state.sessions.len() >= self.config.max_subscribers {
            return Err(Refusal::new(
                RefusalCode::TooManySubscribers,
                format!(
                    "this worker serves its limit of {} subscriptions; try another worker",
                    self.config.max_subscribers
                ),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        state.index(id, &entry);
        state.sessions.insert(id, entry);
        self.gauges(&state);
        Ok((id, outbox, accepted))
    }

    fn update(&self, id: u64, update: &Update) -> Result<Accepted, Refusal> {
        let add = parse_accounts(&update.accounts_add)?;
        let del = parse_accounts(&update.accounts_del)?;
        let mut state = self.state();
        let max = self.config.max_accounts;
        let Some(entry) = state.sessions.get(&id) else {
            return Err(Refusal::new(RefusalCode::MalformedFrame, "no such session"));
        };
        let Some(current) = &entry.accounts else {
            // An all-accounts session follows everything already.
            return Ok(self.accepted(entry));
        };
        let mut next = current.clone();
        next.extend(add.iter().copied());
        for key in &del {
            next.remove(key);
        }
        if next.len() > max {
            return Err(too_many(next.len(), max));
        }
        state.unindex(id);
        let Some(mut entry) = state.sessions.remove(&id) else {
            return Err(Refusal::new(RefusalCode::MalformedFrame, "no such session"));
        };
        entry.accounts = Some(next);
        let accepted = self.accepted(&entry);
        state.index(id, &entry);
        state.sessions.insert(id, entry);
        self.gauges(&state);
        Ok(accepted)
    }

    fn replace(&self, id: u64, subscribe: &Subscribe) -> Result<Accepted, Refusal> {
        let Some(outbox) = self.state().sessions.get(&id).map(|e| e.outbox.clone()) else {
            return Err(Refusal::new(RefusalCode::MalformedFrame, "no such session"));
        };
        let entry = self.entry_of(subscribe, outbox)?;
        let accepted = self.accepted(&entry);
        let mut state = self.state();
        state.unindex(id);
        state.index(id, &entry);
        state.sessions.insert(id, entry);
        self.gauges(&state);
        Ok(accepted)
    }

    fn remove(&self, id: u64) {
        let mut state = self.state();
        state.unindex(id);
        state.sessions.remove(&id);
        self.gauges(&state);
    }

    fn gauges(&self, state: &State) {
        if let Some(m) = &self.metrics {
            m.subscribers
                .set(i64::try_from(state.sessions.len()).unwrap_or(i64::MAX));
            m.accounts
                .set(i64::try_from(state.accounts_total).unwrap_or(i64::MAX));
        }
    }

    fn deliver(&self, text: &str) -> usize {
        let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(text) else {
            return 0;
        };
        let (Some(topic), Some(message)) = (envelope.topic, envelope.message) else {
            return 0;
        };
        if topic != TOPIC_CONFIRMATION {
            return 0;
        }
        let Ok(body) = serde_json::from_str::<Body<'_>>(message.get()) else {
            return 0;
        };
        if let Some(m) = &self.metrics {
            m.confirmations.inc();
        }
        let account = ledger_key(&body.account);
        let destination = body
            .block
            .as_ref()
            .and_then(|b| b.link_as_account.as_deref())
            .and_then(ledger_key);
        let mut parsed = Parsed {
            text,
            message,
            hash: body.hash.to_string(),
            kind: body.confirmation_type.as_deref().map(str::to_string),
            has_block: body.block.is_some(),
            has_info: body.election_info.is_some(),
            variants: Default::default(),
        };
        let now = Instant::now();
        let mut state = self.state();
        let State {
            sessions,
            by_account,
            all,
            ..
        } = &mut *state;
        // Sessions of the account, of the destination, and of every account; each once.
        let mut ids: Vec<u64> = Vec::new();
        let destination = destination.filter(|d| Some(*d) != account);
        for key in [account, destination].into_iter().flatten() {
            if let Some(list) = by_account.get(&key) {
                ids.extend_from_slice(list);
            }
        }
        if account.is_some() && destination.is_some() {
            ids.sort_unstable();
            ids.dedup();
        }
        ids.extend_from_slice(all);
        let (mut queued, mut slow, mut rated) = (0usize, 0u64, 0u64);
        for id in ids {
            let Some(entry) = sessions.get_mut(&id) else {
                continue;
            };
            if !entry.types.takes(parsed.kind.as_deref()) {
                continue;
            }
            if !entry.bucket.take(now) {
                entry.outbox.count_drop(DropReason::RateLimit);
                rated += 1;
                continue;
            }
            let Some(frame) = parsed.frame(entry.include_block, entry.include_election_info) else {
                continue;
            };
            if entry.outbox.push(frame) {
                queued += 1;
            } else {
                slow += 1;
            }
        }
        drop(state);
        if let Some(m) = &self.metrics {
            m.messages.inc_by(queued as u64);
            if slow > 0 {
                m.dropped.with_label_values(&["slow_reader"]).inc_by(slow);
            }
            if rated > 0 {
                m.dropped.with_label_values(&["rate_limit"]).inc_by(rated);
            }
        }
        queued
    }
}

impl State {
    fn index(&mut self, id: u64, entry: &Entry) {
        match &entry.accounts {
            None => self.all.push(id),
            Some(accounts) => {
                self.accounts_total += accounts.len();
                for key in accounts {
                    self.by_account.entry(*key).or_default().push(id);
                }
            }
        }
    }

    fn unindex(&mut self, id: u64) {
        let Some(entry) = self.sessions.get(&id) else {
            return;
        };
        match &entry.accounts {
            None => self.all.retain(|&x| x != id),
            Some(accounts) => {
                self.accounts_total = self.accounts_total.saturating_sub(accounts.len());
                for key in accounts {
                    if let Some(list) = self.by_account.get_mut(key) {
                        list.retain(|&x| x != id);
                        if list.is_empty() {
                            self.by_account.remove(key);
                        }
                    }
                }
            }
        }
    }
}

fn too_many(asked: usize, max: usize) -> Refusal {
    Refusal::new(
        RefusalCode::TooManyAccounts,
        format!("{asked} accounts asked; this worker follows at most {max} per subscription"),
    )
}

/// Logs the fan-out's settings once.
pub fn log_settings(config: &ConfirmationsConfig) {
    info!(
        node_ws = %config.node_url,
        max_accounts = config.max_accounts,
        max_subscribers = config.max_subscribers,
        max_rate = config.max_rate,
        all_accounts = config.allow_all_accounts,
        "serving confirmations"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::Outgoing;

    const GENESIS: &str = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";
    const DEST: &str = "nano_3cn3tj1ueynwgo7fj6d748kfsk435bpezaro3rdmisyqbuuc9bp7c87srszd";
    const OTHER: &str = "nano_1111111111111111111111111111111111111111111111111111hifc8npp";

    fn fixture(n: usize) -> String {
        let text = include_str!("../../tests/fixtures/nano-ws/rsnano-dev-confirmations.jsonl");
        text.lines().nth(n).expect("fixture line").to_string()
    }

    fn subscribe(accounts: Option<&[&str]>) -> Subscribe {
        Subscribe {
            v: 1,
            id: 1,
            key: "nano_rpc".into(),
            topic: "confirmation".into(),
            accounts: accounts.map(|a| a.iter().map(|s| s.to_string()).collect()),
            include_block: true,
            include_election_info: false,
            confirmation_type: "all".into(),
            heartbeat_ms: 0,
        }
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    fn hub() -> Confirmations {
        Confirmations::new(ConfirmationsConfig::new("ws://127.0.0.1:1"), None)
    }

    fn taken(outbox: &Outbox) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while !outbox.is_empty() {
            let next = futures::executor::block_on(outbox.next());
            out.push(next);
        }
        out
    }

    fn message_of(out: &Outgoing) -> serde_json::Value {
        let Outgoing::Frame(bytes) = out else {
            panic!("not a frame: {out:?}")
        };
        let WorkerFrame::Confirmation(c) =
            subscription::decode::<WorkerFrame>(&bytes[4..]).expect("frame")
        else {
            panic!("not a confirmation")
        };
        serde_json::from_slice(&c.message).expect("JSON")
    }

    #[test]
    fn sessions_get_their_accounts_send_and_receive_sides() {
        let hub = hub();
        let sender = hub.open(&subscribe(Some(&[GENESIS])), peer()).unwrap();
        let receiver = hub.open(&subscribe(Some(&[DEST])), peer()).unwrap();
        let both = hub
            .open(&subscribe(Some(&[GENESIS, DEST])), peer())
            .unwrap();
        let other = hub.open(&subscribe(Some(&[OTHER])), peer()).unwrap();
        // The send from genesis to DEST: the sender, the destination, and once to both.
        assert_eq!(hub.deliver(&fixture(1)), 3);
        // The receive on DEST.
        assert_eq!(hub.deliver(&fixture(2)), 2);
        assert_eq!(taken(&sender.outbox).len(), 1);
        assert_eq!(taken(&receiver.outbox).len(), 2);
        assert_eq!(taken(&both.outbox).len(), 2);
        assert!(other.outbox.is_empty());
        // The ack line is no confirmation.
        assert_eq!(hub.deliver(&fixture(0)), 0);
    }

    #[test]
    fn the_message_is_the_nodes_and_block_is_removed_in_order_when_unwanted() {
        let hub = hub();
        let with = hub.open(&subscribe(Some(&[GENESIS])), peer()).unwrap();
        let mut bare = subscribe(Some(&[GENESIS]));
        bare.include_block = false;
        let without = hub.open(&bare, peer()).unwrap();
        hub.deliver(&fixture(1));
        let Outgoing::Frame(bytes) = &taken(&with.outbox)[0] else {
            panic!()
        };
        let WorkerFrame::Confirmation(c) =
            subscription::decode::<WorkerFrame>(&bytes[4..]).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.message, fixture(1).as_bytes(), "byte for byte");
        assert_eq!(
            c.hash,
            "8D8EDA98311516859B5DCDF05A268CDB2DBDC7D6E703943E1B544B1369FBE081"
        );
        let got = message_of(&taken(&without.outbox)[0]);
        let mut want: serde_json::Value = serde_json::from_str(&fixture(1)).unwrap();
        want["message"].as_object_mut().unwrap().remove("block");
        assert_eq!(got, want);
    }

    #[test]
    fn a_send_to_oneself_is_sent_once() {
        let hub = hub();
        let s = hub.open(&subscribe(Some(&[GENESIS])), peer()).unwrap();
        let own = fixture(1).replace(DEST, GENESIS);
        assert_eq!(hub.deliver(&own), 1);
        assert_eq!(taken(&s.outbox).len(), 1);
    }

    #[test]
    fn xrb_and_nano_prefixes_are_one_account() {
        let hub = hub();
        let xrb = GENESIS.replacen("nano_", "xrb_", 1);
        let s = hub.open(&subscribe(Some(&[xrb.as_str()])), peer()).unwrap();
        assert_eq!(hub.deliver(&fixture(1)), 1);
        assert_eq!(taken(&s.outbox).len(), 1);
    }

    #[test]
    fn refusals_say_why() {
        let hub = hub();
        let code = |r: Result<Session, Refusal>| r.unwrap_err().code;
        assert_eq!(
            code(hub.open(&subscribe(None), peer())),
            RefusalCode::AllAccountsRefused
        );
        assert_eq!(
            code(hub.open(&subscribe(Some(&["nano_bogus"])), peer())),
            RefusalCode::InvalidAccount
        );
        let hex = "8D8EDA98311516859B5DCDF05A268CDB2DBDC7D6E703943E1B544B1369FBE081";
        assert_eq!(
            code(hub.open(&subscribe(Some(&[hex])), peer())),
            RefusalCode::InvalidAccount
        );
        let mut votes = subscribe(Some(&[GENESIS]));
        votes.topic = "votes".into();
        assert_eq!(code(hub.open(&votes, peer())), RefusalCode::UnknownTopic);
        let mut small = ConfirmationsConfig::new("ws://127.0.0.1:1");
        small.max_accounts = 1;
        small.max_subscribers = 1;
        let hub = Confirmations::new(small, None);
        let refused = hub
            .open(&subscribe(Some(&[GENESIS, DEST])), peer())
            .unwrap_err();
        assert_eq!(refused.code, RefusalCode::TooManyAccounts);
        assert!(refused.message.contains("at most 1"), "{refused}");
        let first = hub.open(&subscribe(Some(&[GENESIS])), peer()).unwrap();
        assert_eq!(
            code(hub.open(&subscribe(Some(&[DEST])), peer())),
            RefusalCode::TooManySubscribers
        );
        // An update past the cap changes nothing.
        let update = Update {
            v: 1,
            id: 2,
            accounts_add: vec![DEST.into()],
            accounts_del: vec![],
        };
        assert_eq!(
            first.control.update(&update).unwrap_err().code,
            RefusalCode::TooManyAccounts
        );
        assert_eq!(hub.deliver(&fixture(1)), 1);
        drop(first);
        assert_eq!(hub.sessions(), 0);
    }

    #[test]
    fn updates_add_and_remove() {
        let hub = hub();
        let s = hub.open(&subscribe(Some(&[])), peer()).unwrap();
        assert_eq!(hub.deliver(&fixture(2)), 0);
        let add = Update {
            v: 1,
            id: 2,
            accounts_add: vec![DEST.into()],
            accounts_del: vec![],
        };
        assert_eq!(s.control.update(&add).unwrap().accounts, 1);
        assert_eq!(hub.deliver(&fixture(2)), 1);
        let del = Update {
            v: 1,
            id: 3,
            accounts_add: vec![],
            accounts_del: vec![DEST.into()],
        };
        assert_eq!(s.control.update(&del).unwrap().accounts, 0);
        assert_eq!(hub.deliver(&fixture(2)), 0);
    }

    #[test]
    fn a_slow_session_drops_and_counts_and_others_do_not_notice() {
        let mut config = ConfirmationsConfig::new("ws://127.0.0.1:1");
        config.queue = 2;
        config.max_rate = 0;
        let hub = Confirmations::new(config, None);
        let slow = hub.open(&subscribe(Some(&[GENESIS])), peer()).unwrap();
        let fast = hub.open(&subscribe(Some(&[GENESIS])), peer()).unwrap();
        for _ in 0..5 {
            hub.deliver(&fixture(1));
            taken(&fast.outbox);
        }
        assert_eq!(slow.outbox.len(), 2);
        assert_eq!(slow.outbox.total_lost(), 3);
        assert_eq!(fast.outbox.total_lost(), 0);
    }

    #[test]
    fn the_rate_limit_drops_past_one_seconds_worth() {
        let mut config = ConfirmationsConfig::new("ws://127.0.0.1:1");
        config.max_rate = 3;
        let hub = Confirmations::new(config, None);
        let s = hub.open(&subscribe(Some(&[GENESIS])), peer()).unwrap();
        let queued: usize = (0..10).map(|_| hub.deliver(&fixture(1))).sum();
        assert_eq!(queued, 3);
        assert_eq!(s.outbox.total_lost(), 7);
    }

    #[test]
    fn confirmation_types_filter_as_the_node_does() {
        let hub = hub();
        let mut inactive = subscribe(Some(&[GENESIS]));
        inactive.confirmation_type = "inactive".into();
        let i = hub.open(&inactive, peer()).unwrap();
        let mut active = subscribe(Some(&[GENESIS]));
        active.confirmation_type = "Active".into();
        let a = hub.open(&active, peer()).unwrap();
        hub.deliver(&fixture(1));
        assert!(i.outbox.is_empty());
        assert_eq!(taken(&a.outbox).len(), 1);
    }

    #[test]
    fn the_node_going_down_closes_sessions_and_refuses_new_ones() {
        let hub = hub();
        let s = hub.open(&subscribe(Some(&[GENESIS])), peer()).unwrap();
        hub.hub.handle(NodeWsEvent::Down("gone".into()));
        assert!(matches!(
            futures::executor::block_on(s.outbox.next()),
            Outgoing::Closed(Refusal {
                code: RefusalCode::UpstreamUnreachable,
                ..
            })
        ));
        assert_eq!(
            hub.open(&subscribe(Some(&[GENESIS])), peer())
                .unwrap_err()
                .code,
            RefusalCode::UpstreamUnreachable
        );
    }

    #[test]
    fn garbage_from_the_node_is_ignored() {
        let hub = hub();
        let _s = hub.open(&subscribe(Some(&[GENESIS])), peer()).unwrap();
        for text in [
            "",
            "{",
            "[]",
            r#"{"topic":"confirmation"}"#,
            r#"{"topic":"confirmation","message":{"account":1}}"#,
        ] {
            assert_eq!(hub.deliver(text), 0, "{text}");
        }
    }
}
