//! Chaos: workers and a grape killed (SIGKILL) and restarted at random while a load of
//! read-only requests runs through a gateway, and no request the user sent fails.
//!
//! # Topology
//!
//! ```text
//!   load (4 loops) ── HTTP ──▶ gateway ── own DHT node, --bootstrap A,B ──▶ grapes A, B
//!                                 │                                           ▲
//!                                 └── QUIC ──▶ workers 1, 2, 3 ── announce ───┘ (through B)
//!                                                  └──▶ one Nano node stand-in
//! ```
//!
//! Grape B is the one every worker announces through and the one that is killed; grape A
//! is never killed. The gateway looks workers up with a DHT node of its own that knows
//! both grapes, so it depends on no single grape: while B is down, A still holds the
//! announces B stored at it (mainline does not answer a lookup from its own storage, so
//! a gateway that looked up *through* B's or A's HTTP API alone would find nothing while B
//! is down). Workers and B restart on the ports and key files they had, as an operator's
//! service manager restarts them.
//!
//! # The schedule, and why the guarantee holds
//!
//! A seeded RNG (the seed is printed; `CHAOS_SEED=N` repeats it) picks, for about 16 s,
//! a victim (a worker, or grape B), kills it, waits 0.2–1.5 s, restarts it, and pauses
//! 1–2.5 s before the next one: one process down at a time. The first worker killed is
//! the one that answered last, so that requests are in flight on it; the others are
//! picked at random.
//!
//! A killed worker leaves its QUIC connection open on the gateway's side: nothing closes
//! it, and the restarted process cannot reset it (a stateless reset needs the old
//! process's reset key, RFC 9000 §10.3), so the gateway only learns of the death from
//! an attempt timing out, or from the 30 s idle timeout. Until then requests may try the
//! dead connection first and fail over. A request is tried on at most three workers; if
//! all three had been killed within 30 s, one could meet three dead connections and
//! fail, with every worker alive again. The schedule therefore never kills a worker
//! when that would leave no worker unkilled for the last [`TAINTED`]: some worker the
//! gateway can reach is always alive, which is what failover promises. Within that, no
//! request may fail, and the gateway's failover counter must have counted the requests
//! that went elsewhere after a kill.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nano_connect::nano::Policy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::mesh::{self, poll, Process};
use support::nano_stub::{fixtures, Mode, NanoStub};
use support::scratch;

/// Announce window of the grapes, s: the default, which the gateway's own DHT node uses
/// too (a node with another window looks up other slot infohashes and finds nothing).
const WINDOW: &str = "256";
/// Seconds between a worker's announces (±50 %): a restarted grape B hears from every
/// worker again within this.
const ANNOUNCE_INTERVAL: &str = "5";
/// How long the kills go on.
const CHAOS: Duration = Duration::from_secs(16);
/// Steps of the schedule at most (each takes over a second).
const MAX_STEPS: usize = 32;
/// How long a killed worker's old connection may still be tried by the gateway: QUIC's
/// idle timeout (30 s) and a margin.
const TAINTED: Duration = Duration::from_secs(31);
/// Concurrent request loops.
const LOOPS: usize = 4;
/// The gateway's deadline per request, ms: room to try two dead connections first.
const GATEWAY_TIMEOUT_MS: &str = "15000";

/// One process the schedule may kill, with what restarts it.
struct Slot {
    name: String,
    args: Vec<String>,
    process: Option<Process>,
    killed: Option<Instant>,
}

impl Slot {
    fn start(name: &str, args: Vec<String>) -> Slot {
        let process = start(&args);
        Slot {
            name: name.to_string(),
            args,
            process: Some(process),
            killed: None,
        }
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        self.killed = Some(Instant::now());
    }

    fn restart(&mut self) {
        self.process = Some(start(&self.args));
    }

    fn field(&self, name: &str) -> String {
        self.process
            .as_ref()
            .map_or_else(String::new, |p| p.field(name))
    }

    /// Killed within [`TAINTED`].
    fn tainted(&self) -> bool {
        self.killed.is_some_and(|at| at.elapsed() < TAINTED)
    }
}

fn start(args: &[String]) -> Process {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tokio::task::block_in_place(|| Process::start(&args))
}

/// A port on 127.0.0.1 that was free a moment ago (UDP and TCP), for a process that
/// must come back on the same one.
fn free_port() -> u16 {
    for _ in 0..64 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        let port = udp.local_addr().expect("local address").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// What the request loops saw.
#[derive(Default)]
struct Tally {
    answered: u64,
    failures: Vec<String>,
    slowest: Duration,
    /// The node id of the worker that answered last.
    last_worker: Option<String>,
}

/// Read-only requests the stand-in answers from a fixture and the policy passes
/// unchanged, with the body each must come back with.
fn read_only_requests() -> Vec<(Vec<u8>, String)> {
    let policy = Policy::read_only();
    fixtures()
        .into_iter()
        .filter(|f| f.status == 200)
        .filter_map(|f| {
            let body = serde_json::to_vec(&f.request).ok()?;
            let checked = policy.check(&body).ok()?;
            (checked.body().as_ref() == body.as_slice()).then_some((body, f.body))
        })
        .take(8)
        .collect()
}

async fn load(
    url: String,
    requests: Arc<Vec<(Vec<u8>, String)>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    offset: usize,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    for i in 0..1_000_000usize {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (body, expected) = &requests[(i + offset) % requests.len()];
        let started = Instant::now();
        let outcome = match http.post(&url).body(body.clone()).send().await {
            Ok(response) => {
                let status = response.status();
                let error = response
                    .headers()
                    .get("x-nano-connect-error")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let worker = response
                    .headers()
                    .get("x-nano-connect-worker")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let text = response.text().await.unwrap_or_default();
                if status == 200 && error.is_none() && &text == expected {
                    Ok(worker)
                } else {
                    Err(format!("HTTP {status}, error {error:?}: {text}"))
                }
            }
            Err(e) => Err(format!("no answer: {e}")),
        };
        let took = started.elapsed();
        let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
        tally.slowest = tally.slowest.max(took);
        match outcome {
            Ok(worker) => {
                tally.answered += 1;
                tally.last_worker = worker.or(tally.last_worker.take());
            }
            Err(e) => tally.failures.push(format!(
                "{} after {} ms: {e}",
                String::from_utf8_lossy(body),
                took.as_millis()
            )),
        }
    }
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_read_fails_while_workers_and_a_grape_are_killed_and_restarted() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("chaos seed {seed} (CHAOS_SEED={seed} repeats this schedule)");
    let mut rng = StdRng::seed_from_u64(seed);

    let stub = NanoStub::start(Mode::RsNano).await;
    let requests = Arc::new(read_only_requests());
    assert!(
        requests.len() >= 3,
        "read-only fixtures: {}",
        requests.len()
    );

    let grape_a = tokio::task::block_in_place(|| mesh::grape(None, 256.0));
    let (b_dp, b_api) = (free_port(), free_port());
    let b_url = format!("http://127.0.0.1:{b_api}");
    let mut slots = vec![Slot::start(
        "grape B",
        [
            "grape",
            "--dp",
            &b_dp.to_string(),
            "--aph",
            &b_api.to_string(),
            "--bind",
            "127.0.0.1",
            "--bn",
            &grape_a.dht,
            "--announce-window",
            WINDOW,
            "--no-broker",
        ]
        .map(str::to_string)
        .to_vec(),
    )];
    let mut ports = Vec::new();
    for i in 1..=3 {
        let port = free_port();
        ports.push(port);
        let key = scratch::path("chaos-worker.key");
        let args = [
            "worker",
            "--announce",
            "nano_rpc",
            "--grape",
            &b_url,
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--key",
            &key.display().to_string(),
            "--public",
            "--nano-rpc",
            &stub.url(),
            "--announce-interval",
            ANNOUNCE_INTERVAL,
        ]
        .map(str::to_string)
        .to_vec();
        slots.push(Slot::start(&format!("worker {i}"), args));
    }
    let nodes: Vec<String> = slots[1..].iter().map(|s| s.field("node_id")).collect();
    mesh::wait_announced(&b_url, "nano_rpc", &ports).await;

    let gateway = start(
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--bootstrap",
            &format!("{},127.0.0.1:{b_dp}", grape_a.dht),
            "--metrics",
            "127.0.0.1:0",
            "--timeout",
            GATEWAY_TIMEOUT_MS,
        ]
        .map(str::to_string),
    );
    let url = format!("http://{}/", gateway.field("addr"));
    let metrics_url = format!("http://{}/metrics", gateway.field("metrics"));
    let http = reqwest::Client::new();
    poll(Duration::from_secs(20), "the gateway answers", || {
        let (http, url, body) = (&http, &url, requests[0].0.clone());
        async move {
            let response = http.post(url).body(body).send().await.ok()?;
            let answered = response.headers().get("x-nano-connect-error").is_none();
            answered.then_some(())
        }
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let loops: Vec<_> = (0..LOOPS)
        .map(|i| {
            tokio::spawn(load(
                url.clone(),
                requests.clone(),
                stop.clone(),
                tally.clone(),
                i,
            ))
        })
        .collect();

    let began = Instant::now();
    let mut kills: Vec<String> = Vec::new();
    let mut first_worker_kill = true;
    for _ in 0..MAX_STEPS {
        if began.elapsed() >= CHAOS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..2500))).await;
        // Workers whose kill leaves some worker unkilled for the last TAINTED.
        let killable: Vec<usize> = (1..slots.len())
            .filter(|&i| (1..slots.len()).any(|j| j != i && !slots[j].tainted()))
            .collect();
        let victim = if killable.is_empty() || rng.random_bool(0.25) {
            0
        } else if first_worker_kill {
            first_worker_kill = false;
            let last = tally.lock().map_or(None, |t| t.last_worker.clone());
            last.and_then(|node| nodes.iter().position(|n| *n == node))
                .map(|i| i + 1)
                .filter(|i| killable.contains(i))
                .unwrap_or(killable[0])
        } else {
            killable[rng.random_range(0..killable.len())]
        };
        let down = Duration::from_millis(rng.random_range(200..1500));
        let at = began.elapsed();
        slots[victim].kill();
        tokio::time::sleep(down).await;
        slots[victim].restart();
        kills.push(format!(
            "{} at {:.1} s, down {} ms",
            slots[victim].name,
            at.as_secs_f64(),
            down.as_millis()
        ));
    }
    stop.store(true, Ordering::Relaxed);
    for task in loops {
        task.await.expect("a load loop");
    }
    let metrics = http
        .get(&metrics_url)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let failovers = metric(&metrics, "nano_connect_gateway_failovers_total").unwrap_or(0.0);
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    eprintln!(
        "chaos seed {seed}: {} requests answered, {} failed, slowest {} ms, {failovers} \
         failovers counted by the gateway; kills: {}",
        tally.answered,
        tally.failures.len(),
        tally.slowest.as_millis(),
        kills.join("; ")
    );
    assert!(
        tally.failures.is_empty(),
        "seed {seed}: {} of {} requests failed:\n{}",
        tally.failures.len(),
        tally.answered as usize + tally.failures.len(),
        tally.failures.join("\n")
    );
    assert!(kills.len() >= 4, "seed {seed}: only {} kills", kills.len());
    assert!(
        kills.iter().any(|k| k.starts_with("worker")),
        "seed {seed}: no worker was killed"
    );
    assert!(
        tally.answered >= 100,
        "seed {seed}: {} answered",
        tally.answered
    );
    assert!(
        failovers >= 1.0,
        "seed {seed}: the gateway counted no failover:\n{metrics}"
    );
    let answered = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("nano_connect_gateway_requests_total{outcome=\"answered\"} ")
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    assert!(
        answered >= tally.answered as f64,
        "seed {seed}: the gateway counted {answered} answers, the loops {}",
        tally.answered
    );
    drop(slots);
    drop(gateway);
    stub.shutdown().await;
}
