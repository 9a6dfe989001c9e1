//! The caller side of the RPC protocol.
//!
//! A request for a key runs: lookup (cached) → pick a worker that has an open
//! connection, or race handshakes to the candidates with a stagger → one stream, one
//! frame each way. A worker that cannot be reached, or whose connection dies mid-request,
//! is skipped for a while and the request moves on to the next one, all within the
//! request's deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint};
use rand::seq::SliceRandom;
use tokio::task::JoinSet;
use tracing::debug;

use crate::defaults::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_STAGGER, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DEAD_ADDRESS_TTL, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_REQUEST_TIMEOUT,
};
use crate::discovery::link::{Link, LinkError};
use crate::protocol::frame::{
    self, ErrorCode, FrameError, RequestFrame, ResponseFrame, WireError, PROTOCOL_VERSION,
};
use crate::transport::tls::ANY_NODE;
use crate::transport::{bind_udp, client_endpoint, QuicConfig, TransportError};

use crate::worker::CLOSE_NORMAL;

/// Settings of an [`RpcClient`].
#[derive(Debug, Clone)]
pub struct RpcClientConfig {
    /// QUIC settings.
    pub quic: QuicConfig,
    /// Deadline of one handshake. Default 2 s.
    pub connect_timeout: Duration,
    /// Head start of one handshake before the next candidate is dialed too. Default 250 ms.
    pub connect_stagger: Duration,
    /// Deadline of a whole request, lookup and failover included. Default 10 s.
    pub request_timeout: Duration,
    /// Largest request frame sent, bytes. Default 64 KiB (the worker's default limit).
    pub max_request_bytes: usize,
    /// Largest response frame read, bytes. Default 8 MiB.
    pub max_response_bytes: usize,
    /// How long a failed address is skipped. Default 30 s.
    pub dead_ttl: Duration,
    /// Workers tried for one request before giving up. Default 3.
    pub max_attempts: usize,
    /// Time one worker has to answer before the request moves on to the next one. A
    /// worker killed without a goodbye leaves its connection looking open until the idle
    /// timeout; this bounds what that costs. Default 3 s.
    pub attempt_timeout: Duration,
}

impl Default for RpcClientConfig {
    fn default() -> Self {
        Self {
            quic: QuicConfig::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            connect_stagger: DEFAULT_CONNECT_STAGGER,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            dead_ttl: DEFAULT_DEAD_ADDRESS_TTL,
            max_attempts: 3,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
        }
    }
}

/// How one request may be carried, beyond the client's [`RpcClientConfig`].
///
/// The default is what [`RpcClient::request`] does: failover on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOptions {
    /// Whether the request may be sent again to another worker once it has been sent to
    /// one that then failed (its connection died, it gave no answer within
    /// `attempt_timeout`, or it refused with `busy`, `upstream_unreachable` or
    /// `upstream_timeout`). Safe only for requests that change nothing, such as the Nano
    /// read-only actions; a Nano `process` must be sent at most once by one caller, so
    /// callers turn this off for it (see `nano::retry`).
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
    /// The worker that answered.
    pub worker: SocketAddr,
    /// The service status (the Nano node's HTTP status for `nano_rpc`).
    pub status: u16,
    /// The service's answer bytes, unchanged.
    pub body: Vec<u8>,
    /// Time spent looking the key up (zero for a cached lookup or a direct request).
    pub lookup: Duration,
    /// Time spent on the QUIC handshake (`None` when a connection was reused).
    pub connect: Option<Duration>,
    /// Time from opening the stream to the whole answer.
    pub exchange: Duration,
    /// Workers tried before this one answered.
    pub failovers: usize,
}

/// Why a request got no service answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The client's own endpoint could not be made.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The grape lookup failed.
    #[error("lookup failed: {0}")]
    Lookup(#[from] LinkError),
    /// A request by key on a client made without a grape.
    #[error("this client has no grape to look {key:?} up (give one with --grape)")]
    NoLink {
        /// The key asked for.
        key: String,
    },
    /// Nobody announced the key.
    #[error("no worker announces {key:?} (is a worker running with --announce {key}, on a grape of this network?)")]
    NoWorkers {
        /// The key asked for.
        key: String,
    },
    /// Every worker tried failed at the transport level.
    #[error("no worker of {key:?} could be reached: {}", describe(.tried))]
    Unreachable {
        /// The key asked for.
        key: String,
        /// Each worker tried, with its failure.
        tried: Vec<(SocketAddr, String)>,
    },
    /// The worker refused or failed the request; `error.code` says why.
    #[error("worker {worker} refused: {} ({})", .error.message, .error.code)]
    Refused {
        /// The worker.
        worker: SocketAddr,
        /// Its reason.
        error: WireError,
    },
    /// No answer within the request deadline.
    #[error("no answer within {} ms", .after.as_millis())]
    Timeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// The request could not be framed (too large) or the answer could not be read.
    #[error("frame error: {0}")]
    Frame(#[from] FrameError),
}

fn describe(tried: &[(SocketAddr, String)]) -> String {
    tried
        .iter()
        .map(|(a, e)| format!("{a}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A failure on one worker, before deciding whether to move on.
enum Attempt {
    /// Transport failure: skip this worker and try another.
    Failover(String),
    /// Final for this request.
    Fatal(CallError),
}

/// An RPC client: looks keys up through a grape and keeps one QUIC connection per
/// worker, reused across requests and shared by concurrent ones.
#[derive(Debug)]
pub struct RpcClient {
    endpoint: Endpoint,
    link: Option<Link>,
    config: RpcClientConfig,
    connections: Mutex<HashMap<SocketAddr, Connection>>,
    dead: Mutex<HashMap<SocketAddr, Instant>>,
    next_id: AtomicU64,
}

impl RpcClient {
    /// A client on a fresh UDP socket (0.0.0.0, any port) that looks keys up through
    /// `link` (`None`: only [`RpcClient::request_addr`] works).
    pub fn new(link: Option<Link>, config: RpcClientConfig) -> Result<Self, CallError> {
        let addr = SocketAddr::from(([0, 0, 0, 0], 0));
        let socket = bind_udp(addr).map_err(|source| TransportError::Bind { addr, source })?;
        let endpoint = client_endpoint(socket, &config.quic)?;
        Ok(Self::with_endpoint(endpoint, link, config))
    }

    /// A client on an endpoint made by the caller (for example one that also serves).
    pub fn with_endpoint(endpoint: Endpoint, link: Option<Link>, config: RpcClientConfig) -> Self {
        Self {
            endpoint,
            link,
            config,
            connections: Mutex::default(),
            dead: Mutex::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// The client's settings.
    pub fn config(&self) -> &RpcClientConfig {
        &self.config
    }

    /// The client's QUIC endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Uses `connection` (made on this client's endpoint, for example through a broker)
    /// for requests to `addr` from now on.
    pub fn adopt(&self, addr: SocketAddr, connection: Connection) {
        if let Ok(mut connections) = self.connections.lock() {
            connections.insert(addr, connection);
        }
    }

    /// Sends `body` to a worker of `key` and returns its answer.
    ///
    /// Looks the key up, prefers a worker with an open connection, and moves on to
    /// another worker (up to `max_attempts`) when one cannot be reached or its connection
    /// dies. A worker's refusal ([`CallError::Refused`]) is final, except `busy`,
    /// `upstream_unreachable` and `upstream_timeout`, which try the next worker.
    /// The whole call is bounded by `request_timeout` ([`CallError::Timeout`]).
    ///
    /// This retries requests that may have reached a worker; for requests that must be
    /// sent at most once (a Nano `process`), use [`RpcClient::request_with`] and
    /// [`RequestOptions::once`].
    pub async fn request(&self, key: &str, body: &[u8]) -> Result<Answer, CallError> {
        self.request_with(key, body, RequestOptions::default())
            .await
    }

    /// [`RpcClient::request`] with `options`; with `failover` off, the request is put on
    /// a stream to one worker only (see [`RequestOptions::failover`]).
    pub async fn request_with(
        &self,
        key: &str,
        body: &[u8],
        options: RequestOptions,
    ) -> Result<Answer, CallError> {
        let after = self.config.request_timeout;
        tokio::time::timeout(after, self.request_inner(key, body, options))
            .await
            .unwrap_or(Err(CallError::Timeout { after }))
    }

    /// The workers that announce `key`, from the grape (or the lookup cache).
    ///
    /// Errors with [`CallError::NoLink`] on a client without a grape and
    /// [`CallError::Lookup`] when the grape cannot be asked; an empty list is not an error.
    pub async fn workers(&self, key: &str) -> Result<Vec<SocketAddr>, CallError> {
        let link = self.link.as_ref().ok_or_else(|| CallError::NoLink {
            key: key.to_string(),
        })?;
        Ok(link.lookup(key).await?)
    }

    async fn request_inner(
        &self,
        key: &str,
        body: &[u8],
        options: RequestOptions,
    ) -> Result<Answer, CallError> {
        let link = self.link.as_ref().ok_or_else(|| CallError::NoLink {
            key: key.to_string(),
        })?;
        let started = Instant::now();
        let mut candidates = link.lookup(key).await?;
        let lookup = started.elapsed();
        if candidates.is_empty() {
            return Err(CallError::NoWorkers {
                key: key.to_string(),
            });
        }
        let mut tried: Vec<(SocketAddr, String)> = Vec::new();
        let mut last_refusal = None;
        for attempt in 0..self.config.max_attempts.max(1) {
            candidates.retain(|a| !tried.iter().any(|(t, _)| t == a));
            if candidates.is_empty() && attempt > 0 {
                // The cached list is used up: ask the grape again once.
                link.invalidate(key);
                candidates = link.lookup(key).await?;
                candidates.retain(|a| !tried.iter().any(|(t, _)| t == a));
            }
            if candidates.is_empty() {
                break;
            }
            let ordered = self.order(&candidates);
            let (worker, connection, connect) = match self.connect_any(&ordered).await {
                Ok(found) => found,
                Err(failures) => {
                    tried.extend(failures);
                    continue;
                }
            };
            // Without failover, this worker is the only one: it gets the whole deadline
            // (the outer timeout of `request_with` ends it).
            let attempt_timeout = if options.failover {
                self.config.attempt_timeout
            } else {
                self.config.request_timeout
            };
            let attempt = tokio::time::timeout(
                attempt_timeout,
                self.exchange(&connection, worker, key, body),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Attempt::Failover(format!(
                    "no answer within {} ms",
                    attempt_timeout.as_millis()
                )))
            });
            match attempt {
                Ok((status, answer, exchange)) => {
                    return Ok(Answer {
                        worker,
                        status,
                        body: answer,
                        lookup,
                        connect,
                        exchange,
                        failovers: tried.len(),
                    })
                }
                Err(Attempt::Failover(reason)) => {
                    self.mark_dead(worker);
                    link.invalidate(key);
                    tried.push((worker, reason));
                    if !options.failover {
                        break;
                    }
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
                    tried.push((worker, error.message.clone()));
                    last_refusal = Some(CallError::Refused { worker, error });
                }
                Err(Attempt::Fatal(e)) => return Err(e),
            }
        }
        Err(last_refusal.unwrap_or(CallError::Unreachable {
            key: key.to_string(),
            tried,
        }))
    }

    /// Sends `body` for `key` to the worker at `addr`, without lookup or failover.
    pub async fn request_addr(
        &self,
        addr: SocketAddr,
        key: &str,
        body: &[u8],
    ) -> Result<Answer, CallError> {
        let after = self.config.request_timeout;
        let work = async {
            let (worker, connection, connect) =
                self.connect_any(&[addr])
                    .await
                    .map_err(|tried| CallError::Unreachable {
                        key: key.to_string(),
                        tried,
                    })?;
            match self.exchange(&connection, worker, key, body).await {
                Ok((status, body, exchange)) => Ok(Answer {
                    worker,
                    status,
                    body,
                    lookup: Duration::ZERO,
                    connect,
                    exchange,
                    failovers: 0,
                }),
                Err(Attempt::Failover(reason)) => Err(CallError::Unreachable {
                    key: key.to_string(),
                    tried: vec![(worker, reason)],
                }),
                Err(Attempt::Fatal(e)) => Err(e),
            }
        };
        tokio::time::timeout(after, work)
            .await
            .unwrap_or(Err(CallError::Timeout { after }))
    }

    /// Sends `body` to every worker of `key` at once (Grenache's `map`) and returns each
    /// worker's result, in address order.
    pub async fn map(
        &self,
        key: &str,
        body: &[u8],
    ) -> Result<Vec<(SocketAddr, Result<Answer, CallError>)>, CallError> {
        let link = self.link.as_ref().ok_or_else(|| CallError::NoLink {
            key: key.to_string(),
        })?;
        let workers = link.lookup(key).await?;
        if workers.is_empty() {
            return Err(CallError::NoWorkers {
                key: key.to_string(),
            });
        }
        let results = futures::future::join_all(
            workers
                .iter()
                .map(|&addr| async move { (addr, self.request_addr(addr, key, body).await) }),
        )
        .await;
        Ok(results)
    }

    /// Closes every connection (code 0) and waits up to `grace` for the peers to learn of it.
    pub async fn close(&self, grace: Duration) {
        self.endpoint.close(CLOSE_NORMAL.into(), b"done");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }

    /// Candidates with open connections first, then the live ones shuffled (spreading
    /// load), then recently failed ones as a last resort.
    fn order(&self, candidates: &[SocketAddr]) -> Vec<SocketAddr> {
        let open: Vec<SocketAddr> = candidates
            .iter()
            .copied()
            .filter(|a| self.open_connection(a).is_some())
            .collect();
        let now = Instant::now();
        let dead = self.dead.lock().map(|d| d.clone()).unwrap_or_default();
        let is_dead = |a: &SocketAddr| {
            dead.get(a)
                .is_some_and(|at| now - *at < self.config.dead_ttl)
        };
        let mut live: Vec<SocketAddr> = candidates
            .iter()
            .copied()
            .filter(|a| !open.contains(a) && !is_dead(a))
            .collect();
        live.shuffle(&mut rand::rng());
        let failed = candidates.iter().copied().filter(|a| is_dead(a));
        open.iter().copied().chain(live).chain(failed).collect()
    }

    fn open_connection(&self, addr: &SocketAddr) -> Option<Connection> {
        let connections = self.connections.lock().ok()?;
        let connection = connections.get(addr)?;
        connection
            .close_reason()
            .is_none()
            .then(|| connection.clone())
    }

    fn mark_dead(&self, addr: SocketAddr) {
        if let Ok(mut dead) = self.dead.lock() {
            dead.insert(addr, Instant::now());
        }
        if let Ok(mut connections) = self.connections.lock() {
            connections.remove(&addr);
        }
    }

    /// Returns an open connection to the first of `addrs` that has one, or races
    /// handshakes: the next address is dialed when the current ones have had
    /// `connect_stagger` without success, or at once when one fails.
    async fn connect_any(
        &self,
        addrs: &[SocketAddr],
    ) -> Result<(SocketAddr, Connection, Option<Duration>), Vec<(SocketAddr, String)>> {
        if let Some(first) = addrs.first() {
            if let Some(connection) = self.open_connection(first) {
                return Ok((*first, connection, None));
            }
        }
        let mut pending = JoinSet::new();
        let mut next = 0;
        let mut failures = Vec::new();
        loop {
            if next < addrs.len() {
                let addr = addrs[next];
                next += 1;
                let endpoint = self.endpoint.clone();
                let timeout = self.config.connect_timeout;
                pending.spawn(async move {
                    let started = Instant::now();
                    let result = match endpoint.connect(addr, ANY_NODE) {
                        Ok(connecting) => match tokio::time::timeout(timeout, connecting).await {
                            Ok(Ok(connection)) => Ok(connection),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => {
                                Err(format!("no handshake within {} ms", timeout.as_millis()))
                            }
                        },
                        Err(e) => Err(e.to_string()),
                    };
                    (addr, result, started.elapsed())
                });
            }
            let more = next < addrs.len();
            tokio::select! {
                done = pending.join_next() => match done {
                    None => return Err(failures),
                    Some(Ok((addr, Ok(connection), took))) => {
                        debug!(%addr, took_ms = took.as_secs_f64() * 1e3, "connected");
                        if let Ok(mut connections) = self.connections.lock() {
                            connections.insert(addr, connection.clone());
                        }
                        return Ok((addr, connection, Some(took)));
                    }
                    Some(Ok((addr, Err(reason), _))) => {
                        debug!(%addr, %reason, "connect failed");
                        self.mark_dead(addr);
                        failures.push((addr, reason));
                    }
                    Some(Err(e)) => failures.push((SocketAddr::from(([0, 0, 0, 0], 0)), e.to_string())),
                },
                _ = tokio::time::sleep(self.config.connect_stagger), if more => {}
            }
        }
    }

    /// One request on a new stream of `connection`.
    async fn exchange(
        &self,
        connection: &Connection,
        worker: SocketAddr,
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
            return Err(Attempt::Fatal(CallError::Refused { worker, error }));
        }
        if response.id != id {
            return Err(Attempt::Fatal(CallError::Frame(FrameError::Malformed(
                format!("answer id {} does not match request id {id}", response.id),
            ))));
        }
        Ok((response.status, response.body, exchange))
    }
}
