//! `nano-connect bench`: a load generator for a live mesh.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use nano_connect::bench::{self, LoadConfig, LoadReport, Target};
use nano_connect::echo::{self, ECHO_KEY};

use super::route::RouteArgs;

/// Measure a mesh: keep N requests in flight and report requests/s and latency.
///
///   nano-connect bench --grape http://127.0.0.1:30001 --service echo -c 64 -n 100000
///   nano-connect bench --worker-addr 127.0.0.1:4433 -c 1 --answer 65536
///   nano-connect bench --service nano_rpc --body '{"action":"block_count"}' -c 64
///   nano-connect bench --http http://127.0.0.1:7076 --body '{"action":"block_count"}'
///   nano-connect bench --worker-addr 127.0.0.1:4433 --idle-connections 2000 --hold 30
///
/// The target is a service key found as `call` finds it (--grape, --broker or an own DHT
/// node: the same route), one worker (--worker-addr, no lookup), or a plain HTTP
/// endpoint taking POSTs (--http, for comparing with the node itself). By default the body is a sized request for the echo service
/// (`nano-connect worker --service echo`): --payload bytes that ask for an answer of
/// --answer bytes; --body sends fixed bytes instead (for fibonacci or nano_rpc).
///
/// A run stops after --requests requests or --duration seconds, whichever comes first;
/// --rate paces it (for a soak at a fixed load, benches/soak.sh).
/// Prints requests/s, latency percentiles, errors and a SUMMARY line; --json prints one
/// JSON object instead. Exit code 0 when every request was answered, 1 otherwise.
///
/// With --idle-connections N it opens N QUIC connections to --worker, prints
/// {"event":"idle_open",...}, holds them for --hold seconds (or until Ctrl-C), and closes
/// them: for measuring the worker's memory per connection.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct BenchArgs {
    #[command(flatten)]
    route: RouteArgs,
    /// Service key to ask for.
    #[arg(long, default_value = ECHO_KEY, value_name = "KEY")]
    service: String,
    /// Send to the worker at this address directly (no lookup).
    #[arg(
        long = "worker-addr",
        alias = "worker",
        value_name = "IP:PORT",
        conflicts_with = "http"
    )]
    worker: Option<SocketAddr>,
    /// POST to this HTTP URL instead of the mesh (baseline).
    #[arg(long, value_name = "URL")]
    http: Option<String>,
    /// Requests in flight at once.
    #[arg(short = 'c', long, default_value_t = 1, value_name = "N")]
    concurrency: usize,
    /// QUIC connections the requests in flight are spread over.
    #[arg(long, default_value_t = 1, value_name = "N")]
    connections: usize,
    /// Most requests to send (warm-up not counted).
    #[arg(short = 'n', long, default_value_t = 100_000, value_name = "N")]
    requests: u64,
    /// Most seconds to send for.
    #[arg(short = 'd', long, default_value_t = 10.0, value_name = "SECS")]
    duration: f64,
    /// Requests per second to start, in all, on a fixed schedule (at most -c in flight);
    /// without it, each of the -c in flight starts the next request as soon as the last
    /// one is answered.
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
    /// Request size in bytes of the echo service's sized request (at least 8).
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    payload: usize,
    /// Answer size in bytes the sized request asks the echo service for.
    #[arg(long, default_value_t = 200, value_name = "BYTES")]
    answer: u32,
    /// Send these bytes as the body instead of a sized echo request.
    #[arg(long, value_name = "TEXT")]
    body: Option<String>,
    /// Requests per connection before measuring (handshake, lookup); not counted.
    #[arg(long, default_value_t = 10, value_name = "N")]
    warmup: u64,
    /// Milliseconds allowed for one request.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    timeout: u64,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
    /// Open N idle connections to --worker instead of sending load.
    #[arg(long, value_name = "N", requires = "worker")]
    idle_connections: Option<usize>,
    /// Seconds to hold the idle connections open.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    hold: f64,
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds"))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<bool> {
    let timeout = Duration::from_millis(args.timeout.max(1));
    if let Some(count) = args.idle_connections {
        let hold = seconds(args.hold, "--hold")?;
        let addr = args.worker.context("--idle-connections needs --worker")?;
        let idle = bench::open_idle(addr, count, 32, timeout)
            .await
            .context("cannot open the idle connections")?;
        super::emit(serde_json::json!({
            "event": "idle_open",
            "connections": idle.len(),
            "worker": addr.to_string(),
        }));
        tokio::select! {
            _ = tokio::time::sleep(hold) => {},
            _ = super::shutdown_signal() => {},
        }
        let open = idle.len();
        idle.close(Duration::from_secs(1)).await;
        super::emit(serde_json::json!({"event": "idle_closed", "connections": open}));
        return Ok(open == count);
    }

    let target = match (&args.http, args.worker) {
        (Some(url), _) => Target::Http { url: url.clone() },
        (None, Some(addr)) => Target::Worker {
            addr,
            key: args.service.clone(),
        },
        (None, None) => Target::Key {
            discovery: args.route.discovery().await?,
            key: args.service.clone(),
        },
    };
    let body = match &args.body {
        Some(text) => text.clone().into_bytes(),
        None => echo::sized_request(args.payload, args.answer),
    };
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number of requests per second"
        );
    }
    let config = LoadConfig {
        concurrency: args.concurrency.max(1),
        connections: args.connections.max(1),
        requests: args.requests,
        duration: seconds(args.duration, "--duration")?,
        warmup: args.warmup,
        body,
        timeout,
        rate: args.rate,
    };
    let report = bench::run_load(target.clone(), config)
        .await
        .context("benchmark did not run")?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["target"] = serde_json::Value::String(describe(&target));
        println!("{value}");
    } else {
        print_report(&target, &report);
    }
    Ok(report.errors == 0)
}

fn describe(target: &Target) -> String {
    match target {
        Target::Key { key, .. } => format!("{key} through the mesh"),
        Target::Worker { addr, key } => format!("{key} at {addr}"),
        Target::Http { url } => format!("POST {url}"),
    }
}

fn print_report(target: &Target, r: &LoadReport) {
    let l = &r.latency;
    println!(
        "{}: {} requests of {} B, {} in flight on {} connection(s), {:.2} s",
        describe(target),
        r.ok + r.errors,
        r.request_bytes,
        r.concurrency,
        r.connections,
        r.elapsed_s
    );
    println!("  requests/s   {:.0}", r.requests_per_s);
    println!(
        "  latency µs   mean {:.0}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        l.mean_us, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
    );
    println!(
        "  answers      {} ({} B each on average)",
        r.ok,
        r.answer_bytes.checked_div(r.ok).unwrap_or(0)
    );
    let kinds = r
        .error_kinds
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    println!("  errors       {} {}", r.errors, kinds);
    println!(
        "SUMMARY ok={} errors={} rps={:.0} p50_us={} p99_us={} p999_us={}",
        r.ok, r.errors, r.requests_per_s, l.p50_us, l.p99_us, l.p999_us
    );
}
