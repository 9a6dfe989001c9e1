//! The Nano node stand-in of the tests, as a process: answers Nano RPC POSTs from the
//! fixtures recorded from a real RsNano node (`tests/fixtures/nano-rpc`), for
//! measuring the relay path without a node (`benches/mesh.sh`).
//!
//! ```text
//! cargo run --release --example nano_stub
//! ```
//!
//! Prints `{"event":"listening","url":"http://127.0.0.1:PORT"}` once it serves, then
//! serves until Ctrl-C or SIGTERM. The stub records the requests it gets (the tests
//! read them); this process drops the record every second so that memory stays flat.

#[allow(dead_code)]
#[path = "../tests/support/nano_stub.rs"]
mod nano_stub;

use std::time::Duration;

use nano_stub::{Mode, NanoStub};

#[tokio::main]
async fn main() {
    let stub = NanoStub::start(Mode::RsNano).await;
    println!(
        "{}",
        serde_json::json!({"event": "listening", "url": stub.url()})
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    loop {
        tokio::select! {
            _ = tick.tick() => stub.clear_received(),
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    stub.shutdown().await;
}
