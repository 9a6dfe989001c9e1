//! The worker: serves a service key over QUIC next to its service (a Nano node), and
//! keeps itself findable and reachable in the mesh.
//!
//! Every worker, whatever it serves and wherever it runs, is made by one
//! [`WorkerBuilder`]: one UDP socket ([`NatSocket`]) carries its QUIC endpoint and its
//! NAT traversal, the endpoint proves its node key in every handshake, its
//! [`presence`] decides between announcing itself and registering with brokers, its
//! health ([`health`]) withdraws it while its node does not answer, and its metrics count
//! all of it.
//!
//! ```text
//!   WorkerBuilder::new("nano_rpc").key(..).directory(..).health(..).metrics(..)
//!        .spawn(handler) ──► Worker { node_id, local_addr, .. }
//!
//!   NatSocket ─┬─ QUIC ──► server (one stream per request) ──► handler ──► node
//!              └─ other ─► Mux ─► presence (registrations, introductions, punches, List)
//!   WebServer (own UDP port, browsers) ──► server's stream code ──┘   (optional)
//! ```
//!
//! - [`server`]: the RPC server: accept, one request frame per stream, answer.
//! - [`presence`]: public or brokered; announces, registrations, the record.
//! - [`punching`]: the worker's half of hole punching.
//! - [`health`]: present only while the node answers.
//! - [`keyfile`]: the node key on disk.
//! - `subscriptions`: a subscription session's stream (docs/protocol.md §8), for the
//!   service given to [`WorkerBuilder::subscriptions`].

pub mod health;
pub mod keyfile;
pub mod presence;
pub mod punching;
pub(crate) mod server;
mod subscriptions;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use presence::{BrokerChoice, Mode, PresenceConfig, PresenceEvent};
pub use server::{RpcServer, RpcServerConfig, ServerError};
pub use subscriptions::{DEFAULT_HEARTBEAT, STALL_TIMEOUT};

use crate::discovery::Directory;
use crate::metrics::{Exposition, WorkerMetrics};
use crate::protocol::identity::{NodeId, NodeKey};
use crate::service::Handler;
use crate::subscription::SubscriptionService;
use crate::transport::nat_socket::NatSocket;
use crate::transport::{server_endpoint, TransportError};
use crate::traversal::Mux;
use crate::web::{WebServer, WebServerConfig};
use health::{AnswerCount, Probe};
use punching::ServeExtra;

/// QUIC application error code a side closes with on a normal shutdown.
pub(crate) const CLOSE_NORMAL: u32 = 0;
/// QUIC application error code for STOP_SENDING on a stream whose request was refused
/// before it was read whole (too large).
pub(crate) const STOP_REFUSED: u32 = 1;

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The UDP socket could not be bound, or QUIC could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The metrics endpoint could not be bound.
    #[error("cannot serve metrics on {addr} (--metrics): {source}")]
    Metrics {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The service key cannot be carried in a record (BEP 44 salts are at most 64 bytes).
    #[error("service key {0:?} is longer than 64 bytes")]
    ServiceKey(String),
    /// The WebTransport face could not start.
    #[error(transparent)]
    Web(crate::web::WebError),
}

/// Health probing of the worker's upstream.
struct HealthSpec {
    probe: Probe,
    interval: Duration,
    first_ok: bool,
    answers: Option<AnswerCount>,
}

/// Builds a [`Worker`]: every setting has a default (see each method); `spawn` binds and
/// starts it.
pub struct WorkerBuilder {
    key: Option<NodeKey>,
    bind: SocketAddr,
    server: RpcServerConfig,
    directory: Option<Directory>,
    presence: PresenceConfig,
    health: Option<HealthSpec>,
    metrics: Option<Arc<WorkerMetrics>>,
    metrics_listen: Option<SocketAddr>,
    on_event: Option<Arc<dyn Fn(PresenceEvent) + Send + Sync>>,
    web: Option<WebServerConfig>,
    subscriptions: Option<Arc<dyn SubscriptionService>>,
}

impl WorkerBuilder {
    /// A worker of `service` (its requests must name this key), on `0.0.0.0:0`, with a
    /// fresh node key, no directory (it is found only by address) and brokers looked up
    /// in the directory.
    pub fn new(service: impl Into<String>) -> Self {
        let service = service.into();
        Self {
            key: None,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            server: RpcServerConfig {
                keys: vec![service.clone()],
                ..RpcServerConfig::default()
            },
            directory: None,
            presence: PresenceConfig {
                service,
                ..PresenceConfig::default()
            },
            health: None,
            metrics: None,
            metrics_listen: None,
            on_event: None,
            web: None,
            subscriptions: None,
        }
    }

    /// Also serves browsers over WebTransport with `config` (its own UDP port and
    /// certificates, listed in every record); default off. Requests that come this way
    /// meet the same handler, policy and limits as native ones.
    pub fn web(mut self, config: WebServerConfig) -> Self {
        self.web = Some(config);
        self
    }

    /// The node key (from [`keyfile::load_or_create`]); default a fresh one.
    pub fn key(mut self, key: NodeKey) -> Self {
        self.key = Some(key);
        self
    }

    /// The UDP address of the worker's one socket; default `0.0.0.0:0` (any port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Changes the RPC server's settings (limits, streams, QUIC); the keys served and the
    /// node key are the builder's.
    pub fn server(mut self, change: impl FnOnce(&mut RpcServerConfig)) -> Self {
        change(&mut self.server);
        self
    }

    /// The DHT the worker announces, publishes and finds brokers in.
    pub fn directory(mut self, directory: Directory) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Which brokers to use (default [`BrokerChoice::Discover`]).
    pub fn brokers(mut self, brokers: BrokerChoice) -> Self {
        self.presence.brokers = brokers;
        self
    }

    /// Changes the presence's settings (intervals, broker count, punch schedule).
    pub fn presence(mut self, change: impl FnOnce(&mut PresenceConfig)) -> Self {
        change(&mut self.presence);
        self
    }

    /// Probes the upstream with `probe` every `interval` and withdraws the worker while
    /// it fails ([`health::monitor`]); `first_ok` is the result of a probe at start-up,
    /// `answers` counts the upstream's answers (probes are skipped while it grows).
    pub fn health(
        mut self,
        probe: Probe,
        interval: Duration,
        first_ok: bool,
        answers: Option<AnswerCount>,
    ) -> Self {
        self.health = Some(HealthSpec {
            probe,
            interval,
            first_ok,
            answers,
        });
        self
    }

    /// Counts presence and connections in `metrics`, and serves them at
    /// `http://LISTEN/metrics` when `listen` is given.
    pub fn metrics(mut self, metrics: Arc<WorkerMetrics>, listen: Option<SocketAddr>) -> Self {
        self.metrics = Some(metrics);
        self.metrics_listen = listen;
        self
    }

    /// Serves subscription sessions (docs/protocol.md §8) with `service`, such as
    /// [`crate::nano::confirmations::Confirmations`]; default none (a `subscribe` is
    /// refused with `unknown_service`).
    pub fn subscriptions(mut self, service: Arc<dyn SubscriptionService>) -> Self {
        self.subscriptions = Some(service);
        self
    }

    /// Calls `on_event` with every [`PresenceEvent`] (the CLI prints them as JSON lines).
    pub fn on_event(mut self, on_event: impl Fn(PresenceEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(on_event));
        self
    }

    /// Binds the socket and starts serving `handler`, the presence and the health loop.
    ///
    /// Errors: [`WorkerError::Transport`] when the port is taken,
    /// [`WorkerError::Metrics`], [`WorkerError::ServiceKey`].
    pub async fn spawn<H: Handler>(self, handler: H) -> Result<Worker, WorkerError> {
        let service = self.presence.service.clone();
        if service.len() > crate::protocol::record::MAX_SERVICE_KEY_BYTES {
            return Err(WorkerError::ServiceKey(service));
        }
        let key = self.key.unwrap_or_else(NodeKey::generate);
        let node_id = key.node_id();
        let mut config = self.server;
        config.identity = key.clone();
        let bind = self.bind;
        let (socket, diverted) =
            NatSocket::bind(bind).map_err(|source| TransportError::Bind { addr: bind, source })?;
        let abstract_socket: Arc<dyn quinn::AsyncUdpSocket> = socket.clone();
        let endpoint = server_endpoint(abstract_socket, &config.quic, &key)?;
        let handler = Arc::new(handler);
        let (published, record) = watch::channel(None);
        config.record = Some(record);
        let sessions = self.subscriptions.clone();
        let server =
            RpcServer::serve_with_sessions(endpoint, config.clone(), handler.clone(), sessions);
        let web = match self.web {
            Some(web) => Some(
                WebServer::bind(web, server::WebRpc::new(config.clone(), handler.clone()))
                    .map_err(WorkerError::Web)?,
            ),
            None => None,
        };
        let local_addr = server.local_addr();
        let cancel = CancellationToken::new();

        let metrics_addr = match (&self.metrics, self.metrics_listen) {
            (Some(metrics), Some(listen)) => {
                let endpoint = server.endpoint().clone();
                let gauges = metrics.clone();
                let exposition = Exposition {
                    registry: metrics.registry().clone(),
                    before_scrape: Arc::new(move || {
                        gauges.set_open_connections(endpoint.open_connections())
                    }),
                };
                let stop = cancel.clone();
                let (bound, _task) =
                    crate::metrics::serve(
                        listen,
                        exposition,
                        async move { stop.cancelled().await },
                    )
                    .await
                    .map_err(|source| WorkerError::Metrics {
                        addr: listen,
                        source,
                    })?;
                info!(addr = %bound, "metrics at /metrics");
                Some(bound)
            }
            _ => None,
        };

        // Servers on the birthday method's winning sockets (symmetric NAT in front of us).
        let extra: Arc<Mutex<Vec<RpcServer>>> = Arc::default();
        let serve_extra: ServeExtra = {
            let extra = extra.clone();
            let config = config.clone();
            let handler = handler.clone();
            let key = key.clone();
            let sessions = self.subscriptions.clone();
            Arc::new(move |socket: Arc<NatSocket>, _diverted| {
                let abstract_socket: Arc<dyn quinn::AsyncUdpSocket> = socket;
                match server_endpoint(abstract_socket, &config.quic, &key) {
                    Ok(endpoint) => {
                        let server = RpcServer::serve_with_sessions(
                            endpoint,
                            config.clone(),
                            handler.clone(),
                            sessions.clone(),
                        );
                        if let Ok(mut extra) = extra.lock() {
                            extra.push(server);
                        }
                    }
                    Err(e) => warn!(%e, "cannot serve on the birthday socket"),
                }
            })
        };

        // Without a probe the worker is always healthy; the sender lives as long as the
        // worker, so that the presence never sees the channel close.
        let (always, healthy) = match self.health {
            Some(spec) => (
                None,
                health::monitor(
                    spec.probe,
                    spec.interval,
                    spec.first_ok,
                    spec.answers,
                    cancel.clone(),
                ),
            ),
            None => {
                let (tx, rx) = watch::channel(true);
                (Some(tx), rx)
            }
        };
        let (mux, unsolicited) = Mux::start(socket, diverted);
        let on_event = {
            let metrics = self.metrics.clone();
            let user = self.on_event.clone();
            let brokers = Arc::new(Mutex::new(0usize));
            Arc::new(move |event: PresenceEvent| {
                if let Some(metrics) = &metrics {
                    match &event {
                        PresenceEvent::Mode(mode) => {
                            let n = match mode {
                                Mode::Public => 0,
                                Mode::Brokered(b) => b.len(),
                            };
                            if let Ok(mut count) = brokers.lock() {
                                *count = n;
                            }
                            metrics.set_presence(mode.as_str(), n);
                        }
                        PresenceEvent::Registered { broker, .. } => {
                            metrics.broker_registered(&broker.to_string());
                        }
                        PresenceEvent::Withdrawn => metrics.set_presence("withdrawn", 0),
                    }
                }
                if let Some(user) = &user {
                    user(event);
                }
            })
        };
        info!(
            addr = %local_addr,
            node = %node_id,
            key = %service,
            directory = self.directory.as_ref().map(Directory::describe).unwrap_or_else(|| "none".into()),
            "worker serving"
        );
        let presence = tokio::spawn(presence::run(
            self.presence,
            presence::PresenceParts {
                key,
                mux,
                unsolicited,
                directory: self.directory,
                healthy,
                serve_extra: Some(serve_extra),
                on_event,
                web: web.as_ref().map(WebServer::listing),
                published: Some(published),
            },
            cancel.clone(),
        ));
        Ok(Worker {
            node_id,
            local_addr,
            web,
            metrics_addr,
            server,
            extra,
            presence,
            cancel,
            _always_healthy: always,
        })
    }
}

/// A running worker. Stop it with [`Worker::shutdown`]; dropping it leaves it running
/// until the runtime ends.
#[derive(Debug)]
pub struct Worker {
    node_id: NodeId,
    local_addr: SocketAddr,
    web: Option<WebServer>,
    metrics_addr: Option<SocketAddr>,
    server: RpcServer,
    extra: Arc<Mutex<Vec<RpcServer>>>,
    presence: tokio::task::JoinHandle<()>,
    cancel: CancellationToken,
    _always_healthy: Option<watch::Sender<bool>>,
}

impl Worker {
    /// The node id every handshake proves.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The UDP address of the worker's socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The WebTransport face, if it has one.
    pub fn web(&self) -> Option<&WebServer> {
        self.web.as_ref()
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The QUIC endpoint (statistics).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        self.server.endpoint()
    }

    /// Leaves the mesh (unregisters from brokers), closes every connection with code 0
    /// and waits up to `grace` for peers to learn of it.
    pub async fn shutdown(self, grace: Duration) {
        self.cancel.cancel();
        let _ = self.presence.await;
        let extra: Vec<RpcServer> = self
            .extra
            .lock()
            .map(|mut e| e.drain(..).collect())
            .unwrap_or_default();
        for server in extra {
            server.shutdown(Duration::from_millis(200)).await;
        }
        if let Some(web) = self.web {
            web.shutdown(Duration::from_millis(200)).await;
        }
        self.server.shutdown(grace).await;
    }
}
