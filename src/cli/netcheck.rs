//! `nano-connect netcheck`: what this host's NAT means for reaching and being reached.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use nano_connect::traversal::{broker_of, netcheck, Mapping, NetReport};

/// Check this host's NAT through a grape's broker: the reflexive (public) address, and
/// whether the NAT maps endpoint-independently (RFC 4787: the same public port toward
/// every destination, so hole punching works) or endpoint-dependently ("symmetric").
///
/// The broker answers on its port (the grape's DHT port + 10000) and on an alternate port
/// of the same IP; netcheck asks both from one socket and compares what they saw.
#[derive(Debug, Args)]
pub struct NetcheckArgs {
    /// The grape's DHT address HOST:PORT (its broker listens on PORT + 10000).
    #[arg(long, value_name = "HOST:PORT")]
    broker: String,
    /// Print one JSON object instead of sentences.
    #[arg(long)]
    json: bool,
    /// Local address to check from.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// Milliseconds to wait for each answer.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    timeout: u64,
}

pub async fn run(args: NetcheckArgs) -> anyhow::Result<()> {
    let broker = broker_of(&args.broker).context("--broker")?;
    let report = netcheck(
        SocketAddr::new(args.bind, 0),
        broker,
        Duration::from_millis(args.timeout),
    )
    .await
    .context("netcheck failed")?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "reflexive": report.reflexive.to_string(),
                "reflexive_alt": report.reflexive_alt.map(|a| a.to_string()),
                "mapping": report.mapping.as_str(),
                "public": report.public,
                "local": report.local.to_string(),
                "rtt_ms": report.rtt.as_secs_f64() * 1e3,
                "broker": broker.to_string(),
            })
        );
    } else {
        println!("{}", explain(&report));
    }
    Ok(())
}

/// The report in plain words.
fn explain(r: &NetReport) -> String {
    let mut out = format!(
        "Your public (reflexive) address is {} (broker at {:.1} ms).\n",
        r.reflexive,
        r.rtt.as_secs_f64() * 1e3
    );
    if r.public {
        out.push_str(
            "There is no NAT between you and the broker: anyone can reach you directly.\n",
        );
    }
    out.push_str(match r.mapping {
        Mapping::EndpointIndependent => "Your NAT keeps the same public port for every destination (endpoint-independent mapping): workers and clients behind ordinary home routers can reach you by hole punching.",
        Mapping::EndpointDependent => "Your NAT picks a new public port for every destination (endpoint-dependent, \"symmetric\" mapping): hole punching works only with peers whose NAT is not symmetric (by guessing ports); two symmetric sides talk through the broker's relay.",
        Mapping::Unknown => "The broker's second port did not answer, so the mapping could not be checked: if direct paths fail, the broker's relay still works.",
    });
    out
}
