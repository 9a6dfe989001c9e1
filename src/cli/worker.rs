//! `nano-connect worker`: serve a key next to a Nano node.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use nano_connect::defaults::{
    DEFAULT_ANNOUNCE_INTERVAL, DEFAULT_GRAPE_URL, DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_NANO_RPC_URL, DEFAULT_SERVICE_KEY,
};
use nano_connect::echo::EchoService;
use nano_connect::fibonacci::FibonacciService;
use nano_connect::link::Link;
use nano_connect::nano::{NanoRelay, NanoRelayConfig, Policy};
use nano_connect::rpc::{RpcServer, RpcServerConfig};
use nano_connect::service::{Handler, Reply, Request};
use nano_connect::transport::QuicConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Run a worker: accept QUIC connections, announce KEY through the grape, and relay
/// each allowlisted Nano RPC request to the node.
///
/// Only read-only actions reach the node by default (the list is in docs/protocol.md);
/// `--allow` opts in to process (never with force), work_generate and block_confirm.
/// Requests are posted to the node's `/` with no client headers. Prints one JSON line
/// `{"event":"listening",...}` on stdout once it serves. Ctrl-C stops it.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Service key to announce (its infohash is SHA-1 of the key, see docs/protocol.md).
    #[arg(long, default_value = DEFAULT_SERVICE_KEY, value_name = "KEY")]
    announce: String,
    /// The grape's HTTP API, used to announce.
    #[arg(long, default_value = DEFAULT_GRAPE_URL, value_name = "URL")]
    grape: String,
    /// The Nano node's RPC (only scheme, host and port are used; requests go to `/`).
    #[arg(long, default_value = DEFAULT_NANO_RPC_URL, value_name = "URL")]
    nano_rpc: String,
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
    /// Milliseconds to wait for the node's answer.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    node_timeout: u64,
    /// What to serve: the Nano RPC relay, the Grenache tutorial's fibonacci service
    /// (for trying the mesh without a node), or echo (for benchmarks: answers the body,
    /// or an answer of the size a sized request asks for, see `nano-connect bench`).
    #[arg(long, value_enum, default_value_t = ServiceKind::NanoRpc)]
    service: ServiceKind,
    /// Requests one caller may have in flight on its connection (QUIC bidirectional
    /// streams). Each allowed stream costs about 82 bytes per connection, up front.
    #[arg(long, default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS, value_name = "N")]
    max_streams: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServiceKind {
    NanoRpc,
    Fibonacci,
    Echo,
}

/// The handler a worker runs, chosen on the command line.
pub enum WorkerService {
    /// The Nano RPC relay.
    Nano(NanoRelay),
    /// The fibonacci service.
    Fibonacci(FibonacciService),
    /// The echo service.
    Echo(EchoService),
}

impl Handler for WorkerService {
    async fn handle(&self, request: Request) -> Reply {
        match self {
            Self::Nano(relay) => relay.handle(request).await,
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
    let service = match args.service {
        ServiceKind::NanoRpc => {
            let mut policy = Policy::read_only();
            for action in &args.allow {
                policy
                    .allow(action)
                    .with_context(|| format!("--allow {action}"))?;
            }
            let relay = NanoRelay::new(NanoRelayConfig {
                node_url: args.nano_rpc.clone(),
                policy,
                timeout: Duration::from_millis(args.node_timeout),
                ..NanoRelayConfig::default()
            })
            .context("--nano-rpc")?;
            match relay.probe().await {
                Ok(version) => info!(
                    node = %args.nano_rpc,
                    vendor = version.node_vendor.as_deref().unwrap_or("?"),
                    network = version.network.as_deref().unwrap_or("?"),
                    "Nano node answers"
                ),
                Err(e) => warn!(
                    node = %args.nano_rpc,
                    error = %e,
                    "Nano node does not answer yet; requests will fail until it does"
                ),
            }
            WorkerService::Nano(relay)
        }
        ServiceKind::Fibonacci => WorkerService::Fibonacci(FibonacciService),
        ServiceKind::Echo => WorkerService::Echo(EchoService),
    };
    let config = RpcServerConfig {
        keys: vec![args.announce.clone()],
        quic: QuicConfig {
            max_concurrent_streams: args.max_streams,
            ..QuicConfig::default()
        },
        ..RpcServerConfig::default()
    };
    let server = RpcServer::bind(SocketAddr::new(args.bind, args.port), config, service)
        .await
        .context("cannot start the worker")?;
    let addr = server.local_addr();
    info!(%addr, key = %args.announce, grape = %args.grape, "worker serving");
    super::emit(serde_json::json!({
        "event": "listening",
        "addr": addr.to_string(),
        "port": addr.port(),
        "key": args.announce,
    }));

    let cancel = CancellationToken::new();
    let link = Link::new(&args.grape);
    let announcer = link.spawn_announcer(
        args.announce.clone(),
        addr.port(),
        interval,
        cancel.clone(),
        |_| {},
    );

    super::shutdown_signal().await;
    info!("shutting down");
    cancel.cancel();
    let _ = announcer.await;
    server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
