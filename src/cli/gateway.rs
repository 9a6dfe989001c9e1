//! `nano-connect gateway`: a Nano node's RPC on a local HTTP port, carried by the mesh.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use nano_connect::defaults::{DEFAULT_GATEWAY_LISTEN, DEFAULT_SERVICE_KEY};
use nano_connect::gateway::ws::{self, WsConfig, WsGateway, WsMetrics};
use nano_connect::gateway::{self, Gateway, GatewayConfig, DEFAULT_MAX_BODY_BYTES};
use nano_connect::metrics::{Exposition, GatewayMetrics};
use nano_connect::protocol::identity::NodeId;
use nano_connect::route::subscribe::SubscriptionConfig;
use nano_connect::route::{RpcClient, RpcClientConfig};
use tracing::info;

use super::route::RouteArgs;

/// Serve the Nano node RPC on a local HTTP port and carry every request through the mesh.
///
///   nano-connect gateway                      (joins the public mainline DHT)
///   nano-connect gateway --grape http://127.0.0.1:30001 --listen 127.0.0.1:7076
///
/// Point wallet software or a Nano client library at http://LISTEN/ as if it were a
/// node: POST a JSON body such as {"action":"block_count"} and get the node's answer as
/// is. Failures of the mesh (no worker, a refusal, a timeout) come back as nano-node
/// reports its own errors: HTTP 200 {"error": "nano-connect: ..."}. Browser pages may
/// call it (CORS, any origin). Read-only actions are retried on another worker when one
/// fails; process, work_generate and block_confirm are sent once. Workers behind NATs
/// are reached by hole punching or through a broker's relay, as public ones directly;
/// --trust limits the gateway to named nodes.
///
/// With --ws-listen ADDR (a node's websocket is on 7078) it also serves the node's
/// websocket dialect: a wallet subscribes to the `confirmation` topic with
/// options.accounts and gets the confirmations of those accounts from workers that run
/// with --nano-ws, moved to another worker when one goes away (--quorum N: once a
/// strict majority of N workers reported the block).
///
/// Prints one JSON line {"event":"listening","addr":...,"port":...,"ws":...} on stdout
/// once it serves. Ctrl-C stops it.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct GatewayArgs {
    /// Local address for HTTP (7076 is a Nano node's own RPC port; stop a local node or
    /// choose another port).
    #[arg(long, default_value = DEFAULT_GATEWAY_LISTEN, value_name = "HOST:PORT")]
    listen: SocketAddr,
    #[command(flatten)]
    route: RouteArgs,
    /// Use only these workers (node ids, comma-separated): no other node, and nothing on
    /// the path standing in for one, answers through this gateway.
    #[arg(long, value_delimiter = ',', value_name = "NODE_ID,...")]
    trust: Vec<NodeId>,
    /// Service key to look up.
    #[arg(long, default_value = DEFAULT_SERVICE_KEY, value_name = "KEY")]
    service: String,
    /// Ask N distinct workers per read-only request and answer only when a strict
    /// majority agree byte for byte (1: no quorum); opt-ins such as process go to one.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=15))]
    quorum: u16,
    /// Milliseconds allowed for each request, lookup and failover included.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    timeout: u64,
    /// Serve Prometheus metrics (requests by outcome, latency) at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Largest request body taken, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES, value_name = "BYTES")]
    max_body: usize,
    /// Milliseconds a connection may take to send a request's head (idle time between
    /// requests included) before it is closed.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    header_timeout: u64,
    /// Also serve the node's websocket (confirmations) on this address, such as
    /// 127.0.0.1:7078 [default: off].
    #[arg(long, value_name = "HOST:PORT")]
    ws_listen: Option<SocketAddr>,
    /// Heartbeat asked of workers, ms; a worker silent for 2.5 heartbeats is replaced.
    #[arg(
        long,
        default_value_t = 2000,
        value_name = "MS",
        requires = "ws_listen"
    )]
    ws_heartbeat: u64,
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let config = RpcClientConfig {
        request_timeout: Duration::from_millis(args.timeout),
        ..RpcClientConfig::default()
    };
    let discovery = args.route.discovery().await?;
    let mut client = RpcClient::new(discovery, config)
        .context("cannot start the client")?
        .with_trust(args.trust.clone());
    if let Some(cache) = args.route.cache() {
        client = client.with_cache(cache);
    }
    let client = Arc::new(client);
    let gateway = Gateway::new(
        client.clone(),
        GatewayConfig {
            service: args.service.clone(),
            quorum: usize::from(args.quorum),
            max_body_bytes: args.max_body,
            header_timeout: Duration::from_millis(args.header_timeout.max(1)),
        },
    );
    let stop_metrics = tokio_util::sync::CancellationToken::new();
    let metrics = args.metrics.map(|_| Arc::new(GatewayMetrics::new()));
    let ws_metrics = match (&metrics, args.ws_listen) {
        (Some(metrics), Some(_)) => {
            Some(WsMetrics::register(metrics.registry()).context("websocket metrics")?)
        }
        _ => None,
    };
    let (gateway, metrics_addr) = match (args.metrics, metrics) {
        (Some(listen), Some(metrics)) => {
            let exposition = Exposition {
                registry: metrics.registry().clone(),
                before_scrape: Arc::new(|| {}),
            };
            let bound = super::serve_metrics(listen, exposition, stop_metrics.clone()).await?;
            (gateway.with_metrics(metrics), Some(bound))
        }
        _ => (gateway, None),
    };
    let ws = match args.ws_listen {
        Some(listen) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen} (--ws-listen)"))?;
            let heartbeat = Duration::from_millis(args.ws_heartbeat.max(500));
            let config = WsConfig {
                subscription: SubscriptionConfig {
                    key: args.service.clone(),
                    quorum: usize::from(args.quorum),
                    heartbeat,
                    silence: heartbeat * 5 / 2,
                    ..SubscriptionConfig::default()
                },
                ..WsConfig::default()
            };
            let addr = listener.local_addr().context("local address")?;
            let face = WsGateway::new(client.clone(), config, ws_metrics);
            info!(%addr, "websocket serving");
            let task = tokio::spawn(ws::serve(listener, face, super::shutdown_signal()));
            Some((addr, task))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let addr = listener.local_addr().context("local address")?;
    info!(%addr, key = %args.service, quorum = args.quorum, trusted = args.trust.len(), "gateway serving");
    super::emit(serde_json::json!({
        "event": "listening",
        "addr": addr.to_string(),
        "port": addr.port(),
        "key": args.service,
        "metrics": metrics_addr,
        "ws": ws.as_ref().map(|(addr, _)| addr.to_string()),
    }));
    gateway::serve(listener, gateway, super::shutdown_signal())
        .await
        .context("gateway stopped")?;
    stop_metrics.cancel();
    if let Some((_, task)) = ws {
        let _ = task.await;
    }
    info!("shutting down");
    client.close(Duration::from_millis(200)).await;
    Ok(())
}
