//! `nano-connect grape`: a DHT node with the Grenache HTTP API.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use grape::{Grape, GrapeConfig};
use nano_connect::broker::rendezvous::{RelayConfig, RendezvousConfig};
use nano_connect::broker::Broker;
use nano_connect::discovery::Directory;
use nano_connect::protocol::web::WebEndpoint;
use nano_connect::route::{Discovery, RpcClient, RpcClientConfig};
use nano_connect::web::lookup::WebLookup;
use nano_connect::web::{WebServer, WebServerConfig};
use std::sync::Arc;
use tracing::{info, warn};

/// Run a grape: a BitTorrent mainline DHT node (BEP 5, BEP 44) in server mode, and the
/// Grenache-compatible HTTP API (/announce, /lookup, /put, /get) next to it.
///
/// WITHOUT --bn THE GRAPE JOINS THE PUBLIC MAINLINE DHT through its default bootstrap
/// routers. For a private mesh, start the first grape with `--bn none` and the others
/// with `--bn HOST:PORT` of a running grape. Prints one JSON line
/// `{"event":"listening",...}` on stdout once it serves. Ctrl-C stops it.
#[derive(Debug, Args)]
pub struct GrapeArgs {
    /// UDP port of the DHT node.
    #[arg(long = "dp", default_value_t = 20001, value_name = "PORT")]
    dht_port: u16,
    /// TCP port of the HTTP API (Grenache's examples use 30001).
    #[arg(long = "aph", default_value_t = 30001, value_name = "PORT")]
    api_port: u16,
    /// Bootstrap nodes, HOST:PORT[,HOST:PORT...]; `none` starts a new private network.
    /// Without this flag the grape joins the public mainline DHT.
    #[arg(long = "bn", value_delimiter = ',', value_name = "HOST:PORT")]
    bootstrap: Option<Vec<String>>,
    /// Address the DHT node binds to (IPv4: mainline is IPv4 only).
    #[arg(long, default_value_t = Ipv4Addr::UNSPECIFIED)]
    bind: Ipv4Addr,
    /// Address the HTTP API binds to. Anyone who can reach it can announce through this
    /// grape, so it stays on loopback unless you mean to serve remote clients.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    api_bind: IpAddr,
    /// Seconds an announcement stays visible to lookups (between 3/4 of this and all of
    /// it). Workers must re-announce at least every 3/4 of it; every grape of a network
    /// must use the same value.
    #[arg(long, default_value_t = grape::defaults::DEFAULT_ANNOUNCE_WINDOW.as_secs_f64(), value_name = "SECS")]
    announce_window: f64,
    /// This grape's public IPv4 address, when it is known (public grapes: avoids a
    /// routing-table reset when mainline learns it, BEP 42).
    #[arg(long, value_name = "IPV4")]
    public_ip: Option<Ipv4Addr>,
    /// Serve Prometheus metrics (DHT announces, lookups and their latency) at
    /// http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// UDP port of the broker (STUN Binding, rendezvous and relay for peers behind NATs),
    /// on --bind. Default: the DHT port + 10000 (− 10000 above 55535), where clients given only `--broker
    /// HOST:DHT_PORT` look for it. 0 = any free port.
    #[arg(long, value_name = "PORT")]
    broker_port: Option<u16>,
    /// Do not run the broker.
    #[arg(long)]
    no_broker: bool,
    /// Milliseconds an HTTP connection may take to send a request's head (idle time
    /// between requests included) before it is closed.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    header_timeout: u64,
    /// Do not relay for peers that cannot punch (the broker still introduces them).
    #[arg(long)]
    no_relay: bool,
    /// Bytes one relay circuit may carry, both ways together.
    #[arg(long, default_value_t = nano_connect::defaults::DEFAULT_RELAY_MAX_BYTES, value_name = "BYTES")]
    relay_max_bytes: u64,
    /// Seconds one relay circuit may last.
    #[arg(long, default_value_t = nano_connect::defaults::DEFAULT_RELAY_MAX_DURATION.as_secs_f64(), value_name = "SECS")]
    relay_max_secs: f64,
    /// Relay circuits open at once.
    #[arg(long, default_value_t = nano_connect::defaults::DEFAULT_RELAY_MAX_CIRCUITS, value_name = "N")]
    relay_max_circuits: usize,
    /// Relay requests one IP address may make per minute.
    #[arg(long, default_value_t = nano_connect::defaults::DEFAULT_RELAY_REQUESTS_PER_MINUTE, value_name = "N")]
    relay_rate: u32,
    /// Introductions one IP address may ask for per minute (each makes a worker punch
    /// toward the asker).
    #[arg(long, default_value_t = nano_connect::defaults::DEFAULT_CONNECTS_PER_MINUTE, value_name = "N")]
    introduction_rate: u32,
    /// UDP port of the WebTransport face, where web pages look keys up (docs/protocol.md
    /// §9), on --bind. Default: the DHT port + 20000 (− 20000 above 45535); 0 = any.
    #[arg(long, value_name = "PORT")]
    web_port: Option<u16>,
    /// The IP address pages reach the WebTransport face at, written in the bootstrap
    /// string the grape prints. Default: --public-ip, else --bind, else 127.0.0.1.
    #[arg(long, value_name = "IP")]
    web_host: Option<IpAddr>,
    /// File that keeps the WebTransport certificates across restarts, so that bootstrap
    /// strings given out stay good (private keys inside: mode 0600). Default:
    /// DATA_DIR/nano-connect/grape-web-PORT.json.
    #[arg(long, value_name = "FILE", env = "NANO_CONNECT_WEB_CERTS")]
    web_certs: Option<std::path::PathBuf>,
    /// Do not serve web pages over WebTransport.
    #[arg(long)]
    no_web: bool,
}

/// The default WebTransport port of a grape: its DHT port + 20000 (− 20000 when that
/// overflows), any free port for a DHT on any port.
fn web_port(dht_port: u16, bound_dht_port: u16) -> u16 {
    if dht_port == 0 {
        return 0;
    }
    bound_dht_port
        .checked_add(20_000)
        .unwrap_or(bound_dht_port.saturating_sub(20_000))
}

/// Starts the grape's WebTransport face: lookups for pages, through a client of the
/// grape's own DHT node. `None` (with a warning) when the default port is taken.
async fn start_web(
    args: &GrapeArgs,
    grape: &Grape,
) -> anyhow::Result<Option<(WebServer, WebEndpoint)>> {
    if args.no_web {
        return Ok(None);
    }
    let port = args
        .web_port
        .unwrap_or_else(|| web_port(args.dht_port, grape.dht_addr().port()));
    let ring_file = match &args.web_certs {
        Some(path) => path.clone(),
        None => dirs::data_dir()
            .context("no data folder for the WebTransport certificates: give --web-certs FILE")?
            .join("nano-connect")
            .join(format!("grape-web-{port}.json")),
    };
    let client = RpcClient::new(
        Discovery::Directory(Directory::Dht(grape.dht_shared())),
        RpcClientConfig::default(),
    )
    .context("cannot make the WebTransport lookup's client")?;
    let lookup = Arc::new(WebLookup::new(client));
    let config = WebServerConfig {
        bind: SocketAddr::new(IpAddr::V4(args.bind), port),
        ring_file: Some(ring_file),
        ..WebServerConfig::default()
    };
    let server = match WebServer::bind(config, lookup.clone()) {
        Ok(server) => server,
        Err(e) if args.web_port.is_none() => {
            warn!(error = %e, "no WebTransport face (give --web-port PORT, or --no-web)");
            return Ok(None);
        }
        Err(e) => return Err(e).context("--web-port"),
    };
    let host = args.web_host.unwrap_or_else(|| match args.public_ip {
        Some(ip) => IpAddr::V4(ip),
        None if !args.bind.is_unspecified() => IpAddr::V4(args.bind),
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    });
    lookup.set_own(host, server.listing());
    let endpoint = server.endpoint_at(SocketAddr::new(host, 0));
    Ok(Some((server, endpoint)))
}

pub async fn run(args: GrapeArgs) -> anyhow::Result<()> {
    let announce_window = Duration::try_from_secs_f64(args.announce_window)
        .ok()
        .filter(|d| *d >= Duration::from_millis(4))
        .context("--announce-window must be at least 0.004 seconds")?;
    let bootstrap = args.bootstrap.clone().map(|nodes| {
        nodes
            .into_iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty() && n != "none")
            .collect::<Vec<_>>()
    });
    if bootstrap.is_none() {
        info!("no --bn given: joining the public mainline DHT");
    }
    let config = GrapeConfig {
        bind: args.bind,
        dht_port: args.dht_port,
        api_port: args.api_port,
        api_bind: args.api_bind,
        bootstrap,
        announce_window,
        public_ip: args.public_ip,
        http_limits: grape::http::serve::HttpLimits {
            header_timeout: Duration::from_millis(args.header_timeout.max(1)),
            ..grape::http::serve::HttpLimits::default()
        },
        ..GrapeConfig::default()
    };
    let grape = Grape::start(config)
        .await
        .context("cannot start the grape")?;
    let stop_metrics = tokio_util::sync::CancellationToken::new();
    let metrics_addr = match args.metrics {
        Some(listen) => {
            let metrics = std::sync::Arc::new(nano_connect::metrics::GrapeMetrics::new());
            grape.dht().set_observer(metrics.clone());
            let exposition = nano_connect::metrics::Exposition {
                registry: metrics.registry().clone(),
                before_scrape: std::sync::Arc::new(|| {}),
            };
            Some(super::serve_metrics(listen, exposition, stop_metrics.clone()).await?)
        }
        None => None,
    };
    let broker = if args.no_broker {
        None
    } else {
        let relay_max_duration = Duration::try_from_secs_f64(args.relay_max_secs)
            .ok()
            .filter(|d| !d.is_zero())
            .context("--relay-max-secs must be a positive number of seconds")?;
        let port = match args.broker_port {
            Some(port) => port,
            None => nano_connect::traversal::broker_port(grape.dht_addr().port()),
        };
        let config = RendezvousConfig {
            relay: RelayConfig {
                enabled: !args.no_relay,
                max_circuits: args.relay_max_circuits,
                max_bytes: args.relay_max_bytes,
                max_duration: relay_max_duration,
                requests_per_minute: args.relay_rate,
            },
            connects_per_minute: args.introduction_rate,
            ..RendezvousConfig::default()
        };
        let addr = SocketAddr::new(IpAddr::V4(args.bind), port);
        Some(Broker::bind(addr, config).with_context(|| {
            format!("cannot start the broker on UDP {addr} (give another --broker-port, or --no-broker)")
        })?)
    };
    if let Some(broker) = &broker {
        // Findable through the DHT: workers behind NATs look for brokers, clients for
        // the brokers of a key (docs/protocol.md §1.3).
        broker.announce_in(
            grape.dht_shared(),
            broker.addr().port(),
            nano_connect::defaults::DEFAULT_ANNOUNCE_INTERVAL,
        );
    }
    let web = start_web(&args, &grape).await?;
    info!(dht = %grape.dht_addr(), api = %grape.api_addr(), broker = ?broker.as_ref().map(Broker::addr), "grape serving");
    let mut event = serde_json::json!({
        "event": "listening",
        "dht": grape.dht_addr().to_string(),
        "api": grape.api_addr().to_string(),
        "metrics": metrics_addr,
    });
    if let Some(broker) = &broker {
        event["broker"] = broker.addr().to_string().into();
        event["broker_alt"] = broker.alt_addr().to_string().into();
    }
    if let Some((_, endpoint)) = &web {
        // The bootstrap string a page carries to reach the mesh through this grape.
        event["web"] = endpoint.to_string().into();
    }
    super::emit(event);
    super::shutdown_signal().await;
    stop_metrics.cancel();
    info!("shutting down");
    if let Some((web, _)) = web {
        web.shutdown(Duration::from_millis(200)).await;
    }
    if let Some(broker) = broker {
        broker.shutdown().await;
    }
    grape.shutdown().await;
    Ok(())
}
