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

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use nano_connect::discovery::link::Link;
use nano_connect::fibonacci::{FibonacciService, FIBONACCI_KEY};
use nano_connect::worker::{RpcServer, RpcServerConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let grape = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:30001".into());

    // A worker is an RPC server with a handler for its key...
    let server = RpcServer::bind(
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        RpcServerConfig {
            keys: vec![FIBONACCI_KEY.into()],
            ..RpcServerConfig::default()
        },
        FibonacciService,
    )
    .await?;
    let port = server.local_addr().port();
    println!("fibonacci worker on udp/{port}, announcing {FIBONACCI_KEY:?} through {grape}");

    // ...and a link that keeps announcing the key.
    let cancel = CancellationToken::new();
    let announcer = Link::new(&grape).spawn_announcer(
        FIBONACCI_KEY.into(),
        port,
        Duration::from_secs(10),
        cancel.clone(),
        |result| {
            if let Err(e) = result {
                eprintln!("announce failed: {e}");
            }
        },
    );

    tokio::signal::ctrl_c().await?;
    cancel.cancel();
    announcer.await?;
    server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
