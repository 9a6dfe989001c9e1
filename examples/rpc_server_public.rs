//! Grenache's "one side public" mode, the public side: a consumer announces itself under
//! `fibonacci_worker:consumer` and waits for a worker behind a NAT to punch toward it;
//! it then dials the punch's source (the worker's NAT mapping, opened by the punch) and
//! asks for fibonacci(10). Pair with `examples/rpc_server_behind_nat.rs` (see there for
//! the commands and for what the punch nonce does and does not protect).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nano_connect::discovery::link::Link;
use nano_connect::protocol::broker::{decode, encode_punch, Datagram, NONCE_LEN};
use nano_connect::route::{RpcClient, RpcClientConfig};
use nano_connect::transport::nat_socket::NatSocket;
use nano_connect::transport::{client_endpoint, QuicConfig};
use tokio_util::sync::CancellationToken;

const KEY: &str = "fibonacci_worker";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let grape = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:30001".into());
    let hash = nano_connect::grape::infohash(&format!("{KEY}:consumer"));
    let nonce: [u8; NONCE_LEN] = hash[..NONCE_LEN].try_into()?;

    let (socket, mut diverted) = NatSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    let quinn_socket: Arc<dyn quinn::AsyncUdpSocket> = socket.clone();
    let endpoint = client_endpoint(quinn_socket, &QuicConfig::default())?;
    let port = endpoint.local_addr()?.port();
    let cancel = CancellationToken::new();
    let announcer = Link::new(&grape).spawn_announcer(
        format!("{KEY}:consumer"),
        port,
        Duration::from_secs(10),
        cancel.clone(),
        |result| {
            if let Err(e) = result {
                eprintln!("announce failed: {e}");
            }
        },
    );
    println!("consumer on port {port}, waiting for a worker's punch");

    let worker = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some((from, bytes)) = diverted.recv().await {
            if decode(&bytes) == Ok(Datagram::Punch(nonce)) {
                let _ = socket.send_raw(&encode_punch(&nonce, true), from).await;
                return Some(from);
            }
        }
        None
    })
    .await
    .context("no worker punched within 60 s")?
    .context("socket closed")?;
    println!("punch from {worker}: dialing it");

    let client = RpcClient::with_endpoint(endpoint, None, RpcClientConfig::default());
    let answer = client
        .request_addr(worker, KEY, br#"{"length":10}"#)
        .await?;
    println!("fibonacci(10) = {}", String::from_utf8_lossy(&answer.body));
    cancel.cancel();
    let _ = announcer.await;
    client.close(Duration::from_millis(200)).await;
    Ok(())
}
