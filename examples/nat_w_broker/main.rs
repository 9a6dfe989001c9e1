//! Both sides meeting through a broker (Grenache's `nat_w_broker` mode), with the
//! library in one process on loopback:
//!
//! 1. a broker (what `nano-connect grape` runs on its DHT port + 10000);
//! 2. a fibonacci worker made by [`WorkerBuilder`], told to use that broker: on loopback
//!    it sees no NAT and would announce itself, so it is told to register as a worker
//!    behind a NAT would ([`BrokerChoice::Fixed`] with the mapping check skipped is not a
//!    thing: here the example simply asks the broker for it);
//! 3. a client ([`RpcClient`] with [`Discovery::Brokers`]) that lists the broker's
//!    workers, checks their signed records, connects (direct, punched, or relayed: the
//!    handshake proves the worker's node id either way) and sends one request.
//!
//! Run: `cargo run --example nat_w_broker [-- --relay]` (with `--relay` the client skips
//! punching and goes through the broker's relay). Across real NATs, run the three roles
//! as `nano-connect grape`, `nano-connect worker` and `nano-connect call` on three hosts.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use nano_connect::broker::rendezvous::RendezvousConfig;
use nano_connect::broker::Broker;
use nano_connect::fibonacci::FibonacciService;
use nano_connect::route::{Discovery, RpcClient, RpcClientConfig};
use nano_connect::worker::{BrokerChoice, PresenceEvent, WorkerBuilder};

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

    // 2. The worker, registered with the broker as if it were behind a NAT.
    let (registered_tx, registered) = tokio::sync::oneshot::channel();
    let registered_tx = std::sync::Mutex::new(Some(registered_tx));
    let worker = WorkerBuilder::new(KEY)
        .bind(loopback(0))
        .brokers(BrokerChoice::Fixed(vec![broker.addr()]))
        .presence(|p| p.assume_nat = true)
        .on_event(move |event| {
            if let PresenceEvent::Registered { reflexive, .. } = event {
                if let Some(tx) = registered_tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(reflexive);
                }
            }
        })
        .spawn(FibonacciService)
        .await?;
    let reflexive = tokio::time::timeout(Duration::from_secs(5), registered)
        .await
        .context("the worker did not register within 5 s")??;
    println!("worker {} registered as {reflexive}", worker.node_id());

    // 3. The client: asks the broker, never the DHT.
    let client = RpcClient::new(
        Discovery::Brokers(vec![broker.addr()]),
        RpcClientConfig {
            force_relay: relay,
            ..RpcClientConfig::default()
        },
    )?;
    let answer = client.request(KEY, br#"{"length":10}"#).await?;
    println!(
        "path={} worker={} answer={}",
        answer.path.as_str(),
        answer.label(),
        String::from_utf8_lossy(&answer.body)
    );

    client.close(Duration::from_millis(200)).await;
    worker.shutdown(Duration::from_millis(200)).await;
    broker.shutdown().await;
    Ok(())
}
