//! The gateway's added latency: the same Nano RPC request posted straight to a node
//! stand-in, and through `gateway → QUIC → worker → node stand-in`, alternately, on
//! loopback, everything in this one process.
//!
//! ```text
//! cargo run --release --example gateway_latency -- [REQUESTS]
//! ```
//!
//! REQUESTS (default 2000) of each kind are timed after 200 warm-up requests of each;
//! the request is `{"action":"block_count"}` and the stand-in answers a fixed 46-byte body
//! at once, so the direct figure is the cost of one local HTTP exchange and the
//! difference is what the gateway, the QUIC stream and the worker add. Prints one JSON
//! line with median and p99 of both, in microseconds.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use grape::{Grape, GrapeConfig};
use nano_connect::discovery::link::Link;
use nano_connect::discovery::Directory;
use nano_connect::gateway::{self, Gateway, GatewayConfig};
use nano_connect::nano::{NanoRelay, NanoRelayConfig};
use nano_connect::route::{Discovery, RpcClient, RpcClientConfig};
use nano_connect::worker::{RpcServer, RpcServerConfig};

const KEY: &str = "nano_rpc";
const REQUEST: &str = r#"{"action":"block_count"}"#;
const ANSWER: &str = r#"{"count":"3","unchecked":"0","cemented":"3"}"#;
const WARM_UP: usize = 200;

/// A node stand-in answering every POST with [`ANSWER`]; returns its URL.
async fn stand_in() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().fallback(|| async {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            ANSWER,
        )
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

fn grape_config(bootstrap: Vec<String>) -> GrapeConfig {
    GrapeConfig {
        bind: Ipv4Addr::LOCALHOST,
        dht_port: 0,
        api_port: 0,
        bootstrap: Some(bootstrap),
        ..GrapeConfig::default()
    }
}

/// Median and 99th percentile of `samples`, in microseconds.
fn summary(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index].as_secs_f64() * 1e6
    };
    (at(0.5), at(0.99))
}

async fn time_post(http: &reqwest::Client, url: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response = http.post(url).body(REQUEST).send().await?;
    let body = response.bytes().await?;
    let took = started.elapsed();
    anyhow::ensure!(&body[..] == ANSWER.as_bytes(), "unexpected answer {body:?}");
    Ok(took)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("REQUESTS must be a number")?,
        None => 2000,
    };
    let node = stand_in().await?;

    let first = Grape::start(grape_config(vec![])).await?;
    let second = Grape::start(grape_config(vec![first.dht_addr().to_string()])).await?;
    let relay = NanoRelay::new(NanoRelayConfig {
        node_url: node.clone(),
        ..NanoRelayConfig::default()
    })?;
    let server = RpcServer::bind(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        RpcServerConfig {
            keys: vec![KEY.into()],
            ..RpcServerConfig::default()
        },
        relay,
    )
    .await?;
    let port = server.local_addr().port();
    let link_a = Link::new(&format!("http://{}", first.api_addr()));
    let link_b = Link::new(&format!("http://{}", second.api_addr()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        link_a.announce(KEY, port).await?;
        if !link_b.lookup(KEY).await.unwrap_or_default().is_empty() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the announce never became visible"
        );
        link_b.invalidate(KEY);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let client = Arc::new(RpcClient::new(
        Discovery::Directory(Directory::Grape(link_b)),
        RpcClientConfig::default(),
    )?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway_url = format!("http://{}/", listener.local_addr()?);
    let gateway = Gateway::new(client, GatewayConfig::default());
    tokio::spawn(gateway::serve(listener, gateway, std::future::pending()));

    let http = reqwest::Client::builder().no_proxy().build()?;
    for _ in 0..WARM_UP {
        time_post(&http, &node).await?;
        time_post(&http, &gateway_url).await?;
    }
    let mut direct = Vec::with_capacity(requests);
    let mut through = Vec::with_capacity(requests);
    for _ in 0..requests {
        direct.push(time_post(&http, &node).await?);
        through.push(time_post(&http, &gateway_url).await?);
    }
    let (direct_p50, direct_p99) = summary(&mut direct);
    let (gateway_p50, gateway_p99) = summary(&mut through);
    println!(
        "{}",
        serde_json::json!({
            "requests": requests,
            "direct_us": { "p50": direct_p50.round(), "p99": direct_p99.round() },
            "gateway_us": { "p50": gateway_p50.round(), "p99": gateway_p99.round() },
            "added_us": {
                "p50": (gateway_p50 - direct_p50).round(),
                "p99": (gateway_p99 - direct_p99).round(),
            },
        })
    );
    server.shutdown(Duration::from_millis(200)).await;
    second.shutdown().await;
    first.shutdown().await;
    Ok(())
}
