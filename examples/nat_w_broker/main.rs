//! Both sides behind NATs, meeting through a broker (Grenache's `nat_w_broker` mode),
//! with the library in one process on loopback:
//!
//! 1. a broker (what `nano-connect grape` runs on its DHT port + 1);
//! 2. a fibonacci worker whose QUIC socket is a [`NatSocket`], registered with the broker
//!    by [`run_worker_agent`];
//! 3. a client that asks the broker for a worker of the key, connects through
//!    [`connect_via_broker`] (direct, punched, or relayed), and sends one request.
//!
//! Run: `cargo run --example nat_w_broker [-- --relay]` (with `--relay` the client skips
//! punching and goes through the broker's relay). Across real NATs, run the three roles
//! as `nano-connect grape`, `nano-connect worker --broker HOST:PORT` and
//! `nano-connect call --broker HOST:PORT` on three hosts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nano_connect::broker::rendezvous::RendezvousConfig;
use nano_connect::broker::Broker;
use nano_connect::fibonacci::FibonacciService;
use nano_connect::route::reach::{connect_via_broker, ConnectConfig};
use nano_connect::route::{RpcClient, RpcClientConfig};
use nano_connect::transport::nat_socket::NatSocket;
use nano_connect::transport::{client_endpoint, server_endpoint, QuicConfig};
use nano_connect::worker::presence::{run_worker_agent, WorkerAgentConfig};
use nano_connect::worker::{RpcServer, RpcServerConfig};
use tokio_util::sync::CancellationToken;

const KEY: &str = "fibonacci_worker";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let relay = std::env::args().any(|a| a == "--relay");
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));

    // 1. The broker.
    let broker = Broker::bind(loopback(0), RendezvousConfig::default())?;
    println!(
        "broker on {} (STUN also on {})",
        broker.addr(),
        broker.alt_addr()
    );

    // 2. The worker: QUIC and the broker protocol share one socket.
    let (socket, diverted) = NatSocket::bind(loopback(0))?;
    let quinn_socket: Arc<dyn quinn::AsyncUdpSocket> = socket.clone();
    let endpoint = server_endpoint(
        quinn_socket,
        &QuicConfig::default(),
        &nano_connect::protocol::identity::NodeKey::generate(),
    )?;
    let server = RpcServer::serve(endpoint, RpcServerConfig::default(), FibonacciService);
    let cancel = CancellationToken::new();
    let (registered_tx, registered) = tokio::sync::oneshot::channel();
    let mut registered_tx = Some(registered_tx);
    let agent = tokio::spawn(run_worker_agent(
        socket,
        diverted,
        WorkerAgentConfig::new(broker.addr(), KEY),
        cancel.clone(),
        move |_, reflexive| {
            if let Some(tx) = registered_tx.take() {
                let _ = tx.send(reflexive);
            }
        },
        None,
    ));
    let reflexive = tokio::time::timeout(Duration::from_secs(5), registered)
        .await
        .context("the worker did not register within 5 s")??;
    println!("worker {} registered as {reflexive}", server.local_addr());

    // 3. The client.
    let (socket, diverted) = NatSocket::bind(loopback(0))?;
    let quinn_socket: Arc<dyn quinn::AsyncUdpSocket> = socket.clone();
    let endpoint = client_endpoint(quinn_socket, &QuicConfig::default())?;
    let mut config = ConnectConfig::new(broker.addr(), KEY);
    config.force_relay = relay;
    let brokered = connect_via_broker(&endpoint, socket, diverted, &config).await?;
    let client = RpcClient::with_endpoint(endpoint, None, RpcClientConfig::default());
    client.adopt(brokered.remote, brokered.connection.clone());
    let answer = client
        .request_addr(brokered.remote, KEY, br#"{"length":10}"#)
        .await?;
    println!(
        "path={} worker={} answer={}",
        brokered.path.as_str(),
        brokered.worker,
        String::from_utf8_lossy(&answer.body)
    );

    client.close(Duration::from_millis(200)).await;
    cancel.cancel();
    let _ = agent.await;
    server.shutdown(Duration::from_millis(200)).await;
    broker.shutdown().await;
    Ok(())
}
