//! Subscriptions from the client side: follow the confirmations of some accounts through
//! one or more workers (docs/protocol.md §8), the same way for every face (`gateway
//! --ws-listen`, `watch`, the library).
//!
//! ```text
//!   Subscription::open(client, config, filter)
//!     └─ legs: N streams to N distinct workers (N = quorum, 1 without)
//!          each: open_stream → subscribe → ack
//!   actor task ─┬─ leg frames: confirmation → Votes (a strict majority of N, once)
//!               │              notice → Lost; closing / end / silence → resubscribe
//!               ├─ updates: to every live leg, acked when all have acked
//!               └─ events ─▶ bounded queue ─▶ Subscription::next (full: dropped, counted)
//! ```
//!
//! **Losing a worker.** A leg ends when its stream ends, when its worker says `closing`,
//! or when nothing (not even a heartbeat) came for [`SubscriptionConfig::silence`]. The
//! actor then opens a leg on another worker (not one of the other legs, not one that
//! failed in the last [`FAILED_TTL`]) with the filter as it is now, trying rounds of
//! candidates with a short back-off until one takes it; each attempt is bounded by
//! [`SubscriptionConfig::open_timeout`]. Confirmations the node emitted while no leg
//! was up are not replayed (the node's websocket has no replay either).
//!
//! **Once.** A confirmation is delivered when [`majority`] of N distinct workers reported
//! the same block (its hash, account and amount), and never again: the last
//! [`SubscriptionConfig::remember`] delivered hashes are kept. Without a quorum that is
//! the first report, and the node's own duplicates are dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use rand::seq::SliceRandom;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::client::{RpcClient, SessionStream};
use super::error::{exit, CallError};
use super::quorum::majority;
use super::resolve::Candidate;
use crate::protocol::frame::{self, PROTOCOL_VERSION};
use crate::protocol::identity::NodeId;
use crate::protocol::subscription::{
    self, ClientFrame, RefusalCode, Subscribe, Update, WorkerFrame, MAX_CLIENT_FRAME_BYTES,
    MAX_WORKER_FRAME_BYTES, TOPIC_CONFIRMATION,
};

/// How long a worker that failed is passed over when a leg is opened anew.
pub const FAILED_TTL: Duration = Duration::from_secs(30);

/// How long a report waits for the rest of its majority before it is forgotten.
pub const VOTE_WINDOW: Duration = Duration::from_secs(60);

/// Reports waiting for a majority at most (the oldest are forgotten first).
const MAX_PENDING_VOTES: usize = 4096;

/// Settings of a [`Subscription`].
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    /// Service key looked up (default `nano_rpc`).
    pub key: String,
    /// Workers that must report a confirmation: a strict majority of this many distinct
    /// workers (default 1: every worker's report is believed).
    pub quorum: usize,
    /// Heartbeat interval asked of workers. Default 2 s.
    pub heartbeat: Duration,
    /// A leg from which nothing came for this long is taken for dead. Default 5 s
    /// (two heartbeats and a half).
    pub silence: Duration,
    /// Time to reach one worker and have its `ack`. Default 5 s.
    pub open_timeout: Duration,
    /// Time [`Subscription::open`] has in all. Default 15 s.
    pub open_deadline: Duration,
    /// A resubscribe that takes longer than this is logged as a warning and counted as
    /// slow. Default 10 s.
    pub resubscribe_bound: Duration,
    /// Events queued for the consumer; past it confirmations are dropped and counted.
    /// Default 256.
    pub events: usize,
    /// Delivered hashes remembered, so that each is delivered once. Default 4096.
    pub remember: usize,
    /// Counts resubscribes and losses, when given.
    pub metrics: Option<SubscriptionMetrics>,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self {
            key: crate::defaults::DEFAULT_SERVICE_KEY.to_string(),
            quorum: 1,
            heartbeat: Duration::from_secs(2),
            silence: Duration::from_secs(5),
            open_timeout: Duration::from_secs(5),
            open_deadline: Duration::from_secs(15),
            resubscribe_bound: Duration::from_secs(10),
            events: 256,
            remember: 4096,
            metrics: None,
        }
    }
}

/// What to follow: the node's `confirmation` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Accounts (`nano_...`); `None` for every account (workers refuse it unless their
    /// operator allows it).
    pub accounts: Option<Vec<String>>,
    /// Keep `block` in messages (the node's default: true).
    pub include_block: bool,
    /// Keep `election_info` (default false).
    pub include_election_info: bool,
    /// `all`, `active`, `active_quorum`, `active_confirmation_height` or `inactive`.
    pub confirmation_type: String,
}

impl Filter {
    /// The node's defaults for `accounts`.
    pub fn accounts(accounts: Vec<String>) -> Self {
        Self {
            accounts: Some(accounts),
            include_block: true,
            include_election_info: false,
            confirmation_type: "all".into(),
        }
    }
}

/// A confirmation, delivered once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The block's hash.
    pub hash: String,
    /// The node's JSON message (`{"topic":"confirmation","time":...,"message":{...}}`).
    pub message: Vec<u8>,
    /// The workers whose reports made it (one without a quorum).
    pub workers: Vec<NodeId>,
}

/// What a subscription tells its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionEvent {
    /// A confirmation of a followed account.
    Confirmation(Delivered),
    /// Confirmations were dropped: by the worker `from` (its notice), or here when
    /// `from` is `None` (the consumer read too slowly).
    Lost {
        /// How many.
        lost: u64,
        /// `slow_reader` or `rate_limit`.
        reason: String,
        /// The worker that dropped them.
        from: Option<NodeId>,
    },
    /// A worker's leg ended; a resubscribe has started.
    WorkerLost {
        /// The worker.
        node: NodeId,
        /// Why (its `closing` words, the stream's error, or its silence).
        reason: String,
    },
    /// A leg was opened anew on `node` after a loss, `took` after it.
    Resubscribed {
        /// The new worker.
        node: NodeId,
        /// The lost one.
        replaced: NodeId,
        /// From the loss to the new `ack`.
        took: Duration,
    },
}

/// Why a subscription could not be made or changed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The lookup failed, or no worker could be reached.
    #[error(transparent)]
    Call(Arc<CallError>),
    /// Fewer workers announce the key than the quorum needs.
    #[error("quorum of {need} asked, but only {found} worker(s) of {key:?} take subscriptions")]
    TooFewWorkers {
        /// The key.
        key: String,
        /// Workers that took it.
        found: usize,
        /// Workers needed.
        need: usize,
    },
    /// A worker refused; `code` says why.
    #[error("worker {worker} refused: {message} ({code})")]
    Refused {
        /// The worker (node id and address).
        worker: String,
        /// Its reason.
        code: RefusalCode,
        /// Its words.
        message: String,
    },
    /// The subscription is closed.
    #[error("the subscription is closed")]
    Closed,
}

impl SubscribeError {
    /// The short code ([`super::error`]'s, a refusal's wire code, or `no_quorum`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Call(e) => e.code(),
            Self::TooFewWorkers { .. } => "no_quorum",
            Self::Refused { code, .. } => code.as_str(),
            Self::Closed => "closed",
        }
    }

    /// The exit code, as `call`'s ([`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Call(e) => e.exit_code(),
            Self::TooFewWorkers { .. } => exit::NO_QUORUM,
            Self::Refused { code, .. } => match code {
                RefusalCode::UpstreamUnreachable => exit::UNREACHABLE,
                RefusalCode::InvalidAccount => exit::USAGE,
                _ => exit::REFUSED,
            },
            Self::Closed => exit::FAILURE,
        }
    }
}

impl From<CallError> for SubscribeError {
    fn from(e: CallError) -> Self {
        Self::Call(Arc::new(e))
    }
}

/// Metrics of subscriptions, registered in a face's registry.
///
/// | metric | type | labels |
/// |---|---|---|
/// | `nano_connect_subscription_workers_lost_total` | counter | `reason` = `closed`, `ended`, `silent` |
/// | `nano_connect_resubscribes_total` | counter | `outcome` = `ok`, `slow` (past the bound) |
/// | `nano_connect_resubscribe_seconds` | histogram | (from the loss to the new ack) |
/// | `nano_connect_subscription_lost_total` | counter | `reason` = `slow_reader`, `rate_limit`, `slow_consumer` |
#[derive(Debug, Clone)]
pub struct SubscriptionMetrics {
    workers_lost: IntCounterVec,
    resubscribes: IntCounterVec,
    resubscribe_seconds: Histogram,
    lost: IntCounterVec,
}

impl SubscriptionMetrics {
    /// Fresh metrics, registered in `registry`.
    ///
    /// Errors: a metric of the same name is registered there already.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let workers_lost = IntCounterVec::new(
            Opts::new(
                "nano_connect_subscription_workers_lost_total",
                "Subscription legs whose worker went away, by how it was noticed",
            ),
            &["reason"],
        )?;
        let resubscribes = IntCounterVec::new(
            Opts::new(
                "nano_connect_resubscribes_total",
                "Legs opened anew on another worker, by whether within the bound",
            ),
            &["outcome"],
        )?;
        let resubscribe_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "nano_connect_resubscribe_seconds",
                "Time from losing a worker to the new worker's ack",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let lost = IntCounterVec::new(
            Opts::new(
                "nano_connect_subscription_lost_total",
                "Confirmations dropped for subscribers, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(workers_lost.clone()))?;
        registry.register(Box::new(resubscribes.clone()))?;
        registry.register(Box::new(resubscribe_seconds.clone()))?;
        registry.register(Box::new(lost.clone()))?;
        Ok(Self {
            workers_lost,
            resubscribes,
            resubscribe_seconds,
            lost,
        })
    }
}

/// A report of one block, as votes compare it: its hash, account and amount (fields
/// that honest nodes write alike; `time` and `election_info` differ from node to node).
fn vote_key(message: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        message: Inner<'a>,
    }
    #[derive(Deserialize)]
    struct Inner<'a> {
        #[serde(borrow)]
        hash: std::borrow::Cow<'a, str>,
        #[serde(borrow, default)]
        account: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        amount: Option<std::borrow::Cow<'a, str>>,
    }
    let e: Envelope<'_> = serde_json::from_slice(message).ok()?;
    Some(format!(
        "{}/{}/{}",
        e.message.hash.to_ascii_uppercase(),
        e.message.account.as_deref().unwrap_or(""),
        e.message.amount.as_deref().unwrap_or("")
    ))
}

struct Pending {
    hash: String,
    voters: Vec<NodeId>,
    first: Instant,
}

/// The vote on confirmations (pure): a strict majority of `asked` distinct workers, each
/// block once.
pub struct Votes {
    need: usize,
    pending: HashMap<String, Pending>,
    order: VecDeque<String>,
    delivered: HashSet<String>,
    delivered_order: VecDeque<String>,
    remember: usize,
}

impl Votes {
    /// A vote among `asked` workers that remembers `remember` delivered hashes.
    pub fn new(asked: usize, remember: usize) -> Self {
        Self {
            need: majority(asked.max(1)),
            pending: HashMap::new(),
            order: VecDeque::new(),
            delivered: HashSet::new(),
            delivered_order: VecDeque::new(),
            remember: remember.max(1),
        }
    }

    /// Reports needed for a delivery.
    pub fn need(&self) -> usize {
        self.need
    }

    /// `node` reported `message` for `hash` at `now`: the workers that made the majority
    /// when this report completed it (deliver `message` then), else `None`. A hash
    /// delivered before, and a second report of one node, count for nothing.
    pub fn report(
        &mut self,
        now: Instant,
        node: NodeId,
        hash: &str,
        message: &[u8],
    ) -> Option<Vec<NodeId>> {
        let hash = hash.to_ascii_uppercase();
        if self.delivered.contains(&hash) {
            return None;
        }
        self.expire(now);
        if self.need <= 1 {
            self.remember_delivered(hash);
            return Some(vec![node]);
        }
        let key = vote_key(message).unwrap_or_else(|| format!("{hash}//"));
        let pending = self.pending.entry(key.clone()).or_insert_with(|| Pending {
            hash: hash.clone(),
            voters: Vec::new(),
            first: now,
        });
        if pending.hash != hash || pending.voters.contains(&node) {
            return None;
        }
        pending.voters.push(node);
        if pending.voters.len() == 1 {
            self.order.push_back(key.clone());
        }
        if pending.voters.len() < self.need {
            while self.pending.len() > MAX_PENDING_VOTES {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                self.pending.remove(&old);
            }
            return None;
        }
        let voters = pending.voters.clone();
        self.pending.retain(|_, p| p.hash != hash);
        self.remember_delivered(hash);
        Some(voters)
    }

    fn remember_delivered(&mut self, hash: String) {
        if self.delivered.insert(hash.clone()) {
            self.delivered_order.push_back(hash);
        }
        while self.delivered_order.len() > self.remember {
            if let Some(old) = self.delivered_order.pop_front() {
                self.delivered.remove(&old);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(key) = self.order.front() {
            match self.pending.get(key) {
                Some(p) if now.saturating_duration_since(p.first) < VOTE_WINDOW => break,
                _ => {
                    if let Some(key) = self.order.pop_front() {
                        self.pending.remove(&key);
                    }
                }
            }
        }
    }
}

/// A live subscription. Dropping it (or [`Subscription::close`]) unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<SubscriptionEvent>,
    workers: Vec<NodeId>,
}

#[derive(Debug)]
enum Command {
    Update {
        add: Vec<String>,
        del: Vec<String>,
        reply: oneshot::Sender<Result<u32, SubscribeError>>,
    },
}

impl Subscription {
    /// Subscribes through `config.quorum` distinct workers of `config.key` (one without
    /// a quorum) and returns once each has acknowledged.
    ///
    /// Errors: [`SubscribeError::Refused`] when a worker refused for a reason another
    /// would give too (an account that is none, a topic not carried) or every worker
    /// tried refused, [`SubscribeError::TooFewWorkers`], [`SubscribeError::Call`] (no
    /// worker, lookup failed, none reachable, or not within `open_deadline`).
    pub async fn open(
        client: Arc<RpcClient>,
        config: SubscriptionConfig,
        filter: Filter,
    ) -> Result<Self, SubscribeError> {
        let n = config.quorum.max(1);
        let deadline = Instant::now() + config.open_deadline;
        let ids = IdSource::default();
        let mut legs: Vec<Leg> = Vec::with_capacity(n);
        let mut failed = Failed::default();
        let work = async {
            while legs.len() < n {
                let busy: Vec<NodeId> = legs.iter().map(|l| l.node).collect();
                let busy_addrs: Vec<SocketAddr> = legs.iter().map(|l| l.worker).collect();
                let leg = open_leg(
                    &client,
                    &config,
                    &filter,
                    &ids,
                    &busy,
                    &busy_addrs,
                    &mut failed,
                    deadline,
                )
                .await;
                match leg {
                    Ok(leg) => legs.push(leg),
                    Err(LegError::Exhausted { tried, refusal }) if n > 1 && !legs.is_empty() => {
                        if let Some(refusal) = refusal {
                            return Err(refusal);
                        }
                        let _ = tried;
                        return Err(SubscribeError::TooFewWorkers {
                            key: config.key.clone(),
                            found: legs.len(),
                            need: n,
                        });
                    }
                    Err(e) => return Err(e.into_error(&config.key)),
                }
            }
            Ok(())
        };
        let outcome = tokio::time::timeout(config.open_deadline, work)
            .await
            .unwrap_or_else(|_| {
                Err(CallError::Timeout {
                    after: config.open_deadline,
                    detail: Some(format!("subscribing through {} worker(s)", n)),
                }
                .into())
            });
        if let Err(e) = outcome {
            for mut leg in legs {
                let _ = leg.send.finish();
            }
            return Err(e);
        }
        let workers = legs.iter().map(|l| l.node).collect();
        let (commands, command_rx) = mpsc::channel(8);
        let (events_tx, events) = mpsc::channel(config.events.max(1));
        let actor = Actor::new(client, config, filter, ids, failed, legs, events_tx);
        tokio::spawn(actor.run(command_rx));
        Ok(Self {
            commands,
            events,
            workers,
        })
    }

    /// The workers the subscription started on.
    pub fn workers(&self) -> &[NodeId] {
        &self.workers
    }

    /// The next event; `None` once the subscription's task has ended.
    pub async fn next(&mut self) -> Option<SubscriptionEvent> {
        self.events.recv().await
    }

    /// Adds and removes accounts on every leg; returns the accounts followed after it.
    ///
    /// Errors: [`SubscribeError::Refused`] (an account that is none, over a worker's cap;
    /// then nothing changed on that worker), [`SubscribeError::Closed`].
    pub async fn update(&self, add: Vec<String>, del: Vec<String>) -> Result<u32, SubscribeError> {
        self.updater().update(add, del).await
    }

    /// A handle that sends updates while another task reads events.
    pub fn updater(&self) -> Updater {
        Updater {
            commands: self.commands.clone(),
        }
    }

    /// Unsubscribes on every leg.
    pub fn close(self) {}
}

/// Sends updates to a [`Subscription`] (see [`Subscription::update`]); cheap to clone.
#[derive(Debug, Clone)]
pub struct Updater {
    commands: mpsc::Sender<Command>,
}

impl Updater {
    /// As [`Subscription::update`].
    ///
    /// Errors: as [`Subscription::update`].
    pub async fn update(&self, add: Vec<String>, del: Vec<String>) -> Result<u32, SubscribeError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Update { add, del, reply })
            .await
            .map_err(|_| SubscribeError::Closed)?;
        answer.await.unwrap_or(Err(SubscribeError::Closed))
    }
}

/// Session-frame ids, one sequence per subscription.
#[derive(Default)]
struct IdSource(std::sync::atomic::AtomicU64);

impl IdSource {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }
}

/// Workers that failed recently, by node and address.
#[derive(Default, Clone)]
struct Failed {
    nodes: HashMap<NodeId, Instant>,
    addrs: HashMap<SocketAddr, Instant>,
}

impl Failed {
    fn add(&mut self, node: Option<NodeId>, addr: Option<SocketAddr>) {
        let now = Instant::now();
        if let Some(node) = node {
            self.nodes.insert(node, now);
        }
        if let Some(addr) = addr {
            self.addrs.insert(addr, now);
        }
    }

    fn merge(&mut self, other: Failed) {
        self.nodes.extend(other.nodes);
        self.addrs.extend(other.addrs);
    }

    fn holds(&mut self, candidate: &Candidate) -> bool {
        self.nodes.retain(|_, at| at.elapsed() < FAILED_TTL);
        self.addrs.retain(|_, at| at.elapsed() < FAILED_TTL);
        candidate.node.is_some_and(|n| self.nodes.contains_key(&n))
            || candidate.addrs.iter().any(|a| self.addrs.contains_key(a))
    }
}

/// One worker's stream.
struct Leg {
    node: NodeId,
    worker: SocketAddr,
    send: quinn::SendStream,
    recv: Option<quinn::RecvStream>,
}

enum LegError {
    /// Every candidate was tried (or there were none).
    Exhausted {
        tried: Vec<(String, String)>,
        refusal: Option<SubscribeError>,
    },
    /// A refusal every worker would give: stop.
    Final(SubscribeError),
    /// The lookup failed.
    Lookup(CallError),
}

impl LegError {
    fn into_error(self, key: &str) -> SubscribeError {
        match self {
            Self::Final(e) => e,
            Self::Lookup(e) => e.into(),
            Self::Exhausted {
                refusal: Some(r), ..
            } => r,
            Self::Exhausted { tried, .. } if tried.is_empty() => CallError::NoWorkers {
                key: key.to_string(),
                detail: None,
            }
            .into(),
            Self::Exhausted { tried, .. } => CallError::Unreachable {
                key: key.to_string(),
                tried,
            }
            .into(),
        }
    }
}

/// Refusals that say something about the request, not the worker.
fn is_final(code: RefusalCode) -> bool {
    matches!(
        code,
        RefusalCode::InvalidAccount
            | RefusalCode::UnknownTopic
            | RefusalCode::MalformedFrame
            | RefusalCode::UnsupportedVersion
    )
}

fn subscribe_frame(config: &SubscriptionConfig, filter: &Filter, id: u64) -> ClientFrame {
    ClientFrame::Subscribe(Subscribe {
        v: PROTOCOL_VERSION,
        id,
        key: config.key.clone(),
        topic: TOPIC_CONFIRMATION.to_string(),
        accounts: filter.accounts.clone(),
        include_block: filter.include_block,
        include_election_info: filter.include_election_info,
        confirmation_type: filter.confirmation_type.clone(),
        heartbeat_ms: u32::try_from(config.heartbeat.as_millis()).unwrap_or(u32::MAX),
    })
}

/// Opens one leg on a worker of the key that is not `busy` and did not fail lately.
#[allow(clippy::too_many_arguments)]
async fn open_leg(
    client: &RpcClient,
    config: &SubscriptionConfig,
    filter: &Filter,
    ids: &IdSource,
    busy: &[NodeId],
    busy_addrs: &[SocketAddr],
    failed: &mut Failed,
    deadline: Instant,
) -> Result<Leg, LegError> {
    let mut candidates = client
        .candidates(&config.key)
        .await
        .map_err(LegError::Lookup)?;
    candidates.shuffle(&mut rand::rng());
    // Workers that failed lately go last, not away: they may be all there is.
    candidates.sort_by_key(|c| failed.holds(c));
    let mut tried = Vec::new();
    let mut refusal = None;
    for candidate in candidates {
        if candidate.node.is_some_and(|n| busy.contains(&n))
            || candidate.addrs.iter().any(|a| busy_addrs.contains(a))
        {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let timeout = config.open_timeout.min(left);
        let stream = match client.open_stream(&candidate, &config.key, timeout).await {
            Ok(stream) => stream,
            Err(e) => {
                failed.add(candidate.node, candidate.addrs.first().copied());
                tried.push((candidate.to_string(), e.to_string()));
                continue;
            }
        };
        if busy.contains(&stream.node) {
            // The same node at another address: it votes once.
            continue;
        }
        let who = format!("{} ({})", stream.node, stream.worker);
        let id = ids.next();
        match tokio::time::timeout(timeout, handshake(stream, config, filter, id)).await {
            Ok(Ok(leg)) => return Ok(leg),
            Ok(Err(HandshakeError::Refused(code, message))) => {
                let e = SubscribeError::Refused {
                    worker: who.clone(),
                    code,
                    message: message.clone(),
                };
                if is_final(code) {
                    return Err(LegError::Final(e));
                }
                debug!(worker = %who, %code, "subscription refused; trying another worker");
                tried.push((who, format!("{message} ({code})")));
                refusal = Some(e);
            }
            Ok(Err(HandshakeError::Failed(node, addr, why))) => {
                failed.add(Some(node), Some(addr));
                tried.push((who, why));
            }
            Err(_) => {
                failed.add(candidate.node, candidate.addrs.first().copied());
                tried.push((who, format!("no ack within {} ms", timeout.as_millis())));
            }
        }
    }
    Err(LegError::Exhausted { tried, refusal })
}

enum HandshakeError {
    Refused(RefusalCode, String),
    Failed(NodeId, SocketAddr, String),
}

/// Sends the `subscribe` and reads the worker's answer.
async fn handshake(
    stream: SessionStream,
    config: &SubscriptionConfig,
    filter: &Filter,
    id: u64,
) -> Result<Leg, HandshakeError> {
    let SessionStream {
        node,
        worker,
        mut send,
        mut recv,
        ..
    } = stream;
    let failed = |why: String| HandshakeError::Failed(node, worker, why);
    let bytes = subscription::encode(&subscribe_frame(config, filter, id), MAX_CLIENT_FRAME_BYTES)
        .map_err(|e| HandshakeError::Refused(RefusalCode::MalformedFrame, e.to_string()))?;
    send.write_all(&bytes)
        .await
        .map_err(|e| failed(e.to_string()))?;
    match read_frame(&mut recv).await {
        Ok(Some(WorkerFrame::Ack(_))) => Ok(Leg {
            node,
            worker,
            send,
            recv: Some(recv),
        }),
        Ok(Some(WorkerFrame::Refused(r))) => Err(HandshakeError::Refused(r.code, r.message)),
        Ok(Some(other)) => Err(failed(format!("answered the subscribe with {other:?}"))),
        Ok(None) => Err(failed("closed the stream without an answer".into())),
        Err(e) => Err(failed(format!(
            "does not answer subscriptions (an older worker?): {e}"
        ))),
    }
}

/// One worker frame from `recv`; `None` at the end of the stream.
async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<WorkerFrame>, String> {
    let mut prefix = [0u8; frame::LENGTH_PREFIX_LEN];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = frame::body_len(prefix, MAX_WORKER_FRAME_BYTES).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    subscription::decode::<WorkerFrame>(&body)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// What a leg's reader saw.
enum LegMessage {
    Frame(WorkerFrame),
    Ended(String),
}

/// An update waiting for its acks.
struct PendingUpdate {
    waiting: HashSet<usize>,
    reply: Option<oneshot::Sender<Result<u32, SubscribeError>>>,
    /// The accounts once every leg has taken it.
    accounts: Option<Vec<String>>,
    refusal: Option<SubscribeError>,
}

/// A live leg in the actor.
struct LiveLeg {
    node: NodeId,
    worker: SocketAddr,
    send: quinn::SendStream,
    heard: Instant,
    generation: u64,
    reader: tokio::task::JoinHandle<()>,
}

struct Actor {
    client: Arc<RpcClient>,
    config: SubscriptionConfig,
    filter: Filter,
    filter_version: u64,
    ids: Arc<IdSource>,
    failed: Failed,
    slots: Vec<Option<LiveLeg>>,
    generation: u64,
    inbox_tx: mpsc::Sender<(usize, u64, LegMessage)>,
    inbox: mpsc::Receiver<(usize, u64, LegMessage)>,
    events: mpsc::Sender<SubscriptionEvent>,
    votes: Votes,
    updates: HashMap<u64, PendingUpdate>,
    own_lost: u64,
    /// Set when the legs must be sent the filter again (after a refused update).
    resend: bool,
    /// The filter's accounts as keys, to check what workers send.
    followed: Followed,
}

/// The accounts a subscription follows, as keys (`nano_` and `xrb_` alike).
struct Followed(Option<HashSet<crate::nano::LedgerKey>>);

impl Followed {
    fn of(filter: &Filter) -> Self {
        Self(filter.accounts.as_ref().map(|list| {
            list.iter()
                .filter_map(|a| crate::nano::checked::ledger_key(a))
                .collect()
        }))
    }

    /// Whether `message` is a confirmation of a followed account: its `account`, or the
    /// destination of a send (`block.link_as_account`), as workers filter (§8.3). A
    /// message without its block cannot be checked and is believed.
    fn concerns(&self, message: &[u8]) -> bool {
        let Some(keys) = &self.0 else {
            return true;
        };
        #[derive(Deserialize)]
        struct Envelope {
            message: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[serde(default)]
            account: Option<String>,
            #[serde(default)]
            block: Option<Block>,
        }
        #[derive(Deserialize)]
        struct Block {
            #[serde(default)]
            link_as_account: Option<String>,
        }
        let Ok(e) = serde_json::from_slice::<Envelope>(message) else {
            return false;
        };
        // Without its block (include_block false) a send to a followed account names
        // only its sender: nothing to check it by.
        let Some(block) = e.message.block else {
            return true;
        };
        let destination = block.link_as_account;
        [e.message.account, destination]
            .iter()
            .flatten()
            .filter_map(|a| crate::nano::checked::ledger_key(a))
            .any(|k| keys.contains(&k))
    }
}

/// A resubscribe's result.
struct Reopened {
    slot: usize,
    leg: Leg,
    /// The filter version it subscribed with.
    version: u64,
    replaced: NodeId,
    lost_at: Instant,
    failed: Failed,
}

/// Back-off between rounds of a resubscribe: the first round at once, then 250 ms
/// doubling to 2 s.
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Actor {
    fn new(
        client: Arc<RpcClient>,
        config: SubscriptionConfig,
        filter: Filter,
        ids: IdSource,
        failed: Failed,
        legs: Vec<Leg>,
        events: mpsc::Sender<SubscriptionEvent>,
    ) -> Self {
        let (inbox_tx, inbox) = mpsc::channel(64);
        let votes = Votes::new(config.quorum.max(1), config.remember);
        let filter_for_followed = filter.clone();
        let mut actor = Self {
            client,
            config,
            filter,
            filter_version: 0,
            ids: Arc::new(ids),
            failed,
            slots: Vec::new(),
            generation: 0,
            inbox_tx,
            inbox,
            events,
            votes,
            updates: HashMap::new(),
            own_lost: 0,
            resend: false,
            followed: Followed::of(&filter_for_followed),
        };
        for leg in legs {
            let slot = actor.slots.len();
            actor.slots.push(None);
            actor.install(slot, leg);
        }
        actor
    }

    fn install(&mut self, slot: usize, mut leg: Leg) {
        self.generation += 1;
        let generation = self.generation;
        let inbox = self.inbox_tx.clone();
        let reader = match leg.recv.take() {
            Some(mut recv) => tokio::spawn(async move {
                loop {
                    let message = match read_frame(&mut recv).await {
                        Ok(Some(frame)) => LegMessage::Frame(frame),
                        Ok(None) => LegMessage::Ended("the worker ended the stream".into()),
                        Err(e) => LegMessage::Ended(e),
                    };
                    let ended = matches!(message, LegMessage::Ended(_));
                    if inbox.send((slot, generation, message)).await.is_err() || ended {
                        return;
                    }
                }
            }),
            None => tokio::spawn(async {}),
        };
        self.slots[slot] = Some(LiveLeg {
            node: leg.node,
            worker: leg.worker,
            send: leg.send,
            heard: Instant::now(),
            generation,
            reader,
        });
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut reopening: JoinSet<Reopened> = JoinSet::new();
        let mut check =
            tokio::time::interval((self.config.silence / 4).max(Duration::from_millis(10)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    // The Subscription was dropped: unsubscribe.
                    None => break,
                    Some(Command::Update { add, del, reply }) => self.update(add, del, reply).await,
                },
                Some((slot, generation, message)) = self.inbox.recv() => {
                    let current = self.slots.get(slot).and_then(|s| s.as_ref()).map(|l| l.generation);
                    if current != Some(generation) {
                        continue;
                    }
                    match message {
                        LegMessage::Frame(frame) => self.frame(slot, frame),
                        LegMessage::Ended(reason) => self.lose(slot, "ended", reason, &mut reopening),
                    }
                }
                Some(done) = reopening.join_next(), if !reopening.is_empty() => {
                    if let Ok(reopened) = done {
                        self.reopened(reopened, &mut reopening).await;
                    }
                }
                _ = check.tick() => {
                    let silence = self.config.silence;
                    let silent: Vec<usize> = self.slots.iter().enumerate()
                        .filter_map(|(i, s)| s.as_ref().filter(|l| l.heard.elapsed() >= silence).map(|_| i))
                        .collect();
                    for slot in silent {
                        let why = format!("nothing from it for {} ms", silence.as_millis());
                        self.lose(slot, "silent", why, &mut reopening);
                    }
                }
            }
            if self.resend {
                self.resend = false;
                self.resend_filter().await;
            }
        }
        reopening.shutdown().await;
        for leg in self.slots.iter_mut().flatten() {
            let _ = leg.send.finish();
            leg.reader.abort();
        }
    }

    /// Queues `event` for the consumer without waiting: a full queue drops it and counts
    /// it, and the count goes out before the next event that fits.
    fn emit(&mut self, event: SubscriptionEvent) {
        if self.own_lost > 0 {
            let lost = SubscriptionEvent::Lost {
                lost: self.own_lost,
                reason: "slow_consumer".into(),
                from: None,
            };
            if self.events.try_send(lost).is_ok() {
                self.own_lost = 0;
            }
        }
        if self.own_lost > 0 || self.events.try_send(event).is_err() {
            self.own_lost += 1;
            if let Some(m) = &self.config.metrics {
                m.lost.with_label_values(&["slow_consumer"]).inc();
            }
        }
    }

    fn frame(&mut self, slot: usize, frame: WorkerFrame) {
        let Some(leg) = self.slots[slot].as_mut() else {
            return;
        };
        leg.heard = Instant::now();
        let node = leg.node;
        let worker = leg.worker;
        match frame {
            WorkerFrame::Confirmation(c) => {
                if !self.followed.concerns(&c.message) {
                    // Workers are untrusted: one that sends other accounts' blocks is
                    // not believed.
                    debug!(%node, hash = %c.hash, "confirmation for no followed account dropped");
                    return;
                }
                if let Some(workers) = self.votes.report(Instant::now(), node, &c.hash, &c.message)
                {
                    self.emit(SubscriptionEvent::Confirmation(Delivered {
                        hash: c.hash,
                        message: c.message,
                        workers,
                    }));
                }
            }
            WorkerFrame::Notice(n) => {
                if let Some(m) = &self.config.metrics {
                    m.lost
                        .with_label_values(&[n.reason.as_str()])
                        .inc_by(n.lost);
                }
                self.emit(SubscriptionEvent::Lost {
                    lost: n.lost,
                    reason: n.reason,
                    from: Some(node),
                });
            }
            WorkerFrame::Ack(ack) => self.answered(slot, ack.id, Ok(())),
            WorkerFrame::Refused(r) => self.answered(
                slot,
                r.id,
                Err(SubscribeError::Refused {
                    worker: format!("{node} ({worker})"),
                    code: r.code,
                    message: r.message,
                }),
            ),
            WorkerFrame::Closing(c) => {
                // The stream's end follows and is handled as the loss.
                info!(%node, code = %c.code, "worker closes the subscription: {}", c.message);
                self.failed.add(Some(node), Some(worker));
            }
            WorkerFrame::Heartbeat(_) | WorkerFrame::Unknown => {}
        }
    }

    fn answered(&mut self, slot: usize, id: u64, result: Result<(), SubscribeError>) {
        let Some(pending) = self.updates.get_mut(&id) else {
            return;
        };
        pending.waiting.remove(&slot);
        if let Err(e) = result {
            pending.refusal = Some(e);
        }
        if pending.waiting.is_empty() {
            if let Some(pending) = self.updates.remove(&id) {
                self.finish_update(pending);
            }
        }
    }

    /// Answers an update whose legs have all answered: on success the filter takes it;
    /// on a refusal, legs that took it are set back to the filter as it was.
    fn finish_update(&mut self, mut pending: PendingUpdate) {
        let result = match pending.refusal.take() {
            None => {
                self.filter.accounts = pending.accounts.take();
                self.filter_version += 1;
                self.followed = Followed::of(&self.filter);
                Ok(self.filter.accounts.as_ref().map_or(0, |l| count(l.len())))
            }
            Some(e) => {
                self.resend = true;
                self.followed = Followed::of(&self.filter);
                Err(e)
            }
        };
        if let Some(reply) = pending.reply.take() {
            let _ = reply.send(result);
        }
    }

    /// Sends the current filter as a `subscribe` (it replaces the session's options) to
    /// every live leg; their acks are not waited for.
    async fn resend_filter(&mut self) {
        let id = self.ids.next();
        let Ok(bytes) = subscription::encode(
            &subscribe_frame(&self.config, &self.filter, id),
            MAX_CLIENT_FRAME_BYTES,
        ) else {
            return;
        };
        let timeout = self.config.open_timeout;
        for leg in self.slots.iter_mut().flatten() {
            let _ = tokio::time::timeout(timeout, leg.send.write_all(&bytes)).await;
        }
    }

    async fn update(
        &mut self,
        add: Vec<String>,
        del: Vec<String>,
        reply: oneshot::Sender<Result<u32, SubscribeError>>,
    ) {
        let id = self.ids.next();
        let frame = ClientFrame::Update(Update {
            v: PROTOCOL_VERSION,
            id,
            accounts_add: add.clone(),
            accounts_del: del.clone(),
        });
        let bytes = match subscription::encode(&frame, MAX_CLIENT_FRAME_BYTES) {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = reply.send(Err(SubscribeError::Refused {
                    worker: "(none)".into(),
                    code: RefusalCode::TooManyAccounts,
                    message: e.to_string(),
                }));
                return;
            }
        };
        let mut waiting = HashSet::new();
        let timeout = self.config.open_timeout;
        for (slot, leg) in self.slots.iter_mut().enumerate() {
            let Some(leg) = leg else { continue };
            let sent = tokio::time::timeout(timeout, leg.send.write_all(&bytes)).await;
            if matches!(sent, Ok(Ok(()))) {
                waiting.insert(slot);
            }
        }
        let mut accounts = self.filter.accounts.clone();
        if let Some(list) = accounts.as_mut() {
            for a in add {
                if !list.contains(&a) {
                    list.push(a);
                }
            }
            list.retain(|a| !del.contains(a));
        }
        // While the legs take it, believe both the old and the new accounts (a worker
        // may send the new ones' confirmations before the last ack).
        let mut both = self.filter.clone();
        if let (Some(old), Some(new)) = (both.accounts.as_mut(), accounts.as_ref()) {
            old.extend(new.iter().cloned());
        }
        self.followed = Followed::of(&both);
        let pending = PendingUpdate {
            waiting,
            reply: Some(reply),
            accounts,
            refusal: None,
        };
        if pending.waiting.is_empty() {
            // No leg is up: legs opened from now on take it.
            self.finish_update(pending);
            return;
        }
        self.updates.insert(id, pending);
    }

    /// A leg ended: count it, tell the consumer, and start opening another.
    fn lose(
        &mut self,
        slot: usize,
        how: &'static str,
        reason: String,
        reopening: &mut JoinSet<Reopened>,
    ) {
        let Some(mut leg) = self.slots[slot].take() else {
            return;
        };
        leg.reader.abort();
        let _ = leg.send.reset(0u32.into());
        self.failed.add(Some(leg.node), Some(leg.worker));
        let waiting: Vec<u64> = self
            .updates
            .iter_mut()
            .filter_map(|(id, p)| (p.waiting.remove(&slot) && p.waiting.is_empty()).then_some(*id))
            .collect();
        for id in waiting {
            if let Some(pending) = self.updates.remove(&id) {
                self.finish_update(pending);
            }
        }
        info!(node = %leg.node, worker = %leg.worker, %reason, "subscription lost its worker; resubscribing");
        if let Some(m) = &self.config.metrics {
            m.workers_lost.with_label_values(&[how]).inc();
        }
        self.emit(SubscriptionEvent::WorkerLost {
            node: leg.node,
            reason,
        });
        self.spawn_reopen(slot, leg.node, Instant::now(), reopening);
    }

    fn spawn_reopen(
        &mut self,
        slot: usize,
        replaced: NodeId,
        lost_at: Instant,
        reopening: &mut JoinSet<Reopened>,
    ) {
        let client = self.client.clone();
        let config = self.config.clone();
        let filter = self.filter.clone();
        let version = self.filter_version;
        let ids = self.ids.clone();
        let mut failed = self.failed.clone();
        let busy: Vec<NodeId> = self.slots.iter().flatten().map(|l| l.node).collect();
        let busy_addrs: Vec<SocketAddr> = self.slots.iter().flatten().map(|l| l.worker).collect();
        reopening.spawn(async move {
            let mut backoff = Duration::ZERO;
            // Bounded by the subscription's life: one round of candidates at most every
            // REOPEN_BACKOFF_MAX.
            loop {
                tokio::time::sleep(backoff).await;
                let deadline = Instant::now() + config.open_timeout * 2;
                match open_leg(
                    &client,
                    &config,
                    &filter,
                    &ids,
                    &busy,
                    &busy_addrs,
                    &mut failed,
                    deadline,
                )
                .await
                {
                    Ok(leg) => {
                        return Reopened {
                            slot,
                            leg,
                            version,
                            replaced,
                            lost_at,
                            failed,
                        }
                    }
                    Err(LegError::Exhausted { tried, .. }) => {
                        debug!(tried = tried.len(), "no worker took the subscription yet");
                    }
                    Err(LegError::Final(e)) => warn!(error = %e, "resubscribe refused"),
                    Err(LegError::Lookup(e)) => debug!(error = %e, "lookup failed"),
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(250), REOPEN_BACKOFF_MAX);
                if lost_at.elapsed() > config.resubscribe_bound {
                    warn!(
                        secs = lost_at.elapsed().as_secs(),
                        "still no worker takes the subscription"
                    );
                }
            }
        });
    }

    async fn reopened(&mut self, reopened: Reopened, reopening: &mut JoinSet<Reopened>) {
        let Reopened {
            slot,
            mut leg,
            version,
            replaced,
            lost_at,
            failed,
        } = reopened;
        self.failed.merge(failed);
        if self.slots.iter().flatten().any(|l| l.node == leg.node) {
            // Another slot took this node meanwhile: it votes once.
            let _ = leg.send.finish();
            self.spawn_reopen(slot, replaced, lost_at, reopening);
            return;
        }
        let node = leg.node;
        let worker = leg.worker;
        if version != self.filter_version {
            let id = self.ids.next();
            if let Ok(bytes) = subscription::encode(
                &subscribe_frame(&self.config, &self.filter, id),
                MAX_CLIENT_FRAME_BYTES,
            ) {
                let _ = tokio::time::timeout(self.config.open_timeout, leg.send.write_all(&bytes))
                    .await;
            }
        }
        self.install(slot, leg);
        let took = lost_at.elapsed();
        let slow = took > self.config.resubscribe_bound;
        if let Some(m) = &self.config.metrics {
            m.resubscribes
                .with_label_values(&[if slow { "slow" } else { "ok" }])
                .inc();
            m.resubscribe_seconds.observe(took.as_secs_f64());
        }
        info!(%node, %worker, %replaced, ms = took.as_secs_f64() * 1e3, "resubscribed");
        self.emit(SubscriptionEvent::Resubscribed {
            node,
            replaced,
            took,
        });
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::identity::NodeKey;

    fn message(hash: &str, amount: &str) -> Vec<u8> {
        format!(
            r#"{{"topic":"confirmation","time":"1","message":{{"account":"nano_1","amount":"{amount}","hash":"{hash}"}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn without_a_quorum_each_hash_is_delivered_once() {
        let mut votes = Votes::new(1, 2);
        let a = NodeKey::generate().node_id();
        let now = Instant::now();
        assert!(votes.report(now, a, "AA", &message("AA", "1")).is_some());
        assert!(votes.report(now, a, "aa", &message("AA", "1")).is_none());
        assert!(votes.report(now, a, "BB", &message("BB", "1")).is_some());
        assert!(votes.report(now, a, "CC", &message("CC", "1")).is_some());
        // Only the last two are remembered.
        assert!(votes.report(now, a, "AA", &message("AA", "1")).is_some());
    }

    #[test]
    fn a_strict_majority_of_distinct_workers_delivers_once() {
        let mut votes = Votes::new(3, 100);
        let [a, b, c] = [(); 3].map(|_| NodeKey::generate().node_id());
        let now = Instant::now();
        assert_eq!(votes.need(), 2);
        assert!(votes.report(now, a, "AA", &message("AA", "1")).is_none());
        // The same worker twice counts once.
        assert!(votes.report(now, a, "AA", &message("AA", "1")).is_none());
        // A liar's amount is another report.
        assert!(votes.report(now, b, "AA", &message("AA", "9")).is_none());
        assert_eq!(
            votes.report(now, c, "AA", &message("AA", "1")),
            Some(vec![a, c])
        );
        assert!(votes.report(now, b, "AA", &message("AA", "1")).is_none());
    }

    #[test]
    fn reports_expire_after_the_window() {
        let mut votes = Votes::new(2, 100);
        let [a, b] = [(); 2].map(|_| NodeKey::generate().node_id());
        let then = Instant::now();
        assert!(votes.report(then, a, "AA", &message("AA", "1")).is_none());
        let later = then + VOTE_WINDOW + Duration::from_secs(1);
        assert!(votes.report(later, b, "AA", &message("AA", "1")).is_none());
    }

    #[test]
    fn only_followed_accounts_are_believed() {
        let genesis = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";
        let dest = "nano_3cn3tj1ueynwgo7fj6d748kfsk435bpezaro3rdmisyqbuuc9bp7c87srszd";
        let send = format!(
            r#"{{"topic":"confirmation","message":{{"account":"{genesis}","hash":"AA","block":{{"link_as_account":"{dest}"}}}}}}"#
        );
        let xrb = dest.replacen("nano_", "xrb_", 1);
        assert!(Followed::of(&Filter::accounts(vec![xrb])).concerns(send.as_bytes()));
        assert!(Followed::of(&Filter::accounts(vec![genesis.into()])).concerns(send.as_bytes()));
        let other = "nano_1111111111111111111111111111111111111111111111111111hifc8npp";
        assert!(!Followed::of(&Filter::accounts(vec![other.into()])).concerns(send.as_bytes()));
        assert!(!Followed::of(&Filter::accounts(vec![other.into()])).concerns(b"junk"));
        let all = Filter {
            accounts: None,
            ..Filter::accounts(vec![])
        };
        assert!(Followed::of(&all).concerns(b"anything"));
    }

    #[test]
    fn exit_codes_follow_calls() {
        let refused = |code| SubscribeError::Refused {
            worker: "w".into(),
            code,
            message: "m".into(),
        };
        assert_eq!(
            refused(RefusalCode::AllAccountsRefused).exit_code(),
            exit::REFUSED
        );
        assert_eq!(
            refused(RefusalCode::InvalidAccount).exit_code(),
            exit::USAGE
        );
        assert_eq!(
            refused(RefusalCode::UpstreamUnreachable).exit_code(),
            exit::UNREACHABLE
        );
        let e: SubscribeError = CallError::NoWorkers {
            key: "k".into(),
            detail: None,
        }
        .into();
        assert_eq!((e.code(), e.exit_code()), ("no_worker", exit::NO_WORKER));
    }
}
