//! `nano-connect demo`: a whole mesh on loopback, hop by hop, with timings.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use grape::{Grape, GrapeConfig};
use nano_connect::defaults::{DEFAULT_NANO_RPC_URL, DEFAULT_SERVICE_KEY};
use nano_connect::discovery::link::Link;
use nano_connect::discovery::Directory;
use nano_connect::fibonacci::{FibonacciService, FIBONACCI_KEY};
use nano_connect::nano::{NanoRelay, NanoRelayConfig, Policy};
use nano_connect::route::{Discovery, RpcClient, RpcClientConfig};
use nano_connect::worker::{RpcServer, RpcServerConfig};

use super::worker::WorkerService;

/// Bring up a whole mesh on loopback — two grapes, a worker, a client — and show each hop
/// with its timing.
///
/// The worker relays to the Nano node at --nano-rpc. When no node answers there, the demo
/// says so and runs the same mesh with the Grenache tutorial's fibonacci service instead.
/// Nothing leaves this machine: the grapes form a private DHT on 127.0.0.1.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The Nano node's RPC (a live node listens on 7076, a dev-network node on 45000).
    #[arg(long, default_value = DEFAULT_NANO_RPC_URL, value_name = "URL")]
    nano_rpc: String,
    /// Sequential calls timed at the end, on one connection.
    #[arg(long, default_value_t = 200)]
    calls: u32,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn loopback_grape(bootstrap: Vec<String>) -> GrapeConfig {
    GrapeConfig {
        bind: Ipv4Addr::LOCALHOST,
        dht_port: 0,
        api_port: 0,
        api_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        bootstrap: Some(bootstrap),
        ..GrapeConfig::default()
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    println!("nano-connect demo: a private mesh on 127.0.0.1\n");

    let t = Instant::now();
    let grape_a = Grape::start(loopback_grape(vec![]))
        .await
        .context("grape A")?;
    println!(
        "[grape A ] DHT udp/{} HTTP http://{}  (up in {})",
        grape_a.dht_addr(),
        grape_a.api_addr(),
        ms(t.elapsed())
    );
    let t = Instant::now();
    let grape_b = Grape::start(loopback_grape(vec![grape_a.dht_addr().to_string()]))
        .await
        .context("grape B")?;
    println!(
        "[grape B ] DHT udp/{} HTTP http://{}  bootstrapped from A (up in {})",
        grape_b.dht_addr(),
        grape_b.api_addr(),
        ms(t.elapsed())
    );

    let relay = NanoRelay::new(NanoRelayConfig {
        node_url: args.nano_rpc.clone(),
        policy: Policy::read_only(),
        ..NanoRelayConfig::default()
    })
    .context("--nano-rpc")?;
    let t = Instant::now();
    let (key, service, requests): (&str, WorkerService, Vec<(&str, String)>) =
        match relay.probe().await {
            Ok(version) => {
                println!(
                    "[node    ] Nano node at {} answers: {} on the {} network ({})",
                    args.nano_rpc,
                    version.node_vendor.as_deref().unwrap_or("unknown vendor"),
                    version.network.as_deref().unwrap_or("unknown"),
                    ms(t.elapsed())
                );
                (
                    DEFAULT_SERVICE_KEY,
                    WorkerService::Nano(relay),
                    vec![
                        ("block_count", r#"{"action":"block_count"}"#.into()),
                        ("version", r#"{"action":"version"}"#.into()),
                        (
                            "wallet_export (not allowlisted)",
                            r#"{"action":"wallet_export","wallet":"0"}"#.into(),
                        ),
                    ],
                )
            }
            Err(e) => {
                println!("[node    ] no Nano node answers at {}: {e}", args.nano_rpc);
                println!(
                    "           Point the demo at one with --nano-rpc URL (a live node's RPC is on"
                );
                println!(
                    "           port 7076, a dev node's on 45000; enable_rpc in config-rpc.toml)."
                );
                println!(
                    "           Running the same mesh with Grenache's fibonacci service instead.\n"
                );
                (
                    FIBONACCI_KEY,
                    WorkerService::Fibonacci(FibonacciService),
                    vec![
                        ("fibonacci length=10", r#"{"length":10}"#.into()),
                        ("fibonacci length=20", r#"{"length":20}"#.into()),
                        ("fibonacci length=500 (refused)", r#"{"length":500}"#.into()),
                    ],
                )
            }
        };

    let worker = RpcServer::bind(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        RpcServerConfig {
            keys: vec![key.to_string()],
            ..RpcServerConfig::default()
        },
        service,
    )
    .await
    .context("worker")?;
    let worker_addr = worker.local_addr();
    let link_a = Link::new(&format!("http://{}", grape_a.api_addr()));
    let t = Instant::now();
    link_a
        .announce(key, worker_addr.port())
        .await
        .context("announce through grape A")?;
    println!(
        "[worker  ] QUIC udp/{worker_addr}, announced {key:?} through grape A in {}",
        ms(t.elapsed())
    );

    let link_b = Link::with_cache_ttl(
        &format!("http://{}", grape_b.api_addr()),
        Duration::from_secs(5),
    );
    let t = Instant::now();
    let found = loop {
        link_b.invalidate(key);
        let found = link_b.lookup(key).await.context("lookup through grape B")?;
        if found.contains(&worker_addr) {
            break found;
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!("grape B did not find the worker within 10 s (found {found:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "[lookup  ] grape B found {:?} for {key:?} in {}",
        found.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ms(t.elapsed())
    );

    let client = RpcClient::new(
        Discovery::Directory(Directory::Grape(link_b)),
        RpcClientConfig::default(),
    )?;
    for (label, body) in &requests {
        let t = Instant::now();
        match client.request(key, body.as_bytes()).await {
            Ok(answer) => {
                let text = String::from_utf8_lossy(&answer.body);
                let text: String = text.chars().take(110).collect();
                println!(
                    "[call    ] {label}: {text}\n           status {}, connect {}, exchange {}, total {}",
                    answer.status,
                    answer.connect.map_or("reused".into(), ms),
                    ms(answer.exchange),
                    ms(t.elapsed())
                );
            }
            Err(e) => println!("[call    ] {label}: refused as expected: {e}"),
        }
    }

    let (_, body) = &requests[0];
    let mut samples = Vec::with_capacity(args.calls as usize);
    let t = Instant::now();
    for _ in 0..args.calls {
        let started = Instant::now();
        client
            .request(key, body.as_bytes())
            .await
            .context("timed calls")?;
        samples.push(started.elapsed());
    }
    let total = t.elapsed();
    samples.sort();
    if let (Some(p50), Some(p99)) = (
        samples.get(samples.len() / 2),
        samples.get(samples.len() * 99 / 100),
    ) {
        println!(
            "[timing  ] {} sequential calls on one connection: p50 {}, p99 {}, {:.0} calls/s",
            args.calls,
            ms(*p50),
            ms(*p99),
            f64::from(args.calls) / total.as_secs_f64()
        );
    }

    client.close(Duration::from_millis(200)).await;
    worker.shutdown(Duration::from_millis(200)).await;
    grape_b.shutdown().await;
    grape_a.shutdown().await;
    println!("\nAll parts stopped. Run the real thing with `nano-connect grape`, `worker`, `call` (see README.md).");
    Ok(())
}
