//! The mesh's announces and lookups on a simulated mainline DHT (issue 13): N DHT nodes,
//! W workers announcing one service key, C clients looking it up, with churn, all real
//! mainline 8.0.1 nodes on loopback in this process. `docs/scaling.md` has the figures
//! and what they mean.
//!
//! ```text
//! cargo build --release --example dht_sim
//! target/release/examples/dht_sim --matrix            # the table of docs/scaling.md
//! target/release/examples/dht_sim --nodes 1000 --workers 100 --churn 0.2
//! ```
//!
//! Run it as root: the run moves itself into a network namespace of its own (only a
//! loopback, no route out), so the kernel's UDP and interface counters measure its DHT
//! traffic alone, and no node can reach the public DHT. `--no-netns` runs on the host's
//! loopback instead (counters then include other traffic).
//!
//! # Phases of one scenario
//!
//! 1. **setup**: N server-mode DHT nodes, each on its own address in its own /6 with a
//!    BEP 42 id; their routing tables are filled as after hours on the public DHT (see
//!    `seed.rs`), then each runs one `find_node` of its own id; 10 more join the normal
//!    way (bootstrap nodes, a `find_node` of their own id): the cost of a node's start.
//! 2. **peers**: W worker nodes and C client nodes (client mode, one OS thread each),
//!    each given its closest DHT nodes and random others.
//! 3. **idle**: 5 s of nothing, the background rate subtracted from the phases below.
//! 4. **announce**: every worker announces once: cost per announce.
//! 5. **lookup**: each client looks up 3 times, 1.5 s apart: cost per lookup.
//! 6. **bep44**: up to `--bep44` workers put a signed mutable item (salt = key), then each
//!    client gets up to 10 of them: cost per put and per get.
//! 7. **steady**: workers re-announce every interval ±50 %, clients look up every
//!    `--lookup-interval` ±50 %, and with `--churn F` a share F of the workers and of the
//!    DHT nodes is replaced per announce window. Lookup quality, times, lingering dead
//!    workers and the load per DHT node are measured here.
//!
//! The cost phases come first: every mainline node pings its whole routing table 5 min
//! after it started, and that burst must not land in a phase whose cost is measured.
//!
//! Time runs `--time-scale` times faster than in production for the slot schedule and the
//! announce interval (default 8: window 256 s → 32 s, interval 120 s → 15 s); message
//! counts do not depend on it, and times reported "real" are scaled back.
//!
//! Bounded: at most 10,000 DHT nodes, 10,000 workers and 1,000 clients; each scenario
//! ends after `--max-seconds` (default 900) whatever happens; every loop has a count or a
//! deadline.

mod load;
mod net;
mod phase;
mod report;
mod seed;
mod stats;
mod swarm;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use futures::StreamExt;
use grape::defaults::{
    DEFAULT_ANNOUNCE_WINDOW, DEFAULT_LOOKUP_DEADLINE, DEFAULT_LOOKUP_SETTLE, DEFAULT_LOOKUP_WANT,
};
use grape::{GrapeDht, SlotSchedule};
use mainline::{Id, MutableItem, SigningKey};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use load::{Kind, Role, ROLES};
use net::Isolation;
use phase::{cost, Phase, PhaseResult};
use report::{node_load, per_op, print_report, run_matrix};
use stats::LookupStats;
use swarm::{lock, Book, Network, WorkerState};

/// The service key every worker announces.
pub(crate) const KEY: &str = "nano_rpc";

/// The production announce interval (grenache-nodejs-link's, ±50 % jitter).
pub(crate) const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(120);

/// Quiet time measured as the background rate.
const IDLE: Duration = Duration::from_secs(5);

/// Announces or lookups in flight at once in the cost phases.
const PHASE_CONCURRENCY: usize = 32;

/// Lookups per client in the lookup phase, and the pause between them (longer than a
/// query lasts on loopback, so that a lookup never joins the previous one's query).
const PROBE_LOOKUPS: usize = 3;
const PROBE_PAUSE: Duration = Duration::from_millis(1500);

/// DHT nodes that join the normal way after the others were seeded, to measure a join.
const JOINERS: usize = 10;

#[derive(Parser, Debug, Clone)]
#[command(about = "Simulates the mesh's announces and lookups on N mainline DHT nodes")]
pub(crate) struct Args {
    /// DHT nodes (server mode) standing in for the public DHT (1..=10000).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Workers announcing the key, one client-mode node each (1..=10000).
    #[arg(long, default_value_t = 10)]
    workers: usize,
    /// Clients looking the key up, one client-mode node each (1..=1000).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Share of the workers, and of the DHT nodes, replaced per announce window during
    /// the steady phase (0 = no churn; 0.2 = a fifth per window).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// How much faster than production the slot schedule and announce interval run.
    #[arg(long, default_value_t = 8)]
    time_scale: u32,
    /// Length of the steady phase in (scaled) announce windows.
    #[arg(long, default_value_t = 3.0)]
    windows: f64,
    /// Mean pause between a client's lookups in the steady phase, ms (±50 %).
    #[arg(long, default_value_t = 1000)]
    lookup_interval: u64,
    /// Distinct peers a lookup is content with (`GrapeDht::with_lookup_want`).
    #[arg(long, default_value_t = DEFAULT_LOOKUP_WANT)]
    lookup_want: usize,
    /// Workers that put a BEP 44 item in the bep44 phase (0 = skip the phase).
    #[arg(long, default_value_t = 20)]
    bep44: usize,
    /// Routing-table refresh rounds after the DHT nodes started (a find_node of the
    /// node's own id, then of random ids), so that nodes know their neighbourhood.
    #[arg(long, default_value_t = 1)]
    refresh_rounds: usize,
    /// Receive buffer to give every node's UDP socket, bytes (0 = leave mainline's, the
    /// kernel default of 208 KiB). Loopback delivers a lookup's ~100 answers within a
    /// millisecond, where the internet spreads them over round-trip times, and the
    /// default buffer then drops some; see docs/scaling.md.
    #[arg(long, default_value_t = 4 << 20)]
    rcvbuf: usize,
    /// Hard bound on one scenario, seconds.
    #[arg(long, default_value_t = 900)]
    max_seconds: u64,
    /// Run the table of docs/scaling.md: N = 100, 1000 × W = 10, 100, 1000 × churn 0 and
    /// `--matrix-churn`, one child process per scenario.
    #[arg(long)]
    matrix: bool,
    /// Churn of the churned half of the matrix.
    #[arg(long, default_value_t = 0.2)]
    matrix_churn: f64,
    /// Node counts of the matrix (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    matrix_nodes: Vec<usize>,
    /// Worker counts of the matrix (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    matrix_workers: Vec<usize>,
    /// Where the matrix appends one JSON line per scenario.
    #[arg(long, default_value = "target/dht_sim/results.jsonl")]
    out: PathBuf,
    /// Print the tables of the scenarios in a JSON-lines file (what `--matrix` wrote) and
    /// exit.
    #[arg(long, value_name = "FILE")]
    table: Option<PathBuf>,
    /// Print the scenario's result as one JSON line on stdout (what the matrix reads).
    #[arg(long)]
    json: bool,
    /// Stay on the host's loopback instead of a network namespace of its own.
    #[arg(long)]
    no_netns: bool,
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        if !(1..=10_000).contains(&self.nodes) {
            bail!("--nodes must be 1..=10000");
        }
        if !(1..=10_000).contains(&self.workers) {
            bail!("--workers must be 1..=10000");
        }
        if !(1..=1_000).contains(&self.clients) {
            bail!("--clients must be 1..=1000");
        }
        if !(0.0..=1.0).contains(&self.churn) {
            bail!("--churn must be 0..=1");
        }
        if !(1..=64).contains(&self.time_scale) {
            bail!("--time-scale must be 1..=64");
        }
        if !(0.1..=20.0).contains(&self.windows) {
            bail!("--windows must be 0.1..=20");
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.check()?;
    if let Some(path) = &args.table {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let rows = text
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(serde_json::from_str)
            .collect::<Result<Vec<Value>, _>>()
            .context("a line of the results")?;
        println!("{}", report::table(&rows));
        return Ok(());
    }
    if args.matrix {
        return run_matrix(&args);
    }
    // The namespace first, while this is the only thread.
    let isolation = if args.no_netns {
        Isolation::Shared
    } else {
        match net::enter_namespace() {
            Ok(()) => Isolation::Namespace,
            Err(e) => {
                eprintln!("dht_sim: {e}; running on the host's loopback (counters not isolated)");
                Isolation::Shared
            }
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(async {
        let bound = Duration::from_secs(args.max_seconds);
        match tokio::time::timeout(bound, scenario(&args, isolation)).await {
            Ok(result) => result,
            Err(_) => bail!(
                "the scenario did not end within --max-seconds {}",
                args.max_seconds
            ),
        }
    });
    // Dropping the runtime does not wait for mainline's threads; they stop on their own
    // once their handles are gone.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let report = result?;
    if args.json {
        println!("{report}");
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Progress for the periodic line on stderr.
#[derive(Default)]
struct Progress {
    announces: AtomicU64,
    announce_failures: AtomicU64,
    lookups: AtomicU64,
    worker_churn: AtomicU64,
    node_churn: AtomicU64,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn jittered(mean: Duration) -> Duration {
    mean.mul_f64(rand::random_range(0.5..1.5))
}

pub(crate) fn xor_distance(a: &Id, b: &[u8; 20]) -> [u8; 20] {
    let a = a.as_bytes();
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Sleeps for `d` or until `stop`; returns false when stopped.
async fn nap(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.cancelled() => false,
    }
}

/// One worker: announces at once, then every interval ±50 % until stopped.
#[allow(clippy::too_many_arguments)]
async fn worker_loop(
    grape: Arc<GrapeDht>,
    port: u16,
    interval: Duration,
    first_delay: Duration,
    book: Arc<Mutex<Book>>,
    progress: Arc<Progress>,
    stop: CancellationToken,
    end: Instant,
) {
    if !nap(first_delay, &stop).await {
        return;
    }
    // Bounded by `end` and by the number of intervals that fit before it.
    let most = (end.saturating_duration_since(Instant::now()).as_secs_f64()
        / (interval.as_secs_f64() * 0.5))
        .ceil() as usize
        + 1;
    for _ in 0..most {
        if stop.is_cancelled() || Instant::now() >= end {
            return;
        }
        let ok = grape.announce(KEY, port).await.is_ok();
        if ok {
            progress.announces.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            let mut book = lock(&book);
            let w = book.workers.entry(port).or_default();
            w.first_ok.get_or_insert(now);
            w.last_ok = Some(now);
        } else {
            progress.announce_failures.fetch_add(1, Ordering::Relaxed);
        }
        if !nap(jittered(interval), &stop).await {
            return;
        }
    }
}

/// The running workers by announced port: their stop token and their node.
type Running = Arc<Mutex<HashMap<u16, (CancellationToken, Arc<GrapeDht>)>>>;

/// Records of the steady phase's lookups: the stats and the unix times they ran at (for
/// the load on the slot infohashes).
#[derive(Default)]
pub(crate) struct LookupLog {
    pub(crate) stats: LookupStats,
    pub(crate) unix_starts: Vec<Duration>,
}

/// One lookup by `grape`, recorded into `log` against `book`.
async fn lookup_once(grape: &GrapeDht, book: &Mutex<Book>, log: &Mutex<LookupLog>) -> usize {
    let started = Instant::now();
    let unix = unix_now();
    let live = lock(book).live_visible(started);
    let report = grape
        .lookup_report(KEY, unix, DEFAULT_LOOKUP_DEADLINE)
        .await;
    let took = started.elapsed();
    let ports: Vec<u16> = report.peers.iter().map(|a| a.port()).collect();
    let now = Instant::now();
    let dead: Vec<(u16, f64)> = {
        let book = lock(book);
        ports
            .iter()
            .filter_map(|p| {
                let died = book.workers.get(p)?.died?;
                Some((*p, now.saturating_duration_since(died).as_secs_f64()))
            })
            .collect()
    };
    let mut log = lock(log);
    log.stats.record(&live, took, &ports, &dead);
    log.stats.slots_asked.push(report.slots_asked as f64);
    *log.stats
        .ends
        .entry(format!("{:?}", report.end))
        .or_default() += 1;
    log.unix_starts.push(unix);
    ports.len()
}

async fn scenario(args: &Args, isolation: Isolation) -> anyhow::Result<Value> {
    let scale = args.time_scale;
    let window = DEFAULT_ANNOUNCE_WINDOW / scale;
    let schedule = SlotSchedule::new(window).context("announce window")?;
    let interval = ANNOUNCE_INTERVAL / scale;
    let settle = DEFAULT_LOOKUP_SETTLE;
    let want = args.lookup_want;
    let network = Arc::new(Network::new(isolation == Isolation::Namespace));
    let run_started = Instant::now();
    eprintln!(
        "dht_sim: N={} W={} C={} churn={}/window, time x{} (window {:?}, interval {:?}), load {}",
        args.nodes,
        args.workers,
        args.clients,
        args.churn,
        scale,
        window,
        interval,
        loadavg()
    );

    // 1. setup
    let setup = Phase::start(&network);
    for i in 0..args.nodes {
        network.add_dht_node().await?;
        if (i + 1) % 250 == 0 || i + 1 == args.nodes {
            eprintln!("[setup] {}/{} DHT nodes started", i + 1, args.nodes);
        }
    }
    if args.rcvbuf > 0 {
        net::raise_rcvbuf(load::DHT_PORT_BASE..load::WORKER_PORT_BASE, args.rcvbuf);
    }
    network.seed_all().await;
    let handles = network.live_handles();
    // Refresh rounds: a find_node of the node's own id, as mainline does every 15 min;
    // the nodes it asks record it.
    for round in 0..args.refresh_rounds {
        futures::stream::iter(handles.iter().cloned())
            .map(|dht| async move {
                let id = *dht.info().await.id();
                dht.find_node(id).await.len()
            })
            .buffer_unordered(PHASE_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        eprintln!(
            "[setup] refresh round {}/{} done",
            round + 1,
            args.refresh_rounds
        );
    }
    // How well the network routes: for random targets, the share of the true 20 closest
    // nodes that a query from a random node ends at (a BEP 44 get, which unlike a
    // find_node does not make the nodes asked record anything).
    let mut routing_found = Vec::new();
    {
        let ids = network.live_ids();
        for dht in handles.iter().take(10) {
            let target = Id::random();
            let mut truth: Vec<&Id> = ids.iter().collect();
            truth.sort_by_key(|i| xor_distance(i, target.as_bytes()));
            let truth: BTreeSet<[u8; 20]> = truth.iter().take(20).map(|i| *i.as_bytes()).collect();
            let found = dht.get_closest_nodes(target).await;
            let hits = found
                .iter()
                .filter(|n| truth.contains(n.id().as_bytes()))
                .count();
            routing_found.push(hits as f64 / 20.0);
        }
    }
    let mut table_sizes = Vec::new();
    for dht in handles.iter().take(50) {
        table_sizes.push(dht.to_bootstrap().await.len() as f64);
    }
    drop(handles);
    let setup = setup.finish(&network);
    // Join: the last nodes join the normal way (bootstrap nodes, then a find_node of
    // their own id), which is what a node's start costs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let join = Phase::start(&network);
    let mut joined = Vec::new();
    for _ in 0..JOINERS {
        joined.push(network.add_joiner().await?);
    }
    if args.rcvbuf > 0 {
        net::raise_rcvbuf(load::DHT_PORT_BASE..load::WORKER_PORT_BASE, args.rcvbuf);
    }
    let joined_ok = futures::stream::iter(joined.iter().cloned())
        .map(|dht| async move { dht.bootstrapped().await })
        .buffer_unordered(JOINERS)
        .collect::<Vec<bool>>()
        .await;
    let join = join.finish(&network);
    let mut join_table = Vec::new();
    for dht in &joined {
        join_table.push(dht.to_bootstrap().await.len() as f64);
    }
    network.rescan_sockets();
    let rss_setup = rss_mib();
    eprintln!(
        "[setup] done in {:.1} s; routing table p50 {:?} nodes; a query ends at {:?} of the true 20 closest (p50); RSS {rss_setup:.0} MiB",
        setup.secs,
        stats::quantile(&table_sizes, 0.5),
        stats::quantile(&routing_found, 0.5)
    );

    // 2. workers and clients (introduced, see seed.rs; the cost of a real join is
    //    measured at the end)
    let mut workers: Vec<(u16, Arc<GrapeDht>)> = Vec::with_capacity(args.workers);
    for _ in 0..args.workers {
        let grape = network.add_peer(true, schedule, settle, want).await?;
        workers.push((grape.local_addr().port(), grape));
    }
    let mut clients: Vec<Arc<GrapeDht>> = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        clients.push(network.add_peer(false, schedule, settle, want).await?);
    }
    if args.rcvbuf > 0 {
        net::raise_rcvbuf(load::WORKER_PORT_BASE..load::CLIENT_PORT_END, args.rcvbuf);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!(
        "[peers] {} workers and {} clients",
        workers.len(),
        clients.len()
    );

    // 3. idle
    let idle = Phase::start(&network);
    tokio::time::sleep(IDLE).await;
    let idle = idle.finish(&network);

    // 4. announce
    let book = Arc::new(Mutex::new(Book::default()));
    let announce = Phase::start(&network);
    let announce_started_unix = unix_now();
    let results: Vec<(u16, Option<f64>)> = futures::stream::iter(workers.iter().cloned())
        .map(|(port, g)| async move {
            let t = Instant::now();
            let ok = g.announce(KEY, port).await.is_ok();
            (port, ok.then(|| t.elapsed().as_secs_f64() * 1e3))
        })
        .buffer_unordered(PHASE_CONCURRENCY)
        .collect()
        .await;
    let announce = announce.finish(&network);
    let announce_ms: Vec<f64> = results.iter().filter_map(|r| r.1).collect();
    {
        let now = Instant::now();
        let mut book = lock(&book);
        for (port, ok) in &results {
            let w = book.workers.entry(*port).or_default();
            if ok.is_some() {
                w.first_ok = Some(now);
                w.last_ok = Some(now);
            }
        }
    }
    let announced = announce_ms.len() as u64;
    // Which of the true 20 closest live nodes of the announce slot got the announce.
    let announce_target = schedule.announce_infohash(KEY, announce_started_unix);
    let reached = {
        let ever = network.ever();
        let live: BTreeSet<[u8; 20]> = network.live_ids().iter().map(|i| *i.as_bytes()).collect();
        let mut ranked: Vec<usize> = (0..ever.len())
            .filter(|i| live.contains(ever[*i].id.as_bytes()))
            .collect();
        ranked.sort_by_key(|i| xor_distance(&ever[*i].id, &announce_target));
        let top: Vec<usize> = ranked.into_iter().take(20).collect();
        let got = top
            .iter()
            .filter(|i| {
                announce.loads[**i]
                    .by_target
                    .get(&announce_target)
                    .is_some_and(|c| c[Kind::Announce as usize] > 0)
            })
            .count();
        got as f64 / top.len().max(1) as f64
    };
    let stored_nodes = announce
        .loads
        .iter()
        .filter(|l| l.by_kind_role[Kind::Announce as usize][Role::Worker as usize] > 0)
        .count();
    eprintln!(
        "[announce] {announced}/{} stored, p50 {:?} ms; the slot's 20 closest nodes reached: {:.0} %",
        workers.len(),
        stats::quantile(&announce_ms, 0.5),
        reached * 100.0
    );

    // 5. lookup (after one lookup per client that is not counted: a grape that serves a
    //    key looks it up again and again, and remembers how the last lookup went)
    let warmup = Arc::new(Mutex::new(LookupLog::default()));
    futures::stream::iter(clients.iter().cloned())
        .map(|g| {
            let (book, warmup) = (Arc::clone(&book), Arc::clone(&warmup));
            async move { lookup_once(&g, &book, &warmup).await }
        })
        .buffer_unordered(PHASE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    tokio::time::sleep(PROBE_PAUSE).await;
    let probe_log = Arc::new(Mutex::new(LookupLog::default()));
    let lookup = Phase::start(&network);
    let mut probes = tokio::task::JoinSet::new();
    for g in &clients {
        let (g, book, log) = (Arc::clone(g), Arc::clone(&book), Arc::clone(&probe_log));
        probes.spawn(async move {
            for i in 0..PROBE_LOOKUPS {
                if i > 0 {
                    tokio::time::sleep(PROBE_PAUSE).await;
                }
                lookup_once(&g, &book, &log).await;
            }
        });
    }
    while probes.join_next().await.is_some() {}
    let lookup = lookup.finish(&network);
    let probe_summary = lock(&probe_log).stats.summary();
    eprintln!(
        "[lookup] {} lookups: live share {} returned {} p50 {} ms",
        probe_summary["lookups"],
        probe_summary["live_share_mean"],
        probe_summary["returned_mean"],
        probe_summary["took_ms_p50"]
    );

    // 6. bep44 (before the steady phase, so that no cost phase meets mainline's routing
    //    table pings, which every node sends 5 min after it started)
    let bep44 = if args.bep44 > 0 {
        tokio::time::sleep(Duration::from_secs(2)).await; // let stray queries end
        let putters: Vec<Arc<GrapeDht>> = workers
            .iter()
            .map(|(_, g)| Arc::clone(g))
            .take(args.bep44)
            .collect();
        Some(bep44_phase(&network, &putters, &clients, &idle).await)
    } else {
        None
    };

    // 7. steady
    let steady_len = window.mul_f64(args.windows);
    let progress = Arc::new(Progress::default());
    let log = Arc::new(Mutex::new(LookupLog::default()));
    let stop = CancellationToken::new();
    let steady = Phase::start(&network);
    let cpu_before = cpu_seconds();
    let steady_start = Instant::now();
    let steady_unix = unix_now();
    let end = steady_start + steady_len;
    let mut tasks = tokio::task::JoinSet::new();
    let worker_stops: Running = Arc::new(Mutex::new(HashMap::new()));
    for (port, g) in workers.drain(..) {
        let token = stop.child_token();
        lock(&worker_stops).insert(port, (token.clone(), Arc::clone(&g)));
        tasks.spawn(worker_loop(
            g,
            port,
            interval,
            interval.mul_f64(rand::random_range(0.0..1.0)),
            Arc::clone(&book),
            Arc::clone(&progress),
            token,
            end,
        ));
    }
    for g in &clients {
        let g = Arc::clone(g);
        let (book, log, progress, stop) = (
            Arc::clone(&book),
            Arc::clone(&log),
            Arc::clone(&progress),
            stop.clone(),
        );
        let mean = Duration::from_millis(args.lookup_interval.max(1));
        tasks.spawn(async move {
            let most = (steady_len.as_secs_f64() / (mean.as_secs_f64() * 0.5)).ceil() as usize;
            for _ in 0..most {
                if !nap(jittered(mean), &stop).await || Instant::now() >= end {
                    return;
                }
                lookup_once(&g, &book, &log).await;
                progress.lookups.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let rcvbuf = args.rcvbuf;
    if args.churn > 0.0 {
        // Workers: one leaves and one joins every window / (churn × W).
        let every = window.div_f64(args.churn * args.workers as f64);
        let (net, book, progress_w, stop_w, worker_stops) = (
            Arc::clone(&network),
            Arc::clone(&book),
            Arc::clone(&progress),
            stop.clone(),
            Arc::clone(&worker_stops),
        );
        let most = (steady_len.as_secs_f64() / every.as_secs_f64()).ceil() as usize;
        tasks.spawn(async move {
            let mut joiners = tokio::task::JoinSet::new();
            for _ in 0..most {
                if !nap(every, &stop_w).await || Instant::now() >= end {
                    break;
                }
                // Leave: stop announcing and close the node.
                let leaving = {
                    let mut stops = lock(&worker_stops);
                    let ports: Vec<u16> = stops.keys().copied().collect();
                    (!ports.is_empty())
                        .then(|| ports[rand::random_range(0..ports.len())])
                        .and_then(|p| stops.remove(&p).map(|s| (p, s)))
                };
                if let Some((port, (token, _grape))) = leaving {
                    token.cancel();
                    lock(&book).workers.entry(port).or_default().died = Some(Instant::now());
                }
                // Join: a new worker node that announces at once.
                let Ok(g) = net.add_peer(true, schedule, settle, want).await else {
                    continue;
                };
                let port = g.local_addr().port();
                if rcvbuf > 0 {
                    net::raise_rcvbuf(port..port + 1, rcvbuf);
                }
                lock(&book).workers.insert(port, WorkerState::default());
                let token = stop_w.child_token();
                lock(&worker_stops).insert(port, (token.clone(), Arc::clone(&g)));
                joiners.spawn(worker_loop(
                    g,
                    port,
                    interval,
                    Duration::ZERO,
                    Arc::clone(&book),
                    Arc::clone(&progress_w),
                    token,
                    end,
                ));
                progress_w.worker_churn.fetch_add(1, Ordering::Relaxed);
            }
            while joiners.join_next().await.is_some() {}
        });
        // DHT nodes: one leaves and one joins every window / (churn × N).
        let every = window.div_f64(args.churn * args.nodes as f64);
        let (net, progress_n, stop_n) = (Arc::clone(&network), Arc::clone(&progress), stop.clone());
        let most = (steady_len.as_secs_f64() / every.as_secs_f64()).ceil() as usize;
        tasks.spawn(async move {
            for _ in 0..most {
                if !nap(every, &stop_n).await || Instant::now() >= end {
                    break;
                }
                net.remove_random_dht_node();
                if let Ok(port) = net.join_dht_node().await {
                    if rcvbuf > 0 {
                        net::raise_rcvbuf(port..port + 1, rcvbuf);
                    }
                    progress_n.node_churn.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Progress line every 5 s until the end.
    let ticks = (steady_len.as_secs_f64() / 5.0).ceil() as usize;
    for _ in 0..ticks {
        if !nap(
            Duration::from_secs(5).min(end.saturating_duration_since(Instant::now())),
            &stop,
        )
        .await
        {
            break;
        }
        let (alive, p50) = {
            let alive = lock(&book).alive();
            let log = lock(&log);
            let recent = &log.stats.took_ms[log.stats.took_ms.len().saturating_sub(200)..];
            (alive, stats::quantile(recent, 0.5))
        };
        eprintln!(
            "[steady {:>4.0}/{:.0} s] announces {} (failed {}), lookups {} (p50 {:.0} ms), workers alive {alive}, DHT nodes {}, churned {} workers {} nodes",
            steady_start.elapsed().as_secs_f64(),
            steady_len.as_secs_f64(),
            progress.announces.load(Ordering::Relaxed),
            progress.announce_failures.load(Ordering::Relaxed),
            progress.lookups.load(Ordering::Relaxed),
            p50.unwrap_or(0.0),
            network.live_count(),
            progress.worker_churn.load(Ordering::Relaxed),
            progress.node_churn.load(Ordering::Relaxed),
        );
        if Instant::now() >= end {
            break;
        }
    }
    stop.cancel();
    // In-flight announces end within the put timeout, lookups within their deadline.
    let drain = tokio::time::timeout(Duration::from_secs(20), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        tasks.abort_all();
    }
    let steady = steady.finish(&network);
    let mut drops = [0u64; ROLES];
    for (port, n) in net::socket_drops() {
        drops[Role::of_port(port) as usize] += n;
    }
    let steady_cpu = (cpu_seconds() - cpu_before) / steady.secs.max(1e-3);
    let announces_done = progress.announces.load(Ordering::Relaxed);
    let lookups_done = progress.lookups.load(Ordering::Relaxed);

    // Dead workers that never showed up after leaving.
    {
        let book = lock(&book);
        let mut log = lock(&log);
        let dead: Vec<u16> = book
            .workers
            .iter()
            .filter(|(_, w)| w.died.is_some())
            .map(|(p, _)| *p)
            .collect();
        log.stats.dead_gone = dead
            .iter()
            .filter(|p| !log.stats.linger_s.contains_key(p))
            .count() as u64;
    }

    // Load on the DHT nodes during the steady phase.
    let load_report = node_load(&network, &steady, &lock(&log), &schedule, steady_unix);

    let steady_summary = lock(&log).stats.summary();
    let report = json!({
        "scenario": {
            "nodes": args.nodes, "workers": args.workers, "clients": args.clients,
            "churn_per_window": args.churn, "time_scale": scale,
            "window_s": window.as_secs_f64(), "interval_s": interval.as_secs_f64(),
            "steady_s": steady_len.as_secs_f64(), "lookup_interval_ms": args.lookup_interval,
            "isolated": isolation == Isolation::Namespace,
            "lookup_settle_ms": settle.as_millis() as u64,
            "rcvbuf": args.rcvbuf,
            "lookup_want": want,
        },
        "machine": {
            "load_avg_end": loadavg(), "steady_cpu_cores": steady_cpu,
            "rss_mib_after_setup": rss_setup, "rss_mib_end": rss_mib(),
            "run_s": run_started.elapsed().as_secs_f64(),
        },
        "setup": {
            "secs": setup.secs, "routing_table_p50": stats::quantile(&table_sizes, 0.5),
            "query_true_closest_share_p50": stats::quantile(&routing_found, 0.5),
            "query_true_closest_share_min": stats::quantile(&routing_found, 0.0),
            "datagrams_per_node": setup.delta.datagrams as f64 / args.nodes as f64,
        },
        "join": {
            "cost": cost(&join, &idle, joined_ok.len() as u64, Role::Dht),
            "bootstrapped": joined_ok.iter().filter(|b| **b).count(),
            "routing_table_p50": stats::quantile(&join_table, 0.5),
        },
        "introductions": network.introductions.load(Ordering::Relaxed),
        "idle": {
            "secs": idle.secs,
            "datagrams_per_s": idle.delta.datagrams as f64 / idle.secs,
            "ip_bytes_per_s": idle.delta.ip_bytes as f64 / idle.secs,
        },
        "announce": {
            "cost": cost(&announce, &idle, announced, Role::Worker),
            "took_ms_p50": stats::quantile(&announce_ms, 0.5),
            "took_ms_p99": stats::quantile(&announce_ms, 0.99),
            "stored": announced, "tried": results.len(),
            "nodes_storing": stored_nodes,
            "closest20_reached": reached,
        },
        "lookup": {
            "cost": cost(&lookup, &idle, lock(&probe_log).stats.took_ms.len() as u64, Role::Client),
            "quality": probe_summary,
        },
        "steady": {
            "quality": steady_summary,
            "announces": announces_done,
            "announce_failures": progress.announce_failures.load(Ordering::Relaxed),
            "lookups": lookups_done,
            "worker_churn": progress.worker_churn.load(Ordering::Relaxed),
            "node_churn": progress.node_churn.load(Ordering::Relaxed),
            "datagrams": steady.delta.datagrams,
            "ip_bytes": steady.delta.ip_bytes,
            "rcvbuf_errors": steady.delta.rcvbuf_errors,
            "socket_drops_by_role_so_far": drops,
            "no_ports": steady.delta.no_ports,
            "worker_requests_per_announce": per_op(&steady.by_kind(Role::Worker), announces_done),
            "client_requests_per_lookup": per_op(&steady.by_kind(Role::Client), lookups_done),
            "load": load_report,
        },
        "bep44": bep44,
    });
    // Stop everything before returning (threads end within mainline's 50 ms poll).
    drop(clients);
    lock(&worker_stops).clear();
    network.shutdown();
    Ok(report)
}

/// Puts of one signed BEP 44 item per worker (salt = the key), then gets by clients.
async fn bep44_phase(
    network: &Network,
    workers: &[Arc<GrapeDht>],
    clients: &[Arc<GrapeDht>],
    idle: &PhaseResult,
) -> Value {
    let put = Phase::start(network);
    let mut keys = Vec::new();
    let outcomes: Vec<Option<u32>> = futures::stream::iter(workers.iter().cloned().map(|g| {
        let signer = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        keys.push(signer.verifying_key().to_bytes());
        (g, signer)
    }))
    .map(|(g, signer)| async move {
        // About the size of a worker record: addresses, broker, expiry, signature.
        let value: Vec<u8> = (0..160).map(|_| rand::random::<u8>()).collect();
        let item = MutableItem::new(signer, &value, 1, Some(KEY.as_bytes()));
        g.put_mutable(item, None).await.ok()
    })
    .buffer_unordered(8)
    .collect()
    .await;
    let put = put.finish(network);
    let stored: Vec<f64> = outcomes.iter().flatten().map(|n| f64::from(*n)).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let get = Phase::start(network);
    let per_client = keys.len().min(10);
    let found: Vec<bool> =
        futures::stream::iter(clients.iter().enumerate().flat_map(|(c, g)| {
            (0..per_client).map(move |j| (Arc::clone(g), (c + j) % per_client))
        }))
        .map(|(g, j)| {
            let k = keys[j];
            async move {
                g.get_mutable(&k, Some(KEY.as_bytes()), DEFAULT_LOOKUP_DEADLINE)
                    .await
                    .is_some()
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let get = get.finish(network);
    json!({
        "put": cost(&put, idle, stored.len() as u64, Role::Worker),
        "put_stored_at_mean": stats::quantile(&stored, 0.5),
        "get": cost(&get, idle, found.len() as u64, Role::Client),
        "get_found": found.iter().filter(|f| **f).count(),
        "gets": found.len(),
    })
}
