//! The QUIC floor: a bare quinn echo with nano-connect's transport settings (same
//! `QuicConfig`, TLS set-up, 4 MiB UDP buffers, ALPN), and nothing of the RPC layer: no
//! frame codec, no handler, no lookup. The mesh's figures are compared with it in the
//! same run (`benches/mesh.sh`).
//!
//! ```text
//! cargo run --release --example quic_floor -- server --port 47100
//! cargo run --release --example quic_floor -- client --addr 127.0.0.1:47100 -c 64 -n 100000
//! ```
//!
//! Each request is a new bidirectional stream: the client writes `--payload` bytes (100)
//! whose first 4 bytes (u32, big-endian) ask for the answer size (`--answer`, 200 B) and
//! finishes; the server reads to the end, writes that many bytes and finishes. The server
//! prints `{"event":"listening",...}`; the client prints one JSON object with requests/s
//! and latency percentiles in µs. `--runtime current` runs tokio's single-threaded
//! runtime instead of the multi-threaded one nano-connect uses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use nano_connect::transport::{bind_udp, client_endpoint, server_endpoint, QuicConfig};

#[derive(Parser)]
struct Cli {
    /// tokio runtime flavour.
    #[arg(long, value_enum, default_value_t = Runtime::Multi)]
    runtime: Runtime,
    #[command(subcommand)]
    role: Role,
}

#[derive(Clone, Copy, ValueEnum)]
enum Runtime {
    Multi,
    Current,
}

#[derive(Subcommand)]
enum Role {
    /// Answer streams on 127.0.0.1:PORT.
    Server {
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Send requests to ADDR and print one JSON report.
    Client {
        #[arg(long)]
        addr: SocketAddr,
        /// Requests in flight.
        #[arg(short = 'c', long, default_value_t = 1)]
        concurrency: usize,
        /// Connections the requests in flight are spread over.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Most requests.
        #[arg(short = 'n', long, default_value_t = 100_000)]
        requests: u64,
        /// Most seconds.
        #[arg(short = 'd', long, default_value_t = 10.0)]
        duration: f64,
        /// Request bytes (at least 4).
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Answer bytes.
        #[arg(long, default_value_t = 200)]
        answer: u32,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = match cli.runtime {
        Runtime::Multi => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        Runtime::Current => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(async move {
        match cli.role {
            Role::Server { port } => server(port).await,
            Role::Client {
                addr,
                concurrency,
                connections,
                requests,
                duration,
                payload,
                answer,
            } => {
                client(
                    addr,
                    concurrency.max(1),
                    connections.clamp(1, concurrency.max(1)),
                    requests,
                    Duration::from_secs_f64(duration),
                    payload,
                    answer,
                )
                .await
            }
        }
    })
}

async fn server(port: u16) -> anyhow::Result<()> {
    let socket = bind_udp(SocketAddr::from(([127, 0, 0, 1], port)))?;
    let endpoint = server_endpoint(
        socket,
        &QuicConfig::default(),
        &nano_connect::protocol::identity::NodeKey::generate(),
    )?;
    println!(
        "{}",
        serde_json::json!({"event": "listening", "addr": endpoint.local_addr()?.to_string()})
    );
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                tokio::spawn(async move {
                    let Ok(request) = recv.read_to_end(64 * 1024).await else {
                        return;
                    };
                    let len = request
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0)
                        .min(4 * 1024 * 1024);
                    let _ = send.write_all(&vec![b'a'; len as usize]).await;
                    let _ = send.finish();
                });
            }
        });
    }
    Ok(())
}

async fn client(
    addr: SocketAddr,
    concurrency: usize,
    connections: usize,
    requests: u64,
    duration: Duration,
    payload: usize,
    answer: u32,
) -> anyhow::Result<()> {
    let mut conns = Vec::new();
    for _ in 0..connections {
        let socket = bind_udp(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let endpoint = client_endpoint(socket, &QuicConfig::default())?;
        let connection = endpoint.connect(addr, "nano-connect")?.await?;
        conns.push((endpoint, connection));
    }
    let mut body = answer.to_be_bytes().to_vec();
    body.resize(payload.max(4), b'.');
    let body: Arc<[u8]> = body.into();
    // Warm-up: ten requests per connection, not counted.
    for (_, connection) in &conns {
        for _ in 0..10 {
            exchange(connection, &body).await?;
        }
    }
    let remaining = Arc::new(AtomicU64::new(requests));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..concurrency {
        let connection = conns[i % conns.len()].1.clone();
        let body = body.clone();
        let remaining = remaining.clone();
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut errors = 0u64;
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                match exchange(&connection, &body).await {
                    Ok(()) => {
                        let _ = h.record((sent.elapsed().as_micros() as u64).clamp(1, 60_000_000));
                    }
                    Err(_) => errors += 1,
                }
            }
            (h, errors)
        });
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (part, e) = done?;
        h.add(&part)?;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "ok": h.len(),
            "errors": errors,
            "elapsed_s": elapsed,
            "requests_per_s": h.len() as f64 / elapsed,
            "concurrency": concurrency,
            "connections": connections,
            "latency": {
                "p50_us": h.value_at_quantile(0.5),
                "p99_us": h.value_at_quantile(0.99),
                "p999_us": h.value_at_quantile(0.999),
                "max_us": h.max(),
            },
        })
    );
    for (endpoint, _) in &conns {
        endpoint.close(0u32.into(), b"done");
    }
    Ok(())
}

async fn exchange(connection: &quinn::Connection, body: &[u8]) -> anyhow::Result<()> {
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(body).await?;
    send.finish()?;
    recv.read_to_end(8 * 1024 * 1024).await?;
    Ok(())
}
