//! Grenache's "one side public" mode, the side behind the NAT: a fibonacci worker that
//! cannot be dialed looks up the consumers announced under `fibonacci_worker:consumer`
//! and punches toward each from its QUIC socket; a consumer dials the source of the punch
//! (its NAT opened by the punch), and the worker serves it. No broker is needed because
//! the consumer is public. Pair with `examples/rpc_server_public.rs`.
//!
//!     nano-connect grape --dp 20001 --aph 30001 --bn none
//!     nano-connect grape --dp 20002 --aph 30002 --bn 127.0.0.1:20001
//!     cargo run --example rpc_server_public -- http://127.0.0.1:30001
//!     cargo run --example rpc_server_behind_nat -- http://127.0.0.1:30002
//!
//! Without a broker there is no per-introduction nonce: punches carry a nonce derived
//! from the key (the first 16 bytes of its infohash), which only tells nano-connect
//! punches of this service from stray datagrams. Use the broker (`worker --broker`)
//! where peers must be authenticated by a fresh nonce.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nano_connect::discovery::link::Link;
use nano_connect::fibonacci::FibonacciService;
use nano_connect::protocol::broker::{encode_punch, Nonce, NONCE_LEN};
use nano_connect::transport::nat_socket::NatSocket;
use nano_connect::transport::{server_endpoint, QuicConfig};
use nano_connect::worker::{RpcServer, RpcServerConfig};

const KEY: &str = "fibonacci_worker";

/// The punch nonce of this mode: the first 16 bytes of the consumer key's infohash.
fn nonce() -> Nonce {
    let hash = nano_connect::grape::infohash(&format!("{KEY}:consumer"));
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&hash[..NONCE_LEN]);
    nonce
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let grape = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:30002".into());
    let (socket, mut diverted) = NatSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    let quinn_socket: Arc<dyn quinn::AsyncUdpSocket> = socket.clone();
    let endpoint = server_endpoint(
        quinn_socket,
        &QuicConfig::default(),
        &nano_connect::protocol::identity::NodeKey::generate(),
    )?;
    let server = RpcServer::serve(endpoint, RpcServerConfig::default(), FibonacciService);
    println!(
        "worker on {}, punching toward consumers of {KEY}",
        server.local_addr()
    );
    // Punches and echoes come back as diverted datagrams: nothing to do with them here.
    tokio::spawn(async move { while diverted.recv().await.is_some() {} });

    let link = Link::with_cache_ttl(&grape, Duration::ZERO);
    let punch = encode_punch(&nonce(), false);
    let mut seen = HashSet::new();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        match link.lookup(&format!("{KEY}:consumer")).await {
            Ok(consumers) => {
                for consumer in consumers {
                    if seen.insert(consumer) {
                        println!("punching toward consumer {consumer}");
                    }
                    // A few punches, in case the first is lost.
                    for _ in 0..3 {
                        let _ = socket.send_raw(&punch, consumer).await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            Err(e) => eprintln!("lookup failed: {e}"),
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    server.shutdown(Duration::from_millis(200)).await;
    Ok(())
}
