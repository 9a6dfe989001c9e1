//! `nano-connect worker`: serve a key next to a Nano node.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use futures::FutureExt;
use nano_connect::defaults::{DEFAULT_ANNOUNCE_INTERVAL, DEFAULT_SERVICE_KEY};
use nano_connect::discovery::link::Link;
use nano_connect::discovery::Directory;
use nano_connect::echo::EchoService;
use nano_connect::fibonacci::FibonacciService;
use nano_connect::metrics::WorkerMetrics;
use nano_connect::nano::config::{self as nano_config, NanoService, NanoServiceConfig, WorkerFile};
use nano_connect::nano::confirmations::{
    self, Confirmations, ConfirmationsConfig, ConfirmationsMetrics,
};
use nano_connect::nano::NanoRelay;
use nano_connect::service::{Handler, Reply, Request};
use nano_connect::traversal::broker_of;
use nano_connect::web::WebServerConfig;
use nano_connect::worker::health::{self, DEFAULT_HEALTH_INTERVAL};
use nano_connect::worker::{keyfile, BrokerChoice, Mode, PresenceEvent, WorkerBuilder};
use tracing::{info, warn};

/// Run a worker: serve KEY next to a Nano node, and keep it findable in the mesh.
///
///   nano-connect worker --announce nano_rpc              (joins the public mainline DHT)
///   nano-connect worker --grape http://127.0.0.1:30001   (through a grape of yours)
///
/// The worker checks its NAT against brokers it finds in the DHT (or --broker): with no
/// NAT in front of it, it announces its QUIC port under KEY; behind a NAT (a home router),
/// it registers with up to two brokers, which introduce callers (hole punching) or relay
/// for them. Either way it publishes a record signed with its node key (BEP 44), and its
/// node id (from --key, made on first start) names it everywhere.
///
/// Only read-only actions reach the node by default (the list is in docs/protocol.md);
/// `--allow` opts in to process (never with force), work_generate and block_confirm.
/// Requests are posted to the node's `/` with no client headers. Prints one JSON line
/// `{"event":"listening",...,"node_id":...}` on stdout once it serves, then
/// `{"event":"presence","mode":"public"|"brokered",...}` and, per broker,
/// `{"event":"registered","broker":...,"reflexive":...}`. Ctrl-C stops it (it leaves its
/// brokers first).
///
/// With --nano-ws URL (the node's websocket, port 7078 on the live network) the worker
/// also serves confirmations: it keeps one subscription to the node's `confirmation`
/// topic and sends each subscriber (`nano-connect gateway --ws-listen`, `nano-connect
/// watch`) the confirmations of the accounts it follows, within --ws-max-accounts,
/// --ws-max-subscribers and --ws-max-rate; all-accounts subscriptions only with
/// --ws-allow-all-accounts.
///
/// Settings come from flags, then `--config FILE` (TOML; examples/worker.toml shows every
/// field), then the defaults. The worker is in the mesh only while its node answers its
/// health probe (`version`), and answers repeated reads from a cache (TTL per action).
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct WorkerArgs {
    /// Service key to announce (its infohash is SHA-1 of the key, see docs/protocol.md).
    #[arg(long, default_value = DEFAULT_SERVICE_KEY, value_name = "KEY")]
    announce: String,
    /// A grape's HTTP API to announce and publish through (a grape on this host). Without
    /// it the worker runs a DHT node of its own (see --bootstrap).
    #[arg(long, value_name = "URL")]
    grape: Option<String>,
    /// DHT nodes the worker's own DHT node bootstraps from, HOST:PORT[,HOST:PORT...]
    /// [default: the public mainline routers, router.bittorrent.com:6881 and others].
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "HOST:PORT",
        conflicts_with = "grape"
    )]
    bootstrap: Option<Vec<String>>,
    /// Use the broker of the grape whose DHT address is HOST:PORT (it listens on PORT +
    /// 10000) instead of brokers found in the DHT; repeat or separate with commas.
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT")]
    broker: Vec<String>,
    /// Announce as a public worker without checking for a NAT (a host you know is
    /// reachable on --port).
    #[arg(long, conflicts_with_all = ["broker", "via_broker"])]
    public: bool,
    /// Register with brokers even when no NAT is seen: for a host whose firewall drops
    /// unsolicited inbound UDP, which no NAT check can see.
    #[arg(long)]
    via_broker: bool,
    /// The node key file (made on first start, mode 0600) [default:
    /// $XDG_DATA_HOME/nano-connect/worker.key; env NANO_CONNECT_KEY].
    #[arg(long, value_name = "PATH", env = "NANO_CONNECT_KEY")]
    key: Option<PathBuf>,
    /// The Nano node's RPC (only scheme, host and port are used; requests go to `/`)
    /// [default: [node] url, else http://127.0.0.1:7076].
    #[arg(long, value_name = "URL")]
    nano_rpc: Option<String>,
    /// Worker settings file (TOML, see examples/worker.toml); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// UDP port for QUIC and NAT traversal (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to bind the UDP socket to.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// UDP port of the WebTransport face for browsers (0 = any free port; it is listed
    /// in the worker's signed record with its certificate hashes).
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    web_port: u16,
    /// Do not serve browsers over WebTransport.
    #[arg(long)]
    no_web: bool,
    /// Seconds between re-announces and record publications, with ±50 % jitter as
    /// Grenache does. Must be at most half the grapes' announce window (256 s by default).
    #[arg(long, default_value_t = DEFAULT_ANNOUNCE_INTERVAL.as_secs_f64(), value_name = "SECS")]
    announce_interval: f64,
    /// Brokers a worker behind a NAT registers with.
    #[arg(long, default_value_t = 2, value_name = "N")]
    max_brokers: usize,
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
    /// Largest "offset" a paging request may ask for; a larger one is refused
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    max_offset: Option<u64>,
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
    /// QUIC connections open at once; more are refused before their handshake.
    #[arg(long, default_value_t = nano_connect::defaults::DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    max_connections: usize,
    /// QUIC connections from one IP address at once.
    #[arg(long, default_value_t = nano_connect::defaults::DEFAULT_MAX_CONNECTIONS_PER_IP, value_name = "N")]
    max_connections_per_ip: usize,
    /// Answers kept by the response cache; 0 turns it off [default: 10000].
    #[arg(long, value_name = "N")]
    cache_entries: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Seconds between health probes of the node; the worker leaves the mesh after two
    /// failed probes in a row and comes back after one good one.
    #[arg(long, default_value_t = DEFAULT_HEALTH_INTERVAL.as_secs_f64(), value_name = "SECS")]
    health_interval: f64,
    /// What to serve: the Nano RPC relay, the Grenache tutorial's fibonacci service
    /// (for trying the mesh without a node), or echo (for benchmarks: answers the body,
    /// or an answer of the size a sized request asks for, see `nano-connect bench`).
    #[arg(long, value_enum, default_value_t = ServiceKind::NanoRpc)]
    service: ServiceKind,
    /// The Nano node's websocket, such as ws://127.0.0.1:7078: serve its confirmations to
    /// subscribers [default: off].
    #[arg(long, value_name = "URL")]
    nano_ws: Option<String>,
    /// Accounts one subscriber may follow.
    #[arg(long, default_value_t = confirmations::DEFAULT_MAX_ACCOUNTS, value_name = "N", requires = "nano_ws")]
    ws_max_accounts: usize,
    /// Subscribers served at once.
    #[arg(long, default_value_t = confirmations::DEFAULT_MAX_SUBSCRIBERS, value_name = "N", requires = "nano_ws")]
    ws_max_subscribers: usize,
    /// Confirmations per second to one subscriber (more are dropped and counted; 0: no
    /// limit).
    #[arg(long, default_value_t = confirmations::DEFAULT_MAX_RATE, value_name = "N", requires = "nano_ws")]
    ws_max_rate: u32,
    /// Confirmations queued per subscriber; one that reads more slowly loses messages
    /// past it (and is told how many).
    #[arg(long, default_value_t = confirmations::DEFAULT_QUEUE, value_name = "N", requires = "nano_ws")]
    ws_queue: usize,
    /// Take subscriptions for every account (each costs one message per confirmation of
    /// the network) [default: refused].
    #[arg(long, requires = "nano_ws")]
    ws_allow_all_accounts: bool,
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
    let key_path = match &args.key {
        Some(path) => path.clone(),
        None => keyfile::default_path()?,
    };
    let (key, new) = keyfile::load_or_create(&key_path)?;
    if new {
        info!(path = %key_path.display(), node = %key.node_id(), "made a new node key");
    }
    let metrics = Arc::new(WorkerMetrics::new());
    let mut builder = WorkerBuilder::new(args.announce.clone())
        .key(key)
        .bind(SocketAddr::new(args.bind, args.port))
        .presence(|p| {
            p.announce_interval = interval;
            p.max_brokers = args.max_brokers.max(1);
            p.assume_nat = args.via_broker;
        })
        .metrics(metrics.clone(), args.metrics.or(file.metrics.listen));
    let max_request_bytes = args.max_request_bytes.or(file.limits.max_request_bytes);
    let max_streams = args.max_streams.or(file.limits.max_concurrent_streams);
    if let Some(streams) = max_streams {
        anyhow::ensure!(streams > 0, "--max-streams must be at least 1");
    }
    let (max_connections, max_per_ip) = (
        args.max_connections.max(1),
        args.max_connections_per_ip.max(1),
    );
    builder = builder.server(|config| {
        config.max_connections = max_connections;
        config.max_connections_per_ip = max_per_ip;
        if let Some(bytes) = max_request_bytes {
            config.max_request_bytes = bytes;
        }
        if let Some(streams) = max_streams {
            config.quic.max_concurrent_streams = streams;
        }
    });
    if !args.no_web {
        builder = builder.web(WebServerConfig {
            bind: SocketAddr::new(args.bind, args.web_port),
            max_sessions: max_connections,
            max_sessions_per_ip: max_per_ip,
            quic: nano_connect::transport::QuicConfig {
                max_concurrent_streams: max_streams
                    .unwrap_or(nano_connect::defaults::DEFAULT_MAX_CONCURRENT_STREAMS),
                ..Default::default()
            },
            ..WebServerConfig::default()
        });
    }
    builder = builder.directory(match &args.grape {
        Some(url) => Directory::Grape(Link::new(url)),
        None => super::embedded_directory(args.bootstrap.clone()).await?,
    });
    builder = builder.brokers(if args.public {
        BrokerChoice::Off
    } else if args.broker.is_empty() {
        BrokerChoice::Discover
    } else {
        BrokerChoice::Fixed(
            args.broker
                .iter()
                .map(|b| broker_of(b.trim()))
                .collect::<Result<_, _>>()
                .context("--broker")?,
        )
    });
    let service = match args.service {
        ServiceKind::NanoRpc => {
            let config = nano_settings(&args, &file)?;
            let node_url = config.relay.node_url.clone();
            let service = nano_config::build(config, metrics.clone())
                .context("--nano-rpc / --work-server")?;
            let first_ok = match service.node().probe().await {
                Ok(version) => {
                    info!(
                        node = %node_url,
                        vendor = version.node_vendor.as_deref().unwrap_or("?"),
                        network = version.network.as_deref().unwrap_or("?"),
                        "Nano node answers"
                    );
                    true
                }
                Err(e) => {
                    warn!(
                        node = %node_url,
                        error = %e,
                        "Nano node does not answer yet; requests fail until it does, and the worker leaves the mesh if it stays down"
                    );
                    false
                }
            };
            let relay: NanoRelay = service.node().clone();
            let probe: health::Probe = Arc::new(move || {
                let relay = relay.clone();
                async move { relay.probe().await.is_ok() }.boxed()
            });
            let answers: health::AnswerCount = {
                let metrics = metrics.clone();
                Arc::new(move || metrics.node_answers())
            };
            builder = builder.health(probe, health_interval, first_ok, Some(answers));
            WorkerService::NanoStack(Box::new(service))
        }
        ServiceKind::Fibonacci => WorkerService::Fibonacci(FibonacciService),
        ServiceKind::Echo => WorkerService::Echo(EchoService),
    };
    let confirmations = match &args.nano_ws {
        Some(url) => {
            anyhow::ensure!(
                url.starts_with("ws://"),
                "--nano-ws must be a ws:// URL of the node next to the worker, such as \
                 ws://127.0.0.1:7078 (wss:// is not supported)"
            );
            anyhow::ensure!(args.ws_queue > 0, "--ws-queue must be at least 1");
            let config = ConfirmationsConfig {
                node_url: url.clone(),
                max_accounts: args.ws_max_accounts,
                max_subscribers: args.ws_max_subscribers,
                max_rate: args.ws_max_rate,
                queue: args.ws_queue,
                allow_all_accounts: args.ws_allow_all_accounts,
            };
            confirmations::log_settings(&config);
            let metrics = ConfirmationsMetrics::register(metrics.registry())
                .context("confirmation metrics")?;
            let service = Confirmations::start(config, Some(metrics));
            builder = builder.subscriptions(Arc::new(service.clone()));
            Some(service)
        }
        None => None,
    };
    let builder = builder.on_event(|event| match event {
        PresenceEvent::Mode(mode) => {
            let brokers: Vec<String> = match &mode {
                Mode::Public => Vec::new(),
                Mode::Brokered(b) => b.iter().map(ToString::to_string).collect(),
            };
            super::emit(serde_json::json!({
                "event": "presence",
                "mode": mode.as_str(),
                "brokers": brokers,
            }));
        }
        PresenceEvent::Registered { broker, reflexive } => super::emit(serde_json::json!({
            "event": "registered",
            "broker": broker.to_string(),
            "reflexive": reflexive.to_string(),
        })),
        PresenceEvent::Withdrawn => super::emit(serde_json::json!({"event": "withdrawn"})),
    });
    let worker = builder
        .spawn(service)
        .await
        .context("cannot start the worker")?;
    let addr = worker.local_addr();
    super::emit(serde_json::json!({
        "event": "listening",
        "addr": addr.to_string(),
        "port": addr.port(),
        "key": args.announce,
        "node_id": worker.node_id().to_string(),
        "metrics": worker.metrics_addr().map(|a| a.to_string()),
        "web": worker.web().map(|web| {
            let listing = web.listing().borrow().clone();
            serde_json::json!({"addr": web.local_addr().to_string(), "sha256": listing.sha256})
        }),
    }));
    super::shutdown_signal().await;
    info!("shutting down");
    if let Some(confirmations) = &confirmations {
        confirmations.stop();
    }
    worker.shutdown(Duration::from_secs(1)).await;
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
    if let Some(offset) = args.max_offset {
        relay.policy.set_max_offset(offset);
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
