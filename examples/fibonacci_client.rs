//! The Grenache tutorial's fibonacci client, on nano-connect's library.
//!
//! With grapes and `fibonacci_worker` running:
//!
//! ```text
//! cargo run --example fibonacci_client -- http://127.0.0.1:30002 10
//! ```
//!
//! It asks one worker (`request`) and then every worker (`map`) for the first N numbers.

use nano_connect::discovery::link::Link;
use nano_connect::discovery::Directory;
use nano_connect::fibonacci::FIBONACCI_KEY;
use nano_connect::route::{Discovery, RpcClient, RpcClientConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let grape = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:30001".into());
    let length: u32 = args.next().as_deref().unwrap_or("10").parse()?;
    let body = serde_json::to_vec(&serde_json::json!({ "length": length }))?;

    let client = RpcClient::new(
        Discovery::Directory(Directory::Grape(Link::new(&grape))),
        RpcClientConfig::default(),
    )?;

    // One worker, with failover to the next if it is gone.
    let answer = client.request(FIBONACCI_KEY, &body).await?;
    println!(
        "request: {} answered {}",
        answer.label(),
        String::from_utf8_lossy(&answer.body)
    );

    // Every worker of the key at once.
    for (worker, result) in client.map(FIBONACCI_KEY, &body).await? {
        match result {
            Ok(answer) => println!(
                "map: {worker} answered {}",
                String::from_utf8_lossy(&answer.body)
            ),
            Err(e) => println!("map: {worker} failed: {e}"),
        }
    }
    client.close(std::time::Duration::from_millis(200)).await;
    Ok(())
}
