//! A load generator for a live mesh (`nano-connect bench`), in the manner of
//! redis-benchmark: N requests in flight against a service key (looked up through a
//! grape), one worker address, or, for comparison, a plain HTTP endpoint such as the
//! Nano node itself.
//!
//! Every run is bounded twice, by a request count and by a duration, whichever comes
//! first. Latencies go into an HDR histogram (microseconds, 3 significant digits) per
//! task and are merged at the end, so recording costs no lock.
//!
//! [`open_idle`] opens many idle QUIC connections to a worker, to measure what a
//! connection costs the worker in memory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quinn::{Connection, Endpoint};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::route::{CallError, Discovery, RpcClient, RpcClientConfig};
use crate::transport::tls::ANY_NODE;
use crate::transport::{bind_udp, client_endpoint, QuicConfig, TransportError};

/// Highest latency the histograms record, µs (60 s); longer ones are clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What the load is sent to.
#[derive(Debug, Clone)]
pub enum Target {
    /// Workers of `key`, found with `discovery` (the full client route of `call` and the
    /// gateway: lookup, brokers, connection reuse, failover).
    Key {
        /// How workers are found (a grape, an own DHT node, brokers).
        discovery: Discovery,
        /// The service key.
        key: String,
    },
    /// One worker at `addr`, asked for `key`, without lookup.
    Worker {
        /// The worker's QUIC address.
        addr: SocketAddr,
        /// The service key put in each request frame.
        key: String,
    },
    /// An HTTP endpoint that takes the body as a POST (HTTP/1.1, kept alive), such as a
    /// Nano node's RPC: the baseline the mesh's relay path is compared with.
    Http {
        /// The URL posted to.
        url: String,
    },
}

/// How much load, and what each request carries.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Requests in flight at once (at least 1).
    pub concurrency: usize,
    /// QUIC connections (each its own client and UDP socket) the in-flight requests are
    /// spread over, round robin (at least 1). Ignored for HTTP, where every request in
    /// flight needs a connection of its own.
    pub connections: usize,
    /// Most requests sent (warm-up not counted).
    pub requests: u64,
    /// Longest the measured part runs.
    pub duration: Duration,
    /// Requests sent per connection before measuring (handshake, lookup), not counted.
    pub warmup: u64,
    /// The request body.
    pub body: Vec<u8>,
    /// Deadline of one request.
    pub timeout: Duration,
    /// Requests per second to start, in all (`None`: as fast as `concurrency` in flight
    /// allow). Requests start on a fixed schedule from the start of the measured part,
    /// with at most `concurrency` in flight: a slow answer delays only its own task, and
    /// a run that falls behind catches up at once. Latency is measured from when a
    /// request was sent, not from when the schedule wanted it.
    pub rate: Option<f64>,
}

/// The fixed start schedule of [`LoadConfig::rate`]: the n-th request starts n / rate
/// seconds after the measured part began.
struct Pace {
    started: Instant,
    rate: f64,
    issued: AtomicU64,
}

impl Pace {
    /// When the next request should start.
    fn next(&self) -> Instant {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        self.started + Duration::from_secs_f64(n as f64 / self.rate)
    }
}

/// Latency percentiles of a run, in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    /// Mean, µs.
    pub mean_us: f64,
    /// Median, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Slowest, µs.
    pub max_us: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Requests answered by the service.
    pub ok: u64,
    /// Requests that failed (refused, timed out, unreachable, bad answer).
    pub errors: u64,
    /// Failures by kind, for example `timeout` or `refused:busy`.
    pub error_kinds: BTreeMap<String, u64>,
    /// Measured wall time, seconds.
    pub elapsed_s: f64,
    /// Answered requests per second.
    pub requests_per_s: f64,
    /// Answer bytes received, summed.
    pub answer_bytes: u64,
    /// Latency of answered requests.
    pub latency: Latency,
    /// Requests in flight.
    pub concurrency: usize,
    /// Connections used.
    pub connections: usize,
    /// Request body bytes.
    pub request_bytes: usize,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A client could not be made.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The warm-up request failed, so the target is not serving.
    #[error("warm-up request failed: {0}")]
    Warmup(String),
    /// The HTTP client could not be made.
    #[error("HTTP client: {0}")]
    Http(String),
    /// A QUIC endpoint could not be made.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An idle connection could not be opened.
    #[error("connection {index} of {wanted}: {reason}")]
    Connect {
        /// 0-based index of the connection that failed.
        index: usize,
        /// Connections asked for.
        wanted: usize,
        /// Why.
        reason: String,
    },
}

/// One way of sending a request.
enum Sender {
    /// `addr: None` looks `key` up through the client's grape.
    Rpc {
        client: Arc<RpcClient>,
        key: String,
        addr: Option<SocketAddr>,
    },
    Http {
        client: reqwest::Client,
        url: String,
    },
}

impl Sender {
    /// Sends one request; `Ok(answer bytes)` or `Err(kind of failure)`.
    async fn send(&self, body: &[u8]) -> Result<usize, String> {
        match self {
            Self::Rpc { client, key, addr } => {
                let result = match addr {
                    None => client.request(key, body).await,
                    Some(addr) => client.request_addr(*addr, key, body).await,
                };
                result.map(|a| a.body.len()).map_err(|e| error_kind(&e))
            }
            Self::Http { client, url } => {
                let response = client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_vec())
                    .send()
                    .await
                    .map_err(|e| {
                        if e.is_timeout() {
                            "timeout".to_string()
                        } else {
                            "http".to_string()
                        }
                    })?;
                if !response.status().is_success() {
                    return Err(format!("http_status:{}", response.status().as_u16()));
                }
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|_| "http_body".to_string())?;
                Ok(bytes.len())
            }
        }
    }
}

/// A short, stable name for a failure, used to count failures by kind: the one code of
/// [`crate::route::error`], with `refused:` before a worker's refusal.
fn error_kind(e: &CallError) -> String {
    match e {
        CallError::Refused { error, .. } => format!("refused:{}", error.code),
        other => other.code().to_string(),
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits: a few tens of KiB per task.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Runs the load against `target` and reports.
///
/// Makes the clients, sends `warmup` requests on each (a failure there is
/// [`BenchError::Warmup`]: nothing is measured against a target that does not serve),
/// then keeps `concurrency` requests in flight until `requests` were sent or `duration`
/// passed. Failed requests are counted, never retried.
pub async fn run_load(target: Target, config: LoadConfig) -> Result<LoadReport, BenchError> {
    let concurrency = config.concurrency.max(1);
    let connections = match target {
        Target::Http { .. } => concurrency,
        _ => config.connections.clamp(1, concurrency),
    };
    let senders = make_senders(&target, &config, connections)?;
    for sender in &senders {
        for _ in 0..config.warmup.max(1) {
            sender
                .send(&config.body)
                .await
                .map_err(BenchError::Warmup)?;
        }
    }

    let body: Arc<[u8]> = config.body.clone().into();
    let remaining = Arc::new(AtomicU64::new(config.requests));
    let started = Instant::now();
    let deadline = started + config.duration;
    let pace = config
        .rate
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(|rate| {
            Arc::new(Pace {
                started,
                rate,
                issued: AtomicU64::new(0),
            })
        });
    let mut tasks = JoinSet::new();
    for i in 0..concurrency {
        let sender = senders[i % senders.len()].clone();
        let body = body.clone();
        let remaining = remaining.clone();
        let pace = pace.clone();
        tasks.spawn(async move {
            let mut latencies = histogram();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut answer_bytes = 0u64;
            loop {
                // Take a ticket; stop when none are left or time is up.
                if remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                if let Some(pace) = &pace {
                    let at = pace.next();
                    if at >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                }
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                match sender.send(&body).await {
                    Ok(n) => {
                        let us = (sent.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
                        let _ = latencies.record(us);
                        answer_bytes += n as u64;
                    }
                    Err(kind) => *errors.entry(kind).or_default() += 1,
                }
            }
            (latencies, errors, answer_bytes)
        });
    }
    let mut latencies = histogram();
    let mut error_kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut answer_bytes = 0;
    while let Some(done) = tasks.join_next().await {
        let Ok((h, e, bytes)) = done else {
            *error_kinds.entry("task_panicked".into()).or_default() += 1;
            continue;
        };
        let _ = latencies.add(&h);
        for (kind, n) in e {
            *error_kinds.entry(kind).or_default() += n;
        }
        answer_bytes += bytes;
    }
    let elapsed = started.elapsed();
    for sender in &senders {
        if let Sender::Rpc { client, .. } = &**sender {
            client.close(Duration::from_millis(100)).await;
        }
    }
    let ok = latencies.len();
    let errors = error_kinds.values().sum();
    Ok(LoadReport {
        ok,
        errors,
        error_kinds,
        elapsed_s: elapsed.as_secs_f64(),
        requests_per_s: ok as f64 / elapsed.as_secs_f64().max(1e-9),
        answer_bytes,
        latency: Latency {
            mean_us: if ok == 0 { 0.0 } else { latencies.mean() },
            p50_us: latencies.value_at_quantile(0.5),
            p90_us: latencies.value_at_quantile(0.9),
            p99_us: latencies.value_at_quantile(0.99),
            p999_us: latencies.value_at_quantile(0.999),
            max_us: latencies.max(),
        },
        concurrency,
        connections,
        request_bytes: config.body.len(),
    })
}

fn make_senders(
    target: &Target,
    config: &LoadConfig,
    connections: usize,
) -> Result<Vec<Arc<Sender>>, BenchError> {
    let rpc_config = RpcClientConfig {
        request_timeout: config.timeout,
        attempt_timeout: config.timeout,
        ..RpcClientConfig::default()
    };
    match target {
        Target::Http { url } => {
            let client = reqwest::Client::builder()
                .timeout(config.timeout)
                .pool_max_idle_per_host(connections)
                .build()
                .map_err(|e| BenchError::Http(e.to_string()))?;
            Ok(vec![Arc::new(Sender::Http {
                client,
                url: url.clone(),
            })])
        }
        Target::Key { discovery, key } => (0..connections)
            .map(|_| {
                let client = RpcClient::new(discovery.clone(), rpc_config.clone())?;
                Ok(Arc::new(Sender::Rpc {
                    client: Arc::new(client),
                    key: key.clone(),
                    addr: None,
                }))
            })
            .collect(),
        Target::Worker { addr, key } => (0..connections)
            .map(|_| {
                let client = RpcClient::new(Discovery::None, rpc_config.clone())?;
                Ok(Arc::new(Sender::Rpc {
                    client: Arc::new(client),
                    key: key.clone(),
                    addr: Some(*addr),
                }))
            })
            .collect(),
    }
}

/// Idle QUIC connections held open to one worker; dropping them closes them.
#[derive(Debug)]
pub struct IdleConnections {
    endpoints: Vec<Endpoint>,
    connections: Vec<Connection>,
}

impl IdleConnections {
    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.connections
            .iter()
            .filter(|c| c.close_reason().is_none())
            .count()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every connection (code 0) and waits up to `grace` for the peer to learn it.
    pub async fn close(self, grace: Duration) {
        for endpoint in &self.endpoints {
            endpoint.close(0u32.into(), b"done");
        }
        for endpoint in &self.endpoints {
            let _ = tokio::time::timeout(grace, endpoint.wait_idle()).await;
        }
    }
}

/// Opens `count` QUIC connections to the worker at `addr` and sends nothing on them.
///
/// Connections are spread over UDP sockets of at most 256 connections each (one socket
/// per connection would run into the open-file limit), made `parallel` handshakes at a
/// time. Each connection keeps itself alive with the default QUIC keep-alive (15 s).
/// Errors: the first handshake that fails.
pub async fn open_idle(
    addr: SocketAddr,
    count: usize,
    parallel: usize,
    connect_timeout: Duration,
) -> Result<IdleConnections, BenchError> {
    const PER_SOCKET: usize = 256;
    let quic = QuicConfig::default();
    let mut endpoints = Vec::new();
    for _ in 0..count.div_ceil(PER_SOCKET) {
        let local = SocketAddr::from(([0, 0, 0, 0], 0));
        let socket = bind_udp(local).map_err(|source| TransportError::Bind {
            addr: local,
            source,
        })?;
        endpoints.push(client_endpoint(socket, &quic)?);
    }
    let mut connections = Vec::with_capacity(count);
    let mut pending = JoinSet::new();
    let mut next = 0;
    while connections.len() < count {
        while next < count && pending.len() < parallel.max(1) {
            let endpoint = endpoints[next / PER_SOCKET].clone();
            let index = next;
            pending.spawn(async move {
                let connecting = endpoint
                    .connect(addr, ANY_NODE)
                    .map_err(|e| (index, e.to_string()))?;
                match tokio::time::timeout(connect_timeout, connecting).await {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err((index, e.to_string())),
                    Err(_) => Err((index, "no handshake in time".to_string())),
                }
            });
            next += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok(connection))) => connections.push(connection),
            Some(Ok(Err((index, reason)))) => {
                return Err(BenchError::Connect {
                    index,
                    wanted: count,
                    reason,
                })
            }
            Some(Err(e)) => {
                return Err(BenchError::Connect {
                    index: connections.len(),
                    wanted: count,
                    reason: e.to_string(),
                })
            }
            None => break,
        }
    }
    Ok(IdleConnections {
        endpoints,
        connections,
    })
}
