//! `nano-connect worker`: serve a key next to a Nano node.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use nano_connect::defaults::{DEFAULT_ANNOUNCE_INTERVAL, DEFAULT_GRAPE_URL, DEFAULT_SERVICE_KEY};
use nano_connect::discovery::link::Link;
use nano_connect::echo::EchoService;
use nano_connect::fibonacci::FibonacciService;
use nano_connect::metrics::{Exposition, WorkerMetrics};
use nano_connect::nano::config::{self as nano_config, NanoService, NanoServiceConfig, WorkerFile};
use nano_connect::nano::NanoRelay;
use nano_connect::service::{Handler, Reply, Request};
use nano_connect::transport::nat_socket::NatSocket;
use nano_connect::transport::server_endpoint;
use nano_connect::traversal::broker_of;
use nano_connect::worker::health::{self, Announce, DEFAULT_HEALTH_INTERVAL};
use nano_connect::worker::presence::{run_worker_agent, ServeExtra, WorkerAgentConfig};
use nano_connect::worker::{RpcServer, RpcServerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Run a worker: accept QUIC connections, announce KEY through the grape, and relay
/// each allowlisted Nano RPC request to the node.
///
/// Only read-only actions reach the node by default (the list is in docs/protocol.md);
/// `--allow` opts in to process (never with force), work_generate and block_confirm.
/// Requests are posted to the node's `/` with no client headers. Prints one JSON line
/// `{"event":"listening",...}` on stdout once it serves. Ctrl-C stops it.
///
/// Settings come from flags, then `--config FILE` (TOML; examples/worker.toml shows every
/// field), then the defaults. The worker announces only while its node answers its
/// health probe (`version`), and answers repeated reads from a cache (TTL per action).
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Service key to announce (its infohash is SHA-1 of the key, see docs/protocol.md).
    #[arg(long, default_value = DEFAULT_SERVICE_KEY, value_name = "KEY")]
    announce: String,
    /// The grape's HTTP API, used to announce.
    #[arg(long, default_value = DEFAULT_GRAPE_URL, value_name = "URL")]
    grape: String,
    /// The Nano node's RPC (only scheme, host and port are used; requests go to `/`)
    /// [default: [node] url, else http://127.0.0.1:7076].
    #[arg(long, value_name = "URL")]
    nano_rpc: Option<String>,
    /// Worker settings file (TOML, see examples/worker.toml); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// UDP port for QUIC (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to bind the QUIC socket to.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// Seconds between re-announces, with ±50 % jitter as Grenache does. Must be at most
    /// half the grapes' announce window (256 s by default).
    #[arg(long, default_value_t = DEFAULT_ANNOUNCE_INTERVAL.as_secs_f64(), value_name = "SECS")]
    announce_interval: f64,
    /// Opt in to an action beyond the read-only allowlist (process, work_generate,
    /// block_confirm); repeat for several.
    #[arg(long = "allow", value_name = "ACTION")]
    allow: Vec<String>,
    /// Milliseconds to wait for the node's answer [default: 10000].
    #[arg(long, value_name = "MS")]
    node_timeout: Option<u64>,
    /// Send work_generate to this work server (and allow it) instead of the node.
    #[arg(long, value_name = "URL")]
    work_server: Option<String>,
    /// Cap on a request's "count" [default: 1000].
    #[arg(long, value_name = "N")]
    max_count: Option<u64>,
    /// Cap on the length of a request's arrays (accounts, hashes) [default: 500].
    #[arg(long, value_name = "N")]
    max_array_len: Option<usize>,
    /// Largest request frame, bytes [default: 65536].
    #[arg(long, value_name = "BYTES")]
    max_request_bytes: Option<usize>,
    /// Largest answer taken from the node, bytes [default: 4194304].
    #[arg(long, value_name = "BYTES")]
    max_answer_bytes: Option<usize>,
    /// Requests per second per client IP; over it a client gets "busy ... retry after N
    /// ms" [default: no limit].
    #[arg(long, value_name = "N")]
    rate: Option<u32>,
    /// Requests a client may make at once [default: twice --rate].
    #[arg(long, value_name = "N")]
    burst: Option<u32>,
    /// Requests in flight per QUIC connection (streams); each allowed stream costs about
    /// 82 bytes per connection, up front [default: 100].
    #[arg(long, value_name = "N")]
    max_streams: Option<u32>,
    /// Answers kept by the response cache; 0 turns it off [default: 10000].
    #[arg(long, value_name = "N")]
    cache_entries: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Seconds between health probes of the node; the worker stops announcing after two
    /// failed probes in a row and starts again after one good one.
    #[arg(long, default_value_t = DEFAULT_HEALTH_INTERVAL.as_secs_f64(), value_name = "SECS")]
    health_interval: f64,
    /// Register KEY with the broker of the grape whose DHT address is HOST:PORT (the
    /// broker listens on PORT + 10000), instead of announcing through --grape: for a worker
    /// behind a NAT. Clients then reach it with `call --broker HOST:PORT`, directly, by
    /// hole punching, or through the broker's relay. Prints one more JSON line
    /// `{"event":"registered","broker":...,"reflexive":...}` once registered.
    #[arg(long, value_name = "HOST:PORT")]
    broker: Option<String>,
    /// What to serve: the Nano RPC relay, the Grenache tutorial's fibonacci service
    /// (for trying the mesh without a node), or echo (for benchmarks: answers the body,
    /// or an answer of the size a sized request asks for, see `nano-connect bench`).
    #[arg(long, value_enum, default_value_t = ServiceKind::NanoRpc)]
    service: ServiceKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServiceKind {
    NanoRpc,
    Fibonacci,
    Echo,
}

/// The handler a worker runs, chosen on the command line.
pub enum WorkerService {
    /// The bare Nano RPC relay (the demo's).
    Nano(NanoRelay),
    /// The Nano RPC relay with its cache, rate limit and metrics (the worker's).
    NanoStack(Box<NanoService>),
    /// The fibonacci service.
    Fibonacci(FibonacciService),
    /// The echo service.
    Echo(EchoService),
}

impl Handler for WorkerService {
    async fn handle(&self, request: Request) -> Reply {
        match self {
            Self::Nano(relay) => relay.handle(request).await,
            Self::NanoStack(service) => service.handle(request).await,
            Self::Fibonacci(service) => service.handle(request).await,
            Self::Echo(service) => service.handle(request).await,
        }
    }
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let interval = Duration::try_from_secs_f64(args.announce_interval)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--announce-interval must be a positive number of seconds")?;
    let health_interval = Duration::try_from_secs_f64(args.health_interval)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--health-interval must be a positive number of seconds")?;
    let file = match &args.config {
        Some(path) => WorkerFile::load(path)?,
        None => WorkerFile::default(),
    };
    let metrics = Arc::new(WorkerMetrics::new());
    let mut first_probe_ok = true;
    let mut relay = None;
    let service = match args.service {
        ServiceKind::NanoRpc => {
            let config = nano_settings(&args, &file)?;
            let node_url = config.relay.node_url.clone();
            let service = nano_config::build(config, metrics.clone())
                .context("--nano-rpc / --work-server")?;
            match service.node().probe().await {
                Ok(version) => info!(
                    node = %node_url,
                    vendor = version.node_vendor.as_deref().unwrap_or("?"),
                    network = version.network.as_deref().unwrap_or("?"),
                    "Nano node answers"
                ),
                Err(e) => {
                    first_probe_ok = false;
                    warn!(
                        node = %node_url,
                        error = %e,
                        "Nano node does not answer yet; requests fail until it does, and the worker is withdrawn from lookups if it stays down"
                    )
                }
            }
            relay = Some(service.node().clone());
            WorkerService::NanoStack(Box::new(service))
        }
        ServiceKind::Fibonacci => WorkerService::Fibonacci(FibonacciService),
        ServiceKind::Echo => WorkerService::Echo(EchoService),
    };
    let mut config = RpcServerConfig {
        keys: vec![args.announce.clone()],
        ..RpcServerConfig::default()
    };
    if let Some(bytes) = args.max_request_bytes.or(file.limits.max_request_bytes) {
        config.max_request_bytes = bytes;
    }
    if let Some(streams) = args.max_streams.or(file.limits.max_concurrent_streams) {
        anyhow::ensure!(streams > 0, "--max-streams must be at least 1");
        config.quic.max_concurrent_streams = streams;
    }
    if let Some(broker) = &args.broker {
        return run_brokered(&args, broker, config, service).await;
    }
    let server = RpcServer::bind(SocketAddr::new(args.bind, args.port), config, service)
        .await
        .context("cannot start the worker")?;
    let addr = server.local_addr();
    info!(%addr, key = %args.announce, grape = %args.grape, "worker serving");
    let cancel = CancellationToken::new();
    let metrics_addr = match args.metrics.or(file.metrics.listen) {
        Some(listen) => {
            let endpoint = server.endpoint().clone();
            let gauges = metrics.clone();
            let exposition = Exposition {
                registry: metrics.registry().clone(),
                before_scrape: Arc::new(move || {
                    gauges.set_open_connections(endpoint.open_connections())
                }),
            };
            Some(super::serve_metrics(listen, exposition, cancel.clone()).await?)
        }
        None => None,
    };
    super::emit(serde_json::json!({
        "event": "listening",
        "addr": addr.to_string(),
        "port": addr.port(),
        "key": args.announce,
        "metrics": metrics_addr,
    }));

    let link = Link::new(&args.grape);
    let announce = Announce {
        link: link.clone(),
        key: args.announce.clone(),
        port: addr.port(),
        interval,
    };
    let announcer = match relay {
        Some(relay) => tokio::spawn(health::run(
            relay,
            announce,
            health_interval,
            first_probe_ok,
            {
                let metrics = metrics.clone();
                move || metrics.node_answers()
            },
            cancel.clone(),
        )),
        None => link.spawn_announcer(
            args.announce.clone(),
            addr.port(),
            interval,
            cancel.clone(),
            |_| {},
        ),
    };

    super::shutdown_signal().await;
    info!("shutting down");
    cancel.cancel();
    let _ = announcer.await;
    server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}

/// The Nano service settings: flags over the file over the defaults.
fn nano_settings(args: &WorkerArgs, file: &WorkerFile) -> anyhow::Result<NanoServiceConfig> {
    let mut config = NanoServiceConfig::from_file(file)?;
    let relay = &mut config.relay;
    if let Some(url) = &args.nano_rpc {
        relay.node_url = url.clone();
    }
    if let Some(ms) = args.node_timeout {
        relay.timeout = Duration::from_millis(ms);
    }
    if let Some(bytes) = args.max_answer_bytes {
        relay.max_answer_bytes = bytes;
    }
    for action in &args.allow {
        relay
            .policy
            .allow(action)
            .with_context(|| format!("--allow {action}"))?;
    }
    if let Some(count) = args.max_count {
        relay.policy.set_max_count(count);
    }
    if let Some(len) = args.max_array_len {
        relay.policy.set_max_array_len(len);
    }
    if args.work_server.is_some() {
        config.work_server = args.work_server.clone();
    }
    if args.rate.is_some() || args.burst.is_some() {
        let rate = args.rate.or(file.limits.rate_per_second);
        let burst = args.burst.or(file.limits.burst);
        anyhow::ensure!(
            rate.is_some(),
            "--burst needs --rate (or rate_per_second in the file)"
        );
        config.rate_limit = nano_config::rate_limit(rate, burst)?;
    }
    if let Some(entries) = args.cache_entries {
        config.cache_entries = entries;
    }
    Ok(config)
}

/// A worker registered with a broker: QUIC and the broker protocol share one socket, so
/// the broker sees the mapping that QUIC uses.
async fn run_brokered(
    args: &WorkerArgs,
    broker: &str,
    config: RpcServerConfig,
    service: WorkerService,
) -> anyhow::Result<()> {
    let broker = broker_of(broker).context("--broker")?;
    let bind = SocketAddr::new(args.bind, args.port);
    let (socket, diverted) =
        NatSocket::bind(bind).with_context(|| format!("cannot bind UDP {bind}"))?;
    let abstract_socket: Arc<dyn quinn::AsyncUdpSocket> = socket.clone();
    let endpoint = server_endpoint(abstract_socket, &config.quic, &config.identity)
        .context("cannot start the worker")?;
    let service = Arc::new(service);
    let server = RpcServer::serve(endpoint, config.clone(), service.clone());
    let addr = server.local_addr();
    info!(%addr, key = %args.announce, %broker, "worker serving through a broker");
    // Servers on the birthday method's winning sockets (symmetric NAT in front of us).
    let extra: Arc<std::sync::Mutex<Vec<RpcServer>>> = Arc::default();
    let serve_extra: ServeExtra = {
        let extra = extra.clone();
        Arc::new(move |socket: Arc<NatSocket>, _diverted| {
            let abstract_socket: Arc<dyn quinn::AsyncUdpSocket> = socket;
            match server_endpoint(abstract_socket, &config.quic, &config.identity) {
                Ok(endpoint) => {
                    let server = RpcServer::serve(endpoint, config.clone(), service.clone());
                    if let Ok(mut extra) = extra.lock() {
                        extra.push(server);
                    }
                }
                Err(e) => warn!(%e, "cannot serve on the birthday socket"),
            }
        })
    };
    super::emit(serde_json::json!({
        "event": "listening",
        "addr": addr.to_string(),
        "port": addr.port(),
        "key": args.announce,
    }));
    let cancel = CancellationToken::new();
    let agent = tokio::spawn(run_worker_agent(
        socket,
        diverted,
        WorkerAgentConfig::new(broker, args.announce.clone()),
        cancel.clone(),
        |broker, reflexive| {
            super::emit(serde_json::json!({
                "event": "registered",
                "broker": broker.to_string(),
                "reflexive": reflexive.to_string(),
            }))
        },
        Some(serve_extra),
    ));
    super::shutdown_signal().await;
    info!("shutting down");
    cancel.cancel();
    let _ = agent.await;
    let extra: Vec<RpcServer> = extra
        .lock()
        .map(|mut e| e.drain(..).collect())
        .unwrap_or_default();
    for server in extra {
        server.shutdown(Duration::from_millis(200)).await;
    }
    server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
