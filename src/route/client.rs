//! The caller side of the RPC protocol: one client for every face (`call`, `gateway`,
//! `bench`, the library).
//!
//! A request for a key runs: a worker of the key with an open connection, else the
//! lookup ([`super::resolve`], cached a few seconds, with the on-disk cache's workers
//! tried while it runs) → reach one candidate ([`super::reach`]: its own addresses, or
//! through its brokers by punching or relay; every handshake proves the node) → one
//! stream, one frame each way. A worker that cannot be reached, or whose connection dies
//! mid-request, is skipped for a while and the request moves on to the next one, all
//! within the request's deadline.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint};
use rand::seq::SliceRandom;
use tracing::debug;

use super::cache::WorkerCache;
use super::error::CallError;
use super::reach::{self, BrokerConnect, PathKind, ReachError, Reached};
use super::resolve::{self, Candidate, Discovery, Origin};
use crate::defaults::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEAD_ADDRESS_TTL,
    DEFAULT_LOOKUP_CACHE_TTL, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_PUNCH_DEADLINE, DEFAULT_REQUEST_TIMEOUT,
};
use crate::protocol::frame::{
    self, ErrorCode, FrameError, RequestFrame, ResponseFrame, PROTOCOL_VERSION,
};
use crate::protocol::identity::NodeId;
use crate::transport::nat_socket::NatSocket;
use crate::transport::{client_endpoint, QuicConfig, TransportError};
use crate::traversal::Mux;
use crate::worker::CLOSE_NORMAL;

/// Settings of an [`RpcClient`].
#[derive(Debug, Clone)]
pub struct RpcClientConfig {
    /// QUIC settings.
    pub quic: QuicConfig,
    /// The client's UDP socket. Default `0.0.0.0:0`.
    pub bind: SocketAddr,
    /// Deadline of one direct handshake. Default 2 s.
    pub connect_timeout: Duration,
    /// Deadline of a whole request, lookup and failover included. Default 10 s.
    pub request_timeout: Duration,
    /// Largest request frame sent, bytes. Default 64 KiB (the worker's default limit).
    pub max_request_bytes: usize,
    /// Largest response frame read, bytes. Default 8 MiB.
    pub max_response_bytes: usize,
    /// How long a failed worker is skipped. Default 30 s.
    pub dead_ttl: Duration,
    /// Workers tried for one request before giving up. Default 3.
    pub max_attempts: usize,
    /// The least time one worker has to answer before a request that may be resent moves
    /// on: an attempt gets the larger of this and half of what is left of the request's
    /// deadline, so a slow node gets most of a long deadline and a dead worker does not
    /// eat all of a short one. Default 3 s.
    pub attempt_timeout: Duration,
    /// How long a lookup is reused. Default 5 s.
    pub lookup_ttl: Duration,
    /// Time to open a punched path before asking a broker to relay. Default 1.5 s.
    pub punch_deadline: Duration,
    /// Skip punching and use the broker's relay at once (tests).
    pub force_relay: bool,
    /// Deadline of each exchange with a broker. Default 2 s.
    pub broker_timeout: Duration,
}

impl Default for RpcClientConfig {
    fn default() -> Self {
        Self {
            quic: QuicConfig::default(),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            dead_ttl: DEFAULT_DEAD_ADDRESS_TTL,
            max_attempts: 3,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            lookup_ttl: DEFAULT_LOOKUP_CACHE_TTL,
            punch_deadline: DEFAULT_PUNCH_DEADLINE,
            force_relay: false,
            broker_timeout: Duration::from_secs(2),
        }
    }
}

/// How one request may be carried, beyond the client's [`RpcClientConfig`].
///
/// The default is what [`RpcClient::request`] does: failover on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOptions {
    /// Whether the request may be sent again to another worker once it has been sent to
    /// one that then failed (its connection died, it gave no answer within its attempt
    /// time, or it refused with `busy`, `upstream_unreachable` or `upstream_timeout`).
    /// Safe only for requests that change nothing, such as the Nano read-only actions; a
    /// Nano `process` must be sent at most once by one caller, so callers turn this off
    /// for it (see `nano::retry`).
    ///
    /// With `false`, workers that could not be reached at all (no handshake) are still
    /// skipped, since nothing was sent to them; once the request is on a stream, its
    /// outcome is final and the worker has the whole `request_timeout` to answer.
    pub failover: bool,
}

impl Default for RequestOptions {
    fn default() -> Self {
        Self { failover: true }
    }
}

impl RequestOptions {
    /// Failover off: the request is sent to at most one worker.
    pub fn once() -> Self {
        Self { failover: false }
    }
}

/// A service's answer and where and how it came.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The node that answered (its handshake proved it).
    pub node: NodeId,
    /// The worker's address (its own, or its reflexive one behind a NAT).
    pub worker: SocketAddr,
    /// How the connection reached it.
    pub path: PathKind,
    /// The service status (the Nano node's HTTP status for `nano_rpc`).
    pub status: u16,
    /// The service's answer bytes, unchanged.
    pub body: Vec<u8>,
    /// Time spent looking the key up (zero when an open connection or the cache served).
    pub lookup: Duration,
    /// Time spent reaching the worker (`None` when a connection was reused).
    pub connect: Option<Duration>,
    /// Time from opening the stream to the whole answer.
    pub exchange: Duration,
    /// Workers tried before this one answered.
    pub failovers: usize,
}

impl Answer {
    /// `NODEID (IP:PORT)`, for messages.
    pub fn label(&self) -> String {
        format!("{} ({})", self.node, self.worker)
    }
}

/// A stream opened by [`RpcClient::open_stream`] for a long-lived session, and the worker
/// at its other end.
#[derive(Debug)]
pub struct SessionStream {
    /// The node its handshake proved.
    pub node: NodeId,
    /// The worker's address (its own, or its reflexive one behind a NAT).
    pub worker: SocketAddr,
    /// How the connection reached it.
    pub path: PathKind,
    /// The connection the stream is on (shared with requests to the same node): close it
    /// when the worker is found dead, so that no request waits on it.
    pub connection: Connection,
    /// The caller's side.
    pub send: quinn::SendStream,
    /// The worker's side.
    pub recv: quinn::RecvStream,
}

/// A failure on one worker, before deciding whether to move on.
enum Attempt {
    /// Transport failure after the request may have left: skip this worker.
    Failover(String),
    /// No answer within the attempt's time.
    Slow(Duration),
    /// The broker closed the relay circuit.
    RelayClosed(String),
    /// Final for this request.
    Fatal(CallError),
}

/// An open connection and what it serves.
#[derive(Debug, Clone)]
struct Open {
    reached: Reached,
    keys: HashSet<String>,
}

type Lookup<'a> = Pin<Box<dyn Future<Output = Result<Vec<Candidate>, CallError>> + Send + 'a>>;

/// An RPC client: finds workers of a key (through a DHT or brokers), reaches them
/// directly or through NATs, and keeps one QUIC connection per worker node, reused
/// across requests and shared by concurrent ones. Everything goes through one UDP
/// socket, so the mappings brokers see are the ones QUIC uses.
#[derive(Debug)]
pub struct RpcClient {
    endpoint: Endpoint,
    mux: Mux,
    discovery: Discovery,
    config: RpcClientConfig,
    trust: Option<Vec<NodeId>>,
    cache: Option<WorkerCache>,
    resolved: moka::sync::Cache<String, Arc<Vec<Candidate>>>,
    lookups: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    connections: Mutex<HashMap<NodeId, Open>>,
    by_addr: Mutex<HashMap<SocketAddr, NodeId>>,
    dead: Mutex<HashMap<String, Instant>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_ms() -> u64 {
    crate::worker::presence::unix_ms()
}

impl RpcClient {
    /// A client on a fresh UDP socket (`config.bind`) that finds workers with
    /// `discovery`. Needs a tokio runtime.
    ///
    /// Errors: [`CallError::Transport`] when the socket cannot be bound.
    pub fn new(discovery: Discovery, config: RpcClientConfig) -> Result<Self, CallError> {
        let bind = config.bind;
        let (socket, diverted) =
            NatSocket::bind(bind).map_err(|source| TransportError::Bind { addr: bind, source })?;
        let abstract_socket: Arc<dyn quinn::AsyncUdpSocket> = socket.clone();
        let endpoint = client_endpoint(abstract_socket, &config.quic)?;
        let (mux, _unsolicited) = Mux::start(socket, diverted);
        let resolved = moka::sync::Cache::builder()
            .max_capacity(256)
            .time_to_live(config.lookup_ttl.max(Duration::from_millis(1)))
            .build();
        Ok(Self {
            endpoint,
            mux,
            discovery,
            config,
            trust: None,
            cache: None,
            resolved,
            lookups: Mutex::default(),
            connections: Mutex::default(),
            by_addr: Mutex::default(),
            dead: Mutex::default(),
            next_id: AtomicU64::new(1),
        })
    }

    /// Uses only these nodes (`call --worker`, `gateway --trust`): any other worker is
    /// skipped, and a node that cannot be found in a lookup is looked for by its record.
    pub fn with_trust(mut self, nodes: Vec<NodeId>) -> Self {
        self.trust = (!nodes.is_empty()).then_some(nodes);
        self
    }

    /// Keeps workers that answered in `cache`, and tries them first when cold.
    pub fn with_cache(mut self, cache: WorkerCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The client's settings.
    pub fn config(&self) -> &RpcClientConfig {
        &self.config
    }

    /// The client's QUIC endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends `body` to a worker of `key` and returns its answer, with failover (see
    /// [`RpcClient::request_with`]).
    pub async fn request(&self, key: &str, body: &[u8]) -> Result<Answer, CallError> {
        self.request_with(key, body, RequestOptions::default())
            .await
    }

    /// Sends `body` to a worker of `key` and returns its answer.
    ///
    /// Prefers a worker with an open connection, else looks the key up; moves on to
    /// another worker (up to `max_attempts`) when one cannot be reached or its connection
    /// dies, and with `options.failover` also when it is slow or refuses with `busy`,
    /// `upstream_unreachable` or `upstream_timeout`. Any other refusal
    /// ([`CallError::Refused`]) is final. The whole call is bounded by `request_timeout`
    /// ([`CallError::Timeout`], which says what was waited for).
    pub async fn request_with(
        &self,
        key: &str,
        body: &[u8],
        options: RequestOptions,
    ) -> Result<Answer, CallError> {
        let after = self.config.request_timeout;
        let deadline = Instant::now() + after;
        tokio::time::timeout(after, self.request_inner(key, body, options, deadline))
            .await
            .unwrap_or(Err(CallError::Timeout {
                after,
                detail: None,
            }))
    }

    /// Sends `body` for `key` to one candidate (reusing its connection when open),
    /// without failover; for quorum votes and `map`.
    pub async fn request_candidate(
        &self,
        candidate: &Candidate,
        key: &str,
        body: &[u8],
        attempt: Duration,
    ) -> Result<Answer, CallError> {
        self.request_candidate_as(candidate, key, key, body, attempt)
            .await
    }

    /// [`Self::request_candidate`] for a request under another key than the one the
    /// candidate was found by: it is reached as a worker of `service` (what its brokers
    /// know it by, docs/protocol.md §5.3) and asked under `key`, such as
    /// [`crate::protocol::record::RECORD_SERVICE`] for its record.
    pub async fn request_candidate_as(
        &self,
        candidate: &Candidate,
        service: &str,
        key: &str,
        body: &[u8],
        attempt: Duration,
    ) -> Result<Answer, CallError> {
        let deadline = Instant::now() + attempt;
        let work = async {
            let (open, connect) = self
                .reach(candidate, service, deadline)
                .await
                .map_err(|e| CallError::Unreachable {
                    key: key.to_string(),
                    tried: vec![(candidate.to_string(), e.to_string())],
                })?;
            self.check_trust(&open.reached)
                .map_err(|reason| CallError::Unreachable {
                    key: key.to_string(),
                    tried: vec![(candidate.to_string(), reason)],
                })?;
            match self.exchange(&open.reached, key, body).await {
                Ok((status, answer, exchange)) => Ok(self.answer(
                    key,
                    &open.reached,
                    status,
                    answer,
                    Duration::ZERO,
                    connect,
                    exchange,
                    0,
                )),
                Err(Attempt::Fatal(e)) => Err(e),
                Err(Attempt::RelayClosed(message)) => Err(CallError::RelayClosed { message }),
                Err(Attempt::Slow(after)) => Err(CallError::Timeout {
                    after,
                    detail: Some(format!("waiting for {}", label(&open.reached))),
                }),
                Err(Attempt::Failover(reason)) => {
                    self.drop_connection(&open.reached.node);
                    Err(CallError::Unreachable {
                        key: key.to_string(),
                        tried: vec![(label(&open.reached), reason)],
                    })
                }
            }
        };
        tokio::time::timeout(attempt, work)
            .await
            .unwrap_or(Err(CallError::Timeout {
                after: attempt,
                detail: Some(format!("waiting for {candidate}")),
            }))
    }

    /// Sends `body` for `key` to the worker at `addr` (whichever node it is), without
    /// lookup or failover.
    pub async fn request_addr(
        &self,
        addr: SocketAddr,
        key: &str,
        body: &[u8],
    ) -> Result<Answer, CallError> {
        let candidate = Candidate {
            node: lock(&self.by_addr).get(&addr).copied(),
            addrs: vec![addr],
            brokers: Vec::new(),
            origin: Origin::Lookup,
        };
        self.request_candidate(&candidate, key, body, self.config.request_timeout)
            .await
    }

    /// Opens a new bidirectional stream to `candidate` (reusing its open connection, else
    /// reaching it as a request would) for a long-lived session of `key`, such as a
    /// subscription (docs/protocol.md §8); the caller writes the session's first frame.
    /// No failover: the caller chooses the next candidate.
    ///
    /// Errors: [`CallError::Unreachable`] (not reached, not a trusted node, or its
    /// connection takes no stream; the candidate is then skipped by requests for
    /// `dead_ttl`), [`CallError::Timeout`] after `timeout`.
    pub async fn open_stream(
        &self,
        candidate: &Candidate,
        key: &str,
        timeout: Duration,
    ) -> Result<SessionStream, CallError> {
        let deadline = Instant::now() + timeout;
        let unreachable = |who: String, why: String| CallError::Unreachable {
            key: key.to_string(),
            tried: vec![(who, why)],
        };
        let work = async {
            let (open, _) = match self.reach(candidate, key, deadline).await {
                Ok(found) => found,
                Err(e) => {
                    self.mark_dead(candidate.to_string());
                    return Err(unreachable(candidate.to_string(), e.to_string()));
                }
            };
            let reached = open.reached;
            self.check_trust(&reached)
                .map_err(|why| unreachable(label(&reached), why))?;
            match reached.connection.open_bi().await {
                Ok((send, recv)) => Ok(SessionStream {
                    node: reached.node,
                    worker: reached.worker,
                    path: reached.path,
                    connection: reached.connection.clone(),
                    send,
                    recv,
                }),
                Err(e) => {
                    self.drop_connection(&reached.node);
                    self.mark_dead(reached.node.to_string());
                    Err(unreachable(label(&reached), e.to_string()))
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(CallError::Timeout {
                after: timeout,
                detail: Some(format!("reaching {candidate}")),
            }))
    }

    /// The workers of `key`: a lookup (reused for `lookup_ttl`), with the trusted nodes'
    /// own records when trust is set. An empty list is not an error.
    pub async fn candidates(&self, key: &str) -> Result<Vec<Candidate>, CallError> {
        if let Some(found) = self.resolved.get(key) {
            return Ok(found.as_ref().clone());
        }
        let found = self.lookup(key).await?;
        Ok(found.as_ref().clone())
    }

    /// Sends `body` to every worker of `key` at once (Grenache's `map`) and returns each
    /// worker's result, labelled with its node id (or address when unreachable).
    pub async fn map(
        &self,
        key: &str,
        body: &[u8],
    ) -> Result<Vec<(String, Result<Answer, CallError>)>, CallError> {
        let workers = self.candidates(key).await?;
        if workers.is_empty() {
            return Err(CallError::NoWorkers {
                key: key.to_string(),
                detail: None,
            });
        }
        let attempt = self.config.request_timeout;
        Ok(
            futures::future::join_all(workers.iter().map(|c| async move {
                let result = self.request_candidate(c, key, body, attempt).await;
                let name = match &result {
                    Ok(answer) => answer.node.to_string(),
                    Err(_) => c.to_string(),
                };
                (name, result)
            }))
            .await,
        )
    }

    /// Closes every connection (code 0) and waits up to `grace` for the peers to learn
    /// of it.
    pub async fn close(&self, grace: Duration) {
        self.endpoint.close(CLOSE_NORMAL.into(), b"done");
        let extra: Vec<Endpoint> = lock(&self.connections)
            .values()
            .filter_map(|o| o.reached.endpoint.clone())
            .collect();
        for endpoint in &extra {
            endpoint.close(CLOSE_NORMAL.into(), b"done");
        }
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }

    /// Looks `key` up once for all concurrent callers (they wait for the first one's
    /// result), and keeps it for `lookup_ttl`.
    async fn lookup(&self, key: &str) -> Result<Arc<Vec<Candidate>>, CallError> {
        let gate = lock(&self.lookups)
            .entry(key.to_string())
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        if let Some(found) = self.resolved.get(key) {
            return Ok(found);
        }
        let started = Instant::now();
        let mut found = match &self.discovery {
            Discovery::None => {
                return Err(CallError::NoDiscovery {
                    key: key.to_string(),
                })
            }
            discovery => {
                resolve::lookup(
                    discovery,
                    &self.mux,
                    key,
                    self.config.broker_timeout,
                    unix_ms(),
                )
                .await?
            }
        };
        if let (Some(trust), Discovery::Directory(directory)) = (&self.trust, &self.discovery) {
            let missing: Vec<NodeId> = trust
                .iter()
                .filter(|n| !found.iter().any(|c| c.node.as_ref() == Some(n)))
                .copied()
                .collect();
            let records = futures::future::join_all(
                missing
                    .iter()
                    .map(|n| resolve::named(directory, n, key, unix_ms())),
            )
            .await;
            found.extend(
                records
                    .into_iter()
                    .flatten()
                    .map(|r| Candidate::from_record(&r, Origin::Record)),
            );
            found = resolve::merge(found);
        }
        debug!(%key, found = found.len(), ms = started.elapsed().as_secs_f64() * 1e3, "looked up");
        let found = Arc::new(found);
        if !found.is_empty() {
            self.resolved.insert(key.to_string(), found.clone());
        }
        Ok(found)
    }

    fn forget_lookup(&self, key: &str) {
        self.resolved.invalidate(key);
        if let Discovery::Directory(directory) = &self.discovery {
            directory.invalidate(key);
        }
    }

    /// Whether a candidate may be used at all under the trust set.
    fn allowed(&self, candidate: &Candidate) -> bool {
        match (&self.trust, &candidate.node) {
            (None, _) => true,
            (Some(trust), Some(node)) => trust.contains(node),
            // Unknown until the handshake: checked then.
            (Some(_), None) => true,
        }
    }

    fn check_trust(&self, reached: &Reached) -> Result<(), String> {
        match &self.trust {
            Some(trust) if !trust.contains(&reached.node) => Err(format!(
                "it proved node id {}, not the expected {}",
                reached.node,
                trust
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
            _ => Ok(()),
        }
    }

    /// Whether `candidate` was tried in this request already: by its name, or by the
    /// node a direct address is known to belong to.
    fn used(&self, candidate: &Candidate, used: &HashSet<String>) -> bool {
        if used.contains(&candidate.to_string()) {
            return true;
        }
        let node = candidate.node.or_else(|| {
            let by_addr = lock(&self.by_addr);
            candidate.addrs.iter().find_map(|a| by_addr.get(a).copied())
        });
        node.is_some_and(|n| used.contains(&n.to_string()))
    }

    fn is_dead(&self, name: &str) -> bool {
        lock(&self.dead)
            .get(name)
            .is_some_and(|at| at.elapsed() < self.config.dead_ttl)
    }

    fn mark_dead(&self, name: String) {
        lock(&self.dead).insert(name, Instant::now());
    }

    fn drop_connection(&self, node: &NodeId) {
        lock(&self.connections).remove(node);
    }

    /// Open connections to workers of `key` (trusted ones), in random order.
    fn open_for(&self, key: &str) -> Vec<Candidate> {
        let mut open: Vec<Candidate> = lock(&self.connections)
            .iter()
            .filter(|(_, o)| o.keys.contains(key) && o.reached.connection.close_reason().is_none())
            .map(|(node, o)| Candidate {
                node: Some(*node),
                addrs: vec![o.reached.remote],
                brokers: Vec::new(),
                origin: Origin::Lookup,
            })
            .filter(|c| self.allowed(c))
            .collect();
        open.shuffle(&mut rand::rng());
        open
    }

    /// Orders fresh candidates: known live ones shuffled (spreading load), recently
    /// failed ones last.
    fn order(&self, mut candidates: Vec<Candidate>) -> Vec<Candidate> {
        candidates.retain(|c| self.allowed(c));
        candidates.shuffle(&mut rand::rng());
        candidates.sort_by_key(|c| self.is_dead(&c.to_string()));
        candidates
    }

    #[allow(clippy::too_many_lines)]
    async fn request_inner(
        &self,
        key: &str,
        body: &[u8],
        options: RequestOptions,
        deadline: Instant,
    ) -> Result<Answer, CallError> {
        let started = Instant::now();
        let mut tried: Vec<(String, String)> = Vec::new();
        let mut used: HashSet<String> = HashSet::new();
        let mut last_refusal: Option<CallError> = None;
        let mut lookup_took = Duration::ZERO;
        let mut refreshed = false;
        // Candidates in the order they will be tried; a pending lookup fills it later.
        let mut pool: Vec<Candidate> = self.open_for(key);
        let mut pending: Option<Lookup<'_>> = None;
        if pool.is_empty() {
            match self.resolved.get(key) {
                Some(found) => pool = self.order(found.as_ref().clone()),
                None => {
                    if let Some(cache) = &self.cache {
                        pool = self.order(cache.candidates(key, unix_ms()));
                    }
                    let key = key.to_string();
                    pending = Some(Box::pin(async move {
                        self.lookup(&key).await.map(|f| f.as_ref().clone())
                    }));
                }
            }
        }
        let mut no_discovery = false;
        for _ in 0..self.config.max_attempts.max(1) * 4 {
            if tried.len() >= self.config.max_attempts.max(1) {
                break;
            }
            pool.retain(|c| !self.used(c, &used));
            if pool.is_empty() {
                if let Some(lookup) = pending.take() {
                    let t = Instant::now();
                    match lookup.await {
                        Ok(found) => {
                            lookup_took = t.elapsed();
                            pool = self.order(found);
                        }
                        Err(e) => {
                            if tried.is_empty() {
                                return Err(e);
                            }
                        }
                    }
                    continue;
                }
                if matches!(self.discovery, Discovery::None) {
                    no_discovery = true;
                    break;
                }
                if refreshed || tried.is_empty() {
                    break;
                }
                // The lookup's workers are used up: ask again once.
                refreshed = true;
                self.forget_lookup(key);
                let t = Instant::now();
                match self.lookup(key).await {
                    Ok(found) => {
                        lookup_took += t.elapsed();
                        pool = self.order(found.as_ref().clone());
                    }
                    Err(_) => break,
                }
                continue;
            }
            let candidate = pool.remove(0);
            let name = candidate.to_string();
            used.insert(name.clone());
            // Reach the candidate while the lookup (if any) goes on beside it.
            let reach = self.reach(&candidate, key, deadline);
            tokio::pin!(reach);
            let reached = loop {
                tokio::select! {
                    r = &mut reach => break r,
                    found = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                        pending = None;
                        if let Ok(found) = found {
                            let mut fresh = self.order(found);
                            fresh.retain(|c| !self.used(c, &used));
                            pool.extend(fresh);
                        }
                    }
                }
            };
            let (open, connect) = match reached {
                Ok(found) => found,
                Err(e) => {
                    debug!(worker = %name, error = %e, "not reached");
                    self.mark_dead(name.clone());
                    if let (Some(cache), Some(node), Origin::Cache) =
                        (&self.cache, &candidate.node, candidate.origin)
                    {
                        cache.forget(key, node);
                    }
                    tried.push((name, e.to_string()));
                    continue;
                }
            };
            if let Err(reason) = self.check_trust(&open.reached) {
                tried.push((label(&open.reached), reason));
                continue;
            }
            used.insert(open.reached.node.to_string());
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt_time = if options.failover {
                self.config
                    .attempt_timeout
                    .max(remaining / 2)
                    .min(remaining)
            } else {
                remaining
            };
            let attempt =
                tokio::time::timeout(attempt_time, self.exchange(&open.reached, key, body))
                    .await
                    .unwrap_or(Err(Attempt::Slow(attempt_time)));
            match attempt {
                Ok((status, answer, exchange)) => {
                    return Ok(self.answer(
                        key,
                        &open.reached,
                        status,
                        answer,
                        lookup_took,
                        connect,
                        exchange,
                        tried.len(),
                    ));
                }
                Err(Attempt::Failover(reason)) => {
                    self.drop_connection(&open.reached.node);
                    self.mark_dead(open.reached.node.to_string());
                    self.forget_lookup(key);
                    tried.push((label(&open.reached), reason));
                    if !options.failover {
                        break;
                    }
                }
                Err(Attempt::Slow(after)) => {
                    // Alive but slow (its node, most likely): not marked dead.
                    let what = format!(
                        "no answer within {} ms (its node may be slow)",
                        after.as_millis()
                    );
                    if !options.failover || Instant::now() >= deadline {
                        return Err(CallError::Timeout {
                            after: started.elapsed(),
                            detail: Some(format!("{} gave {what}", label(&open.reached))),
                        });
                    }
                    tried.push((label(&open.reached), what));
                }
                Err(Attempt::RelayClosed(message)) => {
                    self.drop_connection(&open.reached.node);
                    if !options.failover {
                        return Err(CallError::RelayClosed { message });
                    }
                    tried.push((label(&open.reached), message));
                }
                Err(Attempt::Fatal(CallError::Refused { worker, error }))
                    if options.failover
                        && matches!(
                            error.code,
                            ErrorCode::Busy
                                | ErrorCode::UpstreamUnreachable
                                | ErrorCode::UpstreamTimeout
                        ) =>
                {
                    tried.push((worker.clone(), error.message.clone()));
                    last_refusal = Some(CallError::Refused { worker, error });
                }
                Err(Attempt::Fatal(e)) => return Err(e),
            }
        }
        if no_discovery && tried.is_empty() {
            return Err(CallError::NoDiscovery {
                key: key.to_string(),
            });
        }
        if let Some(refusal) = last_refusal {
            return Err(refusal);
        }
        if tried.is_empty() {
            let detail = match (&self.trust, &self.discovery) {
                (Some(t), _) => Some(format!(
                    "none of the {} trusted node(s) was found: {}",
                    t.len(),
                    t.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                (None, Discovery::Brokers(brokers)) => Some(format!(
                    "no worker is registered for it at the broker(s) {}",
                    brokers
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                _ => None,
            };
            return Err(CallError::NoWorkers {
                key: key.to_string(),
                detail,
            });
        }
        if tried
            .iter()
            .all(|(_, why)| why.starts_with("no answer within"))
        {
            return Err(CallError::Timeout {
                after: started.elapsed(),
                detail: Some(
                    tried
                        .iter()
                        .map(|(w, why)| format!("{w} gave {why}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
            });
        }
        Err(CallError::Unreachable {
            key: key.to_string(),
            tried,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn answer(
        &self,
        key: &str,
        reached: &Reached,
        status: u16,
        body: Vec<u8>,
        lookup: Duration,
        connect: Option<Duration>,
        exchange: Duration,
        failovers: usize,
    ) -> Answer {
        if let Some(cache) = &self.cache {
            let (addrs, brokers) = ways(reached);
            cache.remember(key, reached.node, addrs, brokers, unix_ms());
        }
        Answer {
            node: reached.node,
            worker: reached.worker,
            path: reached.path,
            status,
            body,
            lookup,
            connect,
            exchange,
            failovers,
        }
    }

    /// An open connection to `candidate`, or a new one: its own addresses first (all at
    /// once), then each of its brokers in turn. Returns the connection and how long
    /// reaching it took (`None` when reused).
    async fn reach(
        &self,
        candidate: &Candidate,
        key: &str,
        deadline: Instant,
    ) -> Result<(Open, Option<Duration>), ReachError> {
        let known = candidate.node.or_else(|| {
            candidate
                .addrs
                .iter()
                .find_map(|a| lock(&self.by_addr).get(a).copied())
        });
        if let Some(node) = known {
            let open = lock(&self.connections).get(&node).cloned();
            if let Some(mut open) = open {
                if open.reached.connection.close_reason().is_none() {
                    if open.keys.insert(key.to_string()) {
                        if let Some(o) = lock(&self.connections).get_mut(&node) {
                            o.keys.insert(key.to_string());
                        }
                    }
                    return Ok((open, None));
                }
                self.drop_connection(&node);
            }
        }
        let started = Instant::now();
        let mut errors: Vec<ReachError> = Vec::new();
        let mut reached = None;
        if !candidate.addrs.is_empty() {
            let timeout = self
                .config
                .connect_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let dials = candidate.addrs.iter().map(|&addr| {
                let endpoint = self.endpoint.clone();
                async move {
                    reach::dial(&endpoint, addr, known.as_ref(), timeout)
                        .await
                        .map(|(c, node)| (c, node, addr))
                }
            });
            // The first address to answer wins; the others are dropped.
            let mut dials: futures::stream::FuturesUnordered<_> = dials.collect();
            use futures::StreamExt;
            while let Some(result) = dials.next().await {
                match result {
                    Ok((connection, node, addr)) => {
                        reached = Some(Reached {
                            connection,
                            node,
                            worker: addr,
                            remote: addr,
                            path: PathKind::Direct,
                            broker: None,
                            closed_by_broker: None,
                            endpoint: None,
                        });
                        break;
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        if reached.is_none() {
            for &broker in &candidate.brokers {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let connect = BrokerConnect {
                    broker,
                    key: key.to_string(),
                    node: known,
                    punch_deadline: self.config.punch_deadline,
                    force_relay: self.config.force_relay,
                    broker_timeout: self.config.broker_timeout,
                    unix_ms: unix_ms(),
                };
                match tokio::time::timeout(
                    left,
                    reach::through_broker(&self.mux, &self.endpoint, &connect),
                )
                .await
                {
                    Ok(Ok(found)) => {
                        reached = Some(found);
                        break;
                    }
                    Ok(Err(e)) => errors.push(e),
                    Err(_) => {
                        errors.push(ReachError::Broker(crate::traversal::BrokerError::Silent {
                            broker,
                            after: left,
                        }))
                    }
                }
            }
        }
        let Some(reached) = reached else {
            return Err(match errors.len() {
                0 => ReachError::Handshake {
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    reason: "no address or broker to reach it by".into(),
                },
                1 => errors.remove(0),
                _ => ReachError::Handshake {
                    addr: candidate
                        .addrs
                        .first()
                        .copied()
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                    reason: errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                },
            });
        };
        debug!(
            node = %reached.node,
            path = reached.path.as_str(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "connected"
        );
        if reached.broker.is_none() {
            lock(&self.by_addr).insert(reached.remote, reached.node);
        }
        let open = Open {
            reached,
            keys: HashSet::from([key.to_string()]),
        };
        lock(&self.connections).insert(open.reached.node, open.clone());
        Ok((open, Some(started.elapsed())))
    }

    /// One request on a new stream of `reached`'s connection.
    async fn exchange(
        &self,
        reached: &Reached,
        key: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>, Duration), Attempt> {
        let work = self.exchange_on(&reached.connection, reached, key, body);
        match &reached.closed_by_broker {
            None => work.await,
            Some(closed) => {
                let mut closed = closed.clone();
                let closed = async move {
                    let message = match closed.wait_for(Option::is_some).await {
                        Ok(m) => Some(m.clone().unwrap_or_default()),
                        Err(_) => None,
                    };
                    match message {
                        Some(message) => message,
                        // The watcher ended with the socket: the request sees that.
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    result = work => result,
                    message = closed => Err(Attempt::RelayClosed(message)),
                }
            }
        }
    }

    async fn exchange_on(
        &self,
        connection: &Connection,
        reached: &Reached,
        key: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>, Duration), Attempt> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = RequestFrame {
            v: PROTOCOL_VERSION,
            id,
            key: key.to_string(),
            body: body.to_vec(),
        };
        let bytes = frame::encode(&request, self.config.max_request_bytes)
            .map_err(|e| Attempt::Fatal(e.into()))?;
        let started = Instant::now();
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| Attempt::Failover(e.to_string()))?;
        send.write_all(&bytes)
            .await
            .map_err(|e| Attempt::Failover(e.to_string()))?;
        let _ = send.finish();
        let limit = self.config.max_response_bytes + frame::LENGTH_PREFIX_LEN;
        let raw = match recv.read_to_end(limit).await {
            Ok(raw) => raw,
            Err(quinn::ReadToEndError::TooLong) => {
                return Err(Attempt::Fatal(CallError::Frame(FrameError::TooLarge {
                    len: limit,
                    limit: self.config.max_response_bytes,
                })))
            }
            Err(quinn::ReadToEndError::Read(e)) => return Err(Attempt::Failover(e.to_string())),
        };
        let exchange = started.elapsed();
        let response: ResponseFrame = frame::decode(&raw, self.config.max_response_bytes)
            .map_err(|e| Attempt::Fatal(e.into()))?;
        if let Some(error) = response.error {
            return Err(Attempt::Fatal(CallError::Refused {
                worker: label(reached),
                error,
            }));
        }
        if response.id != id {
            return Err(Attempt::Fatal(CallError::Frame(FrameError::Malformed(
                format!("answer id {} does not match request id {id}", response.id),
            ))));
        }
        Ok((response.status, response.body, exchange))
    }
}

/// `NODEID (IP:PORT)`.
fn label(reached: &Reached) -> String {
    format!("{} ({})", reached.node, reached.worker)
}

/// What to remember of how a worker was reached: its address when direct, its broker
/// otherwise (the relay circuit's broker, or the broker behind a punched path).
fn ways(reached: &Reached) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    match reached.broker {
        None => (vec![reached.remote], Vec::new()),
        Some(broker) => (Vec::new(), vec![broker]),
    }
}
