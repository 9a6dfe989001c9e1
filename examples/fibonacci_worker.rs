//! The Grenache tutorial's fibonacci worker, on nano-connect's library.
//!
//! Start two grapes first (see README.md), then:
//!
//! ```text
//! cargo run --example fibonacci_worker -- http://127.0.0.1:30001
//! ```
//!
//! It serves `fibonacci_worker` on a QUIC port and announces it through the grape every
//! 10 s (±50 % jitter) until Ctrl-C.

use std::time::Duration;

use nano_connect::discovery::link::Link;
use nano_connect::discovery::Directory;
use nano_connect::fibonacci::{FibonacciService, FIBONACCI_KEY};
use nano_connect::worker::WorkerBuilder;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let grape = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:30001".into());

    // A worker is a handler for its key, made by the one builder every worker uses: it
    // checks its NAT with the brokers it finds through the grape, then announces itself
    // (or registers with brokers) and publishes its signed record every interval.
    let worker = WorkerBuilder::new(FIBONACCI_KEY)
        .directory(Directory::Grape(Link::new(&grape)))
        .presence(|p| p.announce_interval = Duration::from_secs(10))
        .spawn(FibonacciService)
        .await?;
    println!(
        "fibonacci worker {} on udp/{}, announcing {FIBONACCI_KEY:?} through {grape}",
        worker.node_id(),
        worker.local_addr().port()
    );
    tokio::signal::ctrl_c().await?;
    worker.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
