//! Confirmations through the mesh, measured: the latency a gateway adds between the
//! node's emit and a wallet's websocket, and how many subscribers one worker serves at
//! 100 confirmations a second, with its CPU and memory (docs/benchmarks.md,
//! "Confirmations").
//!
//! ```text
//! cargo build --release --bin nano-connect --example confirmations_bench
//! target/release/examples/confirmations_bench latency [MESSAGES]
//! target/release/examples/confirmations_bench fanout [N,N,...] [SECS] [shared|distinct]
//! ```
//!
//! Everything runs on 127.0.0.1: two grapes and the Nano node websocket stand-in
//! (`tests/support/nano_ws_stub.rs`) in this process, and a worker
//! (`nano-connect worker --service echo --nano-ws ...`, so that no RPC node is needed) and,
//! for `latency`, a gateway (`--ws-listen`) as processes of the release binary
//! (`NANO_CONNECT_BIN`, default `target/release/nano-connect`), so that their CPU and
//! memory are theirs alone.
//!
//! - `latency`: a websocket client on the gateway follows one account; the stand-in
//!   emits MESSAGES (default 2000, after 200 warm-up) confirmations of it, 200 a second,
//!   each stamped with the time of its emit; a second client connected straight to the
//!   stand-in is the baseline. Prints p50 and p99 of both and their difference, in µs.
//! - `fanout`: for each N, N subscriptions (library `Subscription`s, 50 per client
//!   connection) on the one worker; the stand-in emits 100 confirmations a second for
//!   SECS (default 10). `shared`: every subscriber follows the one account of every
//!   confirmation (each is sent N times: the worst case); `distinct` (default): subscriber
//!   i follows its own account and the confirmations go round the accounts (each is sent
//!   once, as for wallets). Prints the worker's CPU (percent of one core) and resident
//!   memory, what was delivered and lost, and the delivery latency.

#[path = "../tests/support/nano_ws_stub.rs"]
#[allow(dead_code)]
mod nano_ws_stub;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use grape::{Grape, GrapeConfig};
use nano_connect::discovery::link::Link;
use nano_connect::discovery::Directory;
use nano_connect::route::subscribe::{Filter, Subscription, SubscriptionConfig, SubscriptionEvent};
use nano_connect::route::{Discovery, RpcClient, RpcClientConfig};
use nano_ws_stub::{generated, stamped, NanoWsStub};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "nano_rpc";
const SESSIONS_PER_CLIENT: usize = 50;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A valid-looking Nano address for index `i` (the checksum is not checked by anyone).
fn account(i: usize) -> String {
    const ALPHABET: &[u8] = b"13456789abcdefghijkmnopqrstuwxyz";
    let mut digits = vec![b'1'; 52];
    let mut n = i;
    for d in digits.iter_mut().rev().take(12) {
        *d = ALPHABET[n % 32];
        n /= 32;
    }
    format!("nano_{}11111111", String::from_utf8_lossy(&digits))
}

/// Latency of the stamp in `text` (`message.bench_sent_ns`), if it has one.
fn stamp_age(text: &[u8]) -> Option<Duration> {
    let value: Value = serde_json::from_slice(text).ok()?;
    let sent: u128 = value["message"]["bench_sent_ns"].as_str()?.parse().ok()?;
    let now = now_ns();
    Some(Duration::from_nanos(now.saturating_sub(sent) as u64))
}

fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

/// A `nano-connect` process, killed on drop.
struct Proc {
    child: Child,
    listening: Value,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> anyhow::Result<Proc> {
    let bin =
        std::env::var("NANO_CONNECT_BIN").unwrap_or_else(|_| "target/release/nano-connect".into());
    let key = std::env::temp_dir().join(format!(
        "nano-connect-bench-{}-{}.key",
        std::process::id(),
        now_ns()
    ));
    let mut child = Command::new(&bin)
        .args(args)
        .env("NANO_CONNECT_KEY", &key)
        .env("NANO_CONNECT_NO_PUBLIC_DHT", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!("start {bin} (build it: cargo build --release --bin nano-connect)")
        })?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if v["event"] == "listening" => {
                return Ok(Proc {
                    child,
                    listening: v,
                })
            }
            Ok(_) => continue,
            Err(_) => bail!("{args:?} did not report listening within 20 s"),
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system) of `pid`.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat; after the name, they are the 12th and 13th.
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Mesh {
    stub: NanoWsStub,
    grapes: (Grape, Grape),
    worker: Proc,
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

impl Mesh {
    async fn start() -> anyhow::Result<Mesh> {
        let stub = NanoWsStub::start().await;
        let first = Grape::start(grape_config(vec![])).await?;
        let second = Grape::start(grape_config(vec![first.dht_addr().to_string()])).await?;
        let api = format!("http://{}", first.api_addr());
        let ws = stub.url();
        let worker = tokio::task::block_in_place(|| {
            start(&[
                "-q",
                "worker",
                "--service",
                "echo",
                "--announce",
                KEY,
                "--grape",
                &api,
                "--bind",
                "127.0.0.1",
                "--nano-ws",
                &ws,
                "--ws-max-subscribers",
                "100000",
                // Every subscriber here comes from 127.0.0.1: the per-IP cap (64) models
                // distinct users, not this bench.
                "--max-connections-per-ip",
                "100000",
                "--max-connections",
                "100000",
                "--ws-max-rate",
                "0",
                "--announce-interval",
                "60",
            ])
        })?;
        stub.wait_subscribers(1, Duration::from_secs(10)).await;
        let link = Link::with_cache_ttl(&format!("http://{}", second.api_addr()), Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(20);
        while link.lookup(KEY).await.unwrap_or_default().is_empty() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the worker's announce never became visible"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Mesh {
            stub,
            grapes: (first, second),
            worker,
        })
    }

    fn lookup_url(&self) -> String {
        format!("http://{}", self.grapes.1.api_addr())
    }

    fn client(&self) -> anyhow::Result<Arc<RpcClient>> {
        let link = Link::new(&self.lookup_url());
        Ok(Arc::new(RpcClient::new(
            Discovery::Directory(Directory::Grape(link)),
            RpcClientConfig::default(),
        )?))
    }

    fn worker_pid(&self) -> u32 {
        self.worker.child.id()
    }
}

async fn ws_client(
    url: &str,
    subscribe: &str,
) -> anyhow::Result<(
    impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>,
    impl SinkExt<Message>,
)> {
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut sink, stream) = ws.split();
    sink.send(Message::text(subscribe.to_string())).await?;
    Ok((stream, sink))
}

async fn latency(messages: usize) -> anyhow::Result<()> {
    let mesh = Mesh::start().await?;
    let lookup = mesh.lookup_url();
    let gateway = tokio::task::block_in_place(|| {
        start(&[
            "-q",
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--ws-listen",
            "127.0.0.1:0",
            "--grape",
            &lookup,
        ])
    })?;
    let followed = account(7);
    let subscribe = serde_json::json!({
        "action": "subscribe", "topic": "confirmation", "ack": true, "id": "bench",
        "options": {"accounts": [followed]},
    })
    .to_string();
    let gateway_url = format!(
        "ws://{}",
        gateway.listening["ws"].as_str().context("ws address")?
    );
    let (mut through, _keep_gateway) = ws_client(&gateway_url, &subscribe).await?;
    // The ack first.
    let ack = tokio::time::timeout(Duration::from_secs(20), through.next()).await?;
    anyhow::ensure!(
        matches!(&ack, Some(Ok(Message::Text(t))) if t.contains("\"ack\"")),
        "no ack: {ack:?}"
    );
    let (direct, _keep_direct) = ws_client(&mesh.stub.url(), &subscribe).await?;
    mesh.stub.wait_subscribers(2, Duration::from_secs(10)).await;

    let warm = 200;
    let total = warm + messages;
    let samples: Arc<Mutex<(Vec<Duration>, Vec<Duration>)>> = Arc::default();
    let read = |mut stream: Box<
        dyn futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + Unpin
            + Send,
    >,
                which: usize| {
        let samples = samples.clone();
        tokio::spawn(async move {
            let mut seen = 0usize;
            while seen < total {
                let Ok(Some(Ok(message))) =
                    tokio::time::timeout(Duration::from_secs(10), stream.next()).await
                else {
                    break;
                };
                let Message::Text(text) = message else {
                    continue;
                };
                let Some(age) = stamp_age(text.as_bytes()) else {
                    continue;
                };
                seen += 1;
                if seen > warm {
                    let mut s = samples.lock().expect("lock");
                    if which == 0 {
                        s.0.push(age)
                    } else {
                        s.1.push(age)
                    }
                }
            }
            seen
        })
    };
    let direct_task = read(Box::new(direct), 0);
    let through_task = read(Box::new(through), 1);
    let texts: Vec<String> = (0..total)
        .map(|n| generated(n as u64 + 1, &followed, Some(0)))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for text in &texts {
        tick.tick().await;
        mesh.stub.emit(&stamped(text));
    }
    let direct_seen = direct_task.await?;
    let through_seen = through_task.await?;
    let (mut d, mut t) = std::mem::take(&mut *samples.lock().expect("lock"));
    let (dp50, dp99) = percentiles(&mut d);
    let (tp50, tp99) = percentiles(&mut t);
    println!(
        "{}",
        serde_json::json!({
            "messages": messages, "rate_per_s": 200,
            "received": {"direct": direct_seen, "gateway": through_seen},
            "direct_us": {"p50": dp50.round(), "p99": dp99.round()},
            "gateway_us": {"p50": tp50.round(), "p99": tp99.round()},
            "added_us": {"p50": (tp50 - dp50).round(), "p99": (tp99 - dp99).round()},
        })
    );
    drop(gateway);
    Ok(())
}

async fn fanout(sizes: &[usize], secs: u64, shared: bool) -> anyhow::Result<()> {
    let mesh = Mesh::start().await?;
    let pid = mesh.worker_pid();
    let rss_empty = rss_kib(pid);
    println!(
        "{}",
        serde_json::json!({"worker_rss_kib_before_subscribers": rss_empty, "mode": if shared {"shared"} else {"distinct"}, "rate_per_s": 100, "secs": secs})
    );
    for &n in sizes {
        let delivered = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let ages: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let mut tasks = Vec::new();
        let opened_at = Instant::now();
        let mut clients = Vec::new();
        for chunk in 0..n.div_ceil(SESSIONS_PER_CLIENT) {
            let client = mesh.client()?;
            clients.push(client.clone());
            let from = chunk * SESSIONS_PER_CLIENT;
            let to = (from + SESSIONS_PER_CLIENT).min(n);
            let mut opens = Vec::new();
            for i in from..to {
                let followed = if shared { account(0) } else { account(i + 1) };
                let client = client.clone();
                opens.push(async move {
                    Subscription::open(
                        client,
                        SubscriptionConfig::default(),
                        Filter::accounts(vec![followed]),
                    )
                    .await
                });
            }
            for subscription in futures::future::join_all(opens).await {
                let mut subscription = subscription.context("subscribe")?;
                let delivered = delivered.clone();
                let lost = lost.clone();
                let ages = ages.clone();
                tasks.push(tokio::spawn(async move {
                    while let Some(event) = subscription.next().await {
                        match event {
                            SubscriptionEvent::Confirmation(d) => {
                                delivered.fetch_add(1, Ordering::Relaxed);
                                if let Some(age) = stamp_age(&d.message) {
                                    if let Ok(mut a) = ages.lock() {
                                        if a.len() < 200_000 {
                                            a.push(age);
                                        }
                                    }
                                }
                            }
                            SubscriptionEvent::Lost { lost: l, .. } => {
                                lost.fetch_add(l, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                }));
            }
        }
        let opened = opened_at.elapsed();
        // Let the opening settle, then measure idle (heartbeats) and loaded.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_idle = rss_kib(pid);
        let idle_cpu0 = cpu_secs(pid);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle_cpu = (cpu_secs(pid) - idle_cpu0) / 3.0;
        let cpu0 = cpu_secs(pid);
        let started = Instant::now();
        let total = 100 * secs as usize;
        let texts: Vec<String> = (0..total)
            .map(|m| {
                let followed = if shared {
                    account(0)
                } else {
                    account(m % n + 1)
                };
                generated(1_000_000 * n as u64 + m as u64, &followed, Some(0))
            })
            .collect();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut peak = rss_idle;
        for (m, text) in texts.iter().enumerate() {
            tick.tick().await;
            mesh.stub.emit(&stamped(text));
            if m % 100 == 0 {
                peak = peak.max(rss_kib(pid));
            }
        }
        let expected = if shared {
            (total * n) as u64
        } else {
            total as u64
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while delivered.load(Ordering::Relaxed) + lost.load(Ordering::Relaxed) < expected
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = (cpu_secs(pid) - cpu0) / elapsed;
        let mut ages = std::mem::take(&mut *ages.lock().expect("lock"));
        let (p50, p99) = percentiles(&mut ages);
        println!(
            "{}",
            serde_json::json!({
                "subscribers": n,
                "connections": clients.len(),
                "open_ms": opened.as_millis() as u64,
                "expected": expected,
                "delivered": delivered.load(Ordering::Relaxed),
                "lost": lost.load(Ordering::Relaxed),
                "worker_cpu_pct_idle": (idle_cpu * 100.0 * 10.0).round() / 10.0,
                "worker_cpu_pct_loaded": (cpu * 100.0 * 10.0).round() / 10.0,
                "worker_rss_kib_idle": rss_idle,
                "worker_rss_kib_peak": peak,
                "delivery_us": {"p50": p50.round(), "p99": p99.round()},
            })
        );
        for task in tasks {
            task.abort();
        }
        for client in clients {
            client.close(Duration::from_millis(100)).await;
        }
        // The worker sees the sessions end.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    drop(mesh);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("latency") => {
            let messages = args.get(1).map(|m| m.parse()).transpose().context("MESSAGES")?.unwrap_or(2000);
            latency(messages).await
        }
        Some("fanout") => {
            let sizes: Vec<usize> = args
                .get(1)
                .map(|s| s.split(',').map(|n| n.trim().parse()).collect::<Result<_, _>>())
                .transpose()
                .context("N,N,...")?
                .unwrap_or_else(|| vec![100, 250, 500, 1000]);
            let secs = args.get(2).map(|s| s.parse()).transpose().context("SECS")?.unwrap_or(10);
            let shared = args.get(3).is_some_and(|m| m == "shared");
            fanout(&sizes, secs, shared).await
        }
        _ => bail!("usage: confirmations_bench latency [MESSAGES] | fanout [N,N,...] [SECS] [shared|distinct]"),
    }
}
