//! Prometheus metrics of a worker (and, through [`serve`], of any process): what the
//! relay was asked, what it refused and why, how often the cache answered, how long the
//! node took, and how many QUIC connections are open.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `nano_connect_requests_total` | counter | `outcome` = `answered`, `refused` |
//! | `nano_connect_refusals_total` | counter | `code` = the wire error code (`busy`, `action_not_allowed`, ...) |
//! | `nano_connect_cache_hits_total` | counter | `action` |
//! | `nano_connect_node_latency_seconds` | histogram | (requests the node answered, cache hits excluded) |
//! | `nano_connect_open_connections` | gauge | (QUIC connections of the worker, read at scrape time) |
//! | `nano_connect_presence` | gauge | `mode` = `public`, `brokered`, `withdrawn`: 1 for the worker's current one |
//! | `nano_connect_brokers_registered` | gauge | (brokers holding the worker's registration) |
//! | `nano_connect_broker_registrations_total` | counter | `broker` (each time a broker took the registration anew) |
//!
//! A grape's metrics ([`GrapeMetrics`], told of every DHT announce and lookup through
//! [`grape::DhtObserver`]):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `grape_announces_total` | counter | `outcome` = `stored`, `failed` |
//! | `grape_lookups_total` | counter | `found` = `some`, `none` |
//! | `grape_announce_latency_seconds` | histogram | |
//! | `grape_lookup_latency_seconds` | histogram | |
//!
//! Other parts of a process (a broker next to a grape) register their own collectors in
//! the same [`Registry`] ([`GrapeMetrics::registry`]) to appear on the same endpoint.
//!
//! The text format is Prometheus' exposition format, served at `GET /metrics` by
//! [`serve`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::service::{Handler, Reply, Request};

/// Node latency histogram buckets, in seconds: 0.5 ms to 10 s (the default node
/// timeout), since ledger reads take milliseconds and a stuck node takes the timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A worker's metrics, registered in their own [`Registry`].
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    requests: IntCounterVec,
    refusals: IntCounterVec,
    cache_hits: IntCounterVec,
    node_latency: Histogram,
    open_connections: IntGauge,
    presence: IntGaugeVec,
    brokers_registered: IntGauge,
    broker_registrations: IntCounterVec,
}

impl WorkerMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "nano_connect_requests_total",
                "Requests handled, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let refusals = IntCounterVec::new(
            Opts::new(
                "nano_connect_refusals_total",
                "Requests refused or failed, by wire error code",
            ),
            &["code"],
        )
        .expect("valid metric");
        let cache_hits = IntCounterVec::new(
            Opts::new(
                "nano_connect_cache_hits_total",
                "Requests answered from the response cache, by action",
            ),
            &["action"],
        )
        .expect("valid metric");
        let node_latency = Histogram::with_opts(
            HistogramOpts::new(
                "nano_connect_node_latency_seconds",
                "Time the Nano node took to answer a relayed request",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let open_connections = IntGauge::new(
            "nano_connect_open_connections",
            "QUIC connections open on the worker",
        )
        .expect("valid metric");
        let presence = IntGaugeVec::new(
            Opts::new(
                "nano_connect_presence",
                "How the worker is reached: 1 for the current mode",
            ),
            &["mode"],
        )
        .expect("valid metric");
        let brokers_registered = IntGauge::new(
            "nano_connect_brokers_registered",
            "Brokers holding this worker's registration",
        )
        .expect("valid metric");
        let broker_registrations = IntCounterVec::new(
            Opts::new(
                "nano_connect_broker_registrations_total",
                "Times a broker took this worker's registration anew, by broker",
            ),
            &["broker"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refusals.clone()),
            Box::new(cache_hits.clone()),
            Box::new(node_latency.clone()),
            Box::new(open_connections.clone()),
            Box::new(presence.clone()),
            Box::new(brokers_registered.clone()),
            Box::new(broker_registrations.clone()),
        ] {
            registry.register(metric).expect("unique metric names");
        }
        Self {
            registry,
            requests,
            refusals,
            cache_hits,
            node_latency,
            open_connections,
            presence,
            brokers_registered,
            broker_registrations,
        }
    }

    /// Records how the worker is reached now: `mode` is `public`, `brokered` or
    /// `withdrawn`, with `brokers` registrations.
    pub fn set_presence(&self, mode: &str, brokers: usize) {
        for m in ["public", "brokered", "withdrawn"] {
            self.presence
                .with_label_values(&[m])
                .set(i64::from(m == mode));
        }
        self.brokers_registered
            .set(i64::try_from(brokers).unwrap_or(i64::MAX));
    }

    /// Counts a broker taking the registration.
    pub fn broker_registered(&self, broker: &str) {
        self.broker_registrations.with_label_values(&[broker]).inc();
    }

    /// The registry, for [`serve`].
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts a request answered from the cache.
    pub fn cache_hit(&self, action: &str) {
        self.cache_hits.with_label_values(&[action]).inc();
    }

    /// Records how long the node took.
    pub fn node_latency(&self, took: Duration) {
        self.node_latency.observe(took.as_secs_f64());
    }

    /// How many relayed requests the node has answered so far.
    pub fn node_answers(&self) -> u64 {
        self.node_latency.get_sample_count()
    }

    /// Sets the open connections gauge.
    pub fn set_open_connections(&self, n: usize) {
        self.open_connections
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one reply.
    pub fn count(&self, reply: &Reply) {
        match reply {
            Reply::Answer { .. } => self.requests.with_label_values(&["answered"]).inc(),
            Reply::Failure(error) => {
                self.requests.with_label_values(&["refused"]).inc();
                self.refusals
                    .with_label_values(&[error.code.as_str()])
                    .inc();
            }
        }
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A gateway's metrics: requests by outcome and their latency through the mesh.
///
/// | metric | type | labels |
/// |---|---|---|
/// | `nano_connect_gateway_requests_total` | counter | `outcome` = `answered`, or the failure code (`no_worker`, `timeout`, `action_not_allowed`, `disagreement`, ...) |
/// | `nano_connect_gateway_latency_seconds` | histogram | (every carried request) |
/// | `nano_connect_gateway_failovers_total` | counter | (requests answered by another worker after the first failed them) |
/// | `nano_connect_gateway_failover_workers_total` | counter | (workers given up on, over those requests) |
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: Histogram,
    failovers: IntCounter,
    failover_workers: IntCounter,
}

impl GatewayMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "nano_connect_gateway_requests_total",
                "Requests carried by the gateway, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "nano_connect_gateway_latency_seconds",
                "Time from a request's body to its answer, through the mesh",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique metric names");
        registry
            .register(Box::new(latency.clone()))
            .expect("unique metric names");
        let failovers = IntCounter::new(
            "nano_connect_gateway_failovers_total",
            "Requests answered by a worker after at least one other worker failed them",
        )
        .expect("valid metric");
        let failover_workers = IntCounter::new(
            "nano_connect_gateway_failover_workers_total",
            "Workers given up on (unreachable, died or too slow) by requests that were \
             then answered by another",
        )
        .expect("valid metric");
        registry
            .register(Box::new(failovers.clone()))
            .expect("unique metric names");
        registry
            .register(Box::new(failover_workers.clone()))
            .expect("unique metric names");
        Self {
            registry,
            requests,
            latency,
            failovers,
            failover_workers,
        }
    }

    /// The registry, for [`serve`].
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one carried request with its `outcome` and how long it took.
    pub fn carried(&self, outcome: &str, took: Duration) {
        self.requests.with_label_values(&[outcome]).inc();
        self.latency.observe(took.as_secs_f64());
    }

    /// Counts one request that was answered after `workers` other workers failed it
    /// (nothing when `workers` is 0).
    pub fn failed_over(&self, workers: usize) {
        if workers > 0 {
            self.failovers.inc();
            self.failover_workers
                .inc_by(u64::try_from(workers).unwrap_or(u64::MAX));
        }
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// DHT latency buckets, in seconds: loopback answers in a millisecond, a lookup on the
/// public network takes up to its 2 s deadline, an announce up to its put timeout.
const DHT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// A grape's DHT metrics, registered in their own [`Registry`].
#[derive(Debug, Clone)]
pub struct GrapeMetrics {
    registry: Registry,
    announces: IntCounterVec,
    lookups: IntCounterVec,
    announce_latency: Histogram,
    lookup_latency: Histogram,
}

impl GrapeMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        let registry = Registry::new();
        let announces = IntCounterVec::new(
            Opts::new("grape_announces_total", "DHT announces made, by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let lookups = IntCounterVec::new(
            Opts::new(
                "grape_lookups_total",
                "DHT lookups made, by whether they found peers",
            ),
            &["found"],
        )
        .expect("valid metric");
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(DHT_BUCKETS.to_vec()))
                .expect("valid metric")
        };
        let announce_latency =
            histogram("grape_announce_latency_seconds", "Time a DHT announce took");
        let lookup_latency = histogram("grape_lookup_latency_seconds", "Time a DHT lookup took");
        for metric in [
            Box::new(announces.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(lookups.clone()),
            Box::new(announce_latency.clone()),
            Box::new(lookup_latency.clone()),
        ] {
            registry.register(metric).expect("unique metric names");
        }
        Self {
            registry,
            announces,
            lookups,
            announce_latency,
            lookup_latency,
        }
    }

    /// The registry, for [`serve`] and for other collectors of the same process.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for GrapeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl grape::DhtObserver for GrapeMetrics {
    fn announced(&self, ok: bool, took: Duration) {
        let outcome = if ok { "stored" } else { "failed" };
        self.announces.with_label_values(&[outcome]).inc();
        self.announce_latency.observe(took.as_secs_f64());
    }

    fn looked_up(&self, found: usize, took: Duration) {
        let found = if found > 0 { "some" } else { "none" };
        self.lookups.with_label_values(&[found]).inc();
        self.lookup_latency.observe(took.as_secs_f64());
    }
}

/// A [`Handler`] that counts every reply of the inner handler in [`WorkerMetrics`].
#[derive(Debug)]
pub struct Metered<H> {
    inner: H,
    metrics: Arc<WorkerMetrics>,
}

impl<H> Metered<H> {
    /// Wraps `inner`, counting into `metrics`.
    pub fn new(inner: H, metrics: Arc<WorkerMetrics>) -> Self {
        Self { inner, metrics }
    }

    /// The inner handler.
    pub fn inner(&self) -> &H {
        &self.inner
    }
}

impl<H: Handler> Handler for Metered<H> {
    async fn handle(&self, request: Request) -> Reply {
        let reply = self.inner.handle(request).await;
        self.metrics.count(&reply);
        reply
    }
}

/// What `/metrics` shows: a registry, and a hook run before each scrape (to set gauges
/// that are read rather than counted, such as open connections).
#[derive(Clone)]
pub struct Exposition {
    /// The registry encoded.
    pub registry: Registry,
    /// Run before encoding.
    pub before_scrape: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition").finish_non_exhaustive()
    }
}

async fn scrape(State(exposition): State<Exposition>) -> impl IntoResponse {
    (exposition.before_scrape)();
    let mut text = Vec::new();
    let families = exposition.registry.gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut text) {
        tracing::warn!(error = %e, "could not encode metrics");
    }
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text)
}

/// Serves `GET /metrics` on `addr` until `shutdown`; returns the bound address once
/// listening, and the server task.
pub async fn serve(
    addr: SocketAddr,
    exposition: Exposition,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(exposition);
    let task = tokio::spawn(async move {
        let limits = grape::http::serve::HttpLimits::default();
        if let Err(e) = grape::http::serve::serve(listener, app, limits, shutdown).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .expect("text exposition");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn gateway_failovers_count_requests_and_the_workers_given_up() {
        let metrics = GatewayMetrics::new();
        metrics.failed_over(0);
        metrics.failed_over(2);
        metrics.failed_over(1);
        let text = text(metrics.registry());
        assert!(
            text.contains("nano_connect_gateway_failovers_total 2"),
            "{text}"
        );
        assert!(
            text.contains("nano_connect_gateway_failover_workers_total 3"),
            "{text}"
        );
    }
}
