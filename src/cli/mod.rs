//! Command-line front: one file per subcommand; each converts its flags into library
//! configs once and runs.

mod bench;
mod call;
mod demo;
mod gateway;
mod grape;
mod netcheck;
mod route;
mod watch;
mod worker;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Exit codes, shared by the subcommands and listed in `call --help` (the library's one
/// table, so that every face agrees).
pub use nano_connect::route::error::exit;

/// nano-connect: Nano node RPC over a Grenache-style mesh of grapes and workers.
///
/// Grapes form a BitTorrent mainline DHT; workers run next to a Nano node and announce a
/// service key; clients look the key up and send RPC frames over QUIC.
#[derive(Debug, Parser)]
#[command(name = "nano-connect", version, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace; for call and demo, -v adds their
    /// own detail lines and -vv debug logs). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// tokio runtime: `multi` (a thread per core) or `current` (one thread: fewer
    /// cross-thread wake-ups, so lower latency and less CPU per request, but one core).
    /// Default: `current` for worker, call, bench, watch and netcheck, where it measured
    /// faster (a worker and bench client both on `current` relayed 2.1x the requests per
    /// second of both on `multi` at 64 in flight on 2 cores, and at a lower p50 and p99;
    /// see docs/benchmarks.md); `multi` for grape, gateway and demo, which serve many
    /// independent clients or run a whole mesh in one process.
    #[arg(long, global = true, value_enum, env = "NANO_CONNECT_RUNTIME")]
    pub runtime: Option<Runtime>,
    #[command(subcommand)]
    command: Command,
}

/// The tokio runtime flavour a command runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// tokio's multi-threaded runtime, one worker thread per core.
    Multi,
    /// tokio's single-threaded runtime.
    Current,
}

#[derive(Debug, Subcommand)]
enum Command {
    Grape(grape::GrapeArgs),
    Worker(worker::WorkerArgs),
    Call(call::CallArgs),
    Demo(demo::DemoArgs),
    Gateway(gateway::GatewayArgs),
    Netcheck(netcheck::NetcheckArgs),
    Bench(bench::BenchArgs),
    Watch(watch::WatchArgs),
}

impl Cli {
    /// The runtime flavour to start: `--runtime` (or `NANO_CONNECT_RUNTIME`) if given,
    /// else the subcommand's default (see the `runtime` field).
    pub fn runtime(&self) -> Runtime {
        self.runtime.unwrap_or(match self.command {
            Command::Grape(_) | Command::Gateway(_) | Command::Demo(_) => Runtime::Multi,
            Command::Worker(_)
            | Command::Call(_)
            | Command::Bench(_)
            | Command::Watch(_)
            | Command::Netcheck(_) => Runtime::Current,
        })
    }

    /// Whether the subcommand prints its own report on stdout, so that routine logs
    /// would only clutter it.
    pub fn reports_itself(&self) -> bool {
        matches!(
            self.command,
            Command::Demo(_)
                | Command::Call(_)
                | Command::Netcheck(_)
                | Command::Bench(_)
                | Command::Watch(_)
        )
    }
}

/// Sets up `tracing` on stderr: `RUST_LOG` if set, else by `-v`/`-q`; `terse` drops
/// routine info lines at the default level.
pub fn init_logging(verbose: u8, quiet: bool, terse: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        // -v is the report's own detail for commands that report on stdout; -vv logs.
        (false, 0 | 1) if terse => "warn",
        (false, 2) if terse => "info,nano_connect=debug,grape=debug",
        (false, 0) => "warn,nano_connect=info,grape=info",
        (false, 1) => "info,nano_connect=debug,grape=debug",
        (false, _) => "debug,nano_connect=trace,grape=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Runs the chosen subcommand and returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Grape(args) => grape::run(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::Call(args) => return call::run(args, cli.verbose).await,
        Command::Watch(args) => return watch::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Gateway(args) => gateway::run(args).await,
        Command::Netcheck(args) => netcheck::run(args).await,
        Command::Bench(args) => match bench::run(args).await {
            Ok(true) => Ok(()),
            Ok(false) => return exit::FAILURE,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("nano-connect: {}", chain(&e));
            exit::FAILURE
        }
    }
}

/// The error and its causes on one line.
pub fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// Resolves when the user presses Ctrl-C or the process gets SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Serves `exposition` at `http://LISTEN/metrics` until `stop` fires, and returns the
/// bound address as text (for the `listening` event).
///
/// Errors: the address cannot be bound, with a message naming `--metrics`.
pub async fn serve_metrics(
    listen: std::net::SocketAddr,
    exposition: nano_connect::metrics::Exposition,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<String> {
    use anyhow::Context;
    let (bound, _task) =
        nano_connect::metrics::serve(listen, exposition, async move { stop.cancelled().await })
            .await
            .with_context(|| format!("cannot serve metrics on {listen} (--metrics)"))?;
    tracing::info!(addr = %bound, "metrics at /metrics");
    Ok(bound.to_string())
}

/// Set (to anything) to forbid joining the public mainline DHT: a process that would
/// (no `--grape`, `--broker` or `--bootstrap`) fails instead. The tests set it, so that
/// no test ever contacts the public bootstrap routers.
pub const NO_PUBLIC_DHT_ENV: &str = "NANO_CONNECT_NO_PUBLIC_DHT";

/// This process's own DHT node (client mode), bootstrapped from `bootstrap` (`None`: the
/// public mainline routers, unless [`NO_PUBLIC_DHT_ENV`] forbids it).
///
/// Errors: the public DHT is forbidden, a bootstrap node does not resolve, no UDP port.
pub async fn embedded_directory(
    bootstrap: Option<Vec<String>>,
) -> anyhow::Result<nano_connect::discovery::Directory> {
    use anyhow::Context;
    if bootstrap.is_none() {
        anyhow::ensure!(
            std::env::var_os(NO_PUBLIC_DHT_ENV).is_none(),
            "no --grape, --broker or --bootstrap, and {NO_PUBLIC_DHT_ENV} forbids joining the public DHT"
        );
        tracing::info!("no --grape, --broker or --bootstrap: joining the public mainline DHT");
    }
    nano_connect::discovery::Directory::embedded(bootstrap)
        .await
        .context("cannot start this process's DHT node (--bootstrap)")
}

/// Prints one machine-readable event line on stdout (for scripts and tests).
pub fn emit(event: serde_json::Value) {
    println!("{event}");
}

/// Prints one machine-readable event line on stderr (for commands whose stdout is their
/// output, such as `watch`).
pub fn emit_err(event: serde_json::Value) {
    eprintln!("{event}");
}
