//! `nano-connect watch`: print the confirmations of some accounts as they happen.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use nano_connect::defaults::DEFAULT_SERVICE_KEY;
use nano_connect::protocol::identity::NodeId;
use nano_connect::route::error::exit;
use nano_connect::route::subscribe::{Filter, Subscription, SubscriptionConfig, SubscriptionEvent};
use nano_connect::route::{RpcClient, RpcClientConfig};

use super::route::RouteArgs;

/// Print the confirmations of ACCOUNT... as JSON lines, one a line, until Ctrl-C.
///
///   nano-connect watch --grape http://127.0.0.1:30002 nano_3e3j5...
///
/// Each line is the Nano node's own websocket message,
/// {"topic":"confirmation","time":"<ms>","message":{"account":...,"amount":...,"hash":...,
/// "confirmation_type":...,"block":{...}}}, for a block of one of the accounts (sent from
/// it, or a send to it), once, from workers that run with --nano-ws. When a worker goes
/// away, watch moves to another; that and dropped messages are told on stderr.
///
/// Exit codes as call's: 0 stopped by Ctrl-C; 1 other failure; 2 bad command line (an
/// ACCOUNT that is none); 3 the workers refused (too many accounts, ...); 5 no worker
/// announces the key; 6 timeout; 7 the DHT, grape or every worker unreachable; 8
/// --quorum not met (too few workers take the subscription).
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct WatchArgs {
    #[command(flatten)]
    route: RouteArgs,
    /// Service key to look up.
    #[arg(long, default_value = DEFAULT_SERVICE_KEY, value_name = "KEY")]
    service: String,
    /// Use only these workers (node ids, comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "NODE_ID,...")]
    trust: Vec<NodeId>,
    /// Print a confirmation only once a strict majority of N distinct workers reported
    /// the same block (1: no quorum).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=15))]
    quorum: u16,
    /// Leave the block out of each message (the node's include_block false).
    #[arg(long)]
    no_block: bool,
    /// Keep the election information in each message.
    #[arg(long)]
    election_info: bool,
    /// The node's confirmation_type: all, active, active_quorum,
    /// active_confirmation_height or inactive.
    #[arg(long, default_value = "all", value_name = "TYPE")]
    confirmation_type: String,
    /// Milliseconds allowed for subscribing, lookup included.
    #[arg(long, default_value_t = 15_000, value_name = "MS")]
    timeout: u64,
    /// Accounts to follow (nano_... or xrb_...).
    #[arg(required = true, value_name = "ACCOUNT")]
    accounts: Vec<String>,
}

pub async fn run(args: WatchArgs) -> u8 {
    for account in &args.accounts {
        let valid = (account.starts_with("nano_") || account.starts_with("xrb_"))
            && nano_connect::nano::checked::ledger_key(account).is_some();
        if !valid {
            eprintln!("nano-connect: {account:?} is not a Nano account address");
            return exit::USAGE;
        }
    }
    let discovery = match args.route.discovery().await {
        Ok(discovery) => discovery,
        Err(e) => {
            eprintln!("nano-connect: {}", super::chain(&e));
            return exit::UNREACHABLE;
        }
    };
    let client = match RpcClient::new(discovery, RpcClientConfig::default()) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("nano-connect: {e}");
            return exit::FAILURE;
        }
    };
    let mut client = client.with_trust(args.trust.clone());
    if let Some(cache) = args.route.cache() {
        client = client.with_cache(cache);
    }
    let client = Arc::new(client);
    let config = SubscriptionConfig {
        key: args.service.clone(),
        quorum: usize::from(args.quorum),
        open_deadline: Duration::from_millis(args.timeout),
        ..SubscriptionConfig::default()
    };
    let filter = Filter {
        accounts: Some(args.accounts.clone()),
        include_block: !args.no_block,
        include_election_info: args.election_info,
        confirmation_type: args.confirmation_type.clone(),
    };
    let mut subscription = match Subscription::open(client.clone(), config, filter).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nano-connect: {e}");
            client.close(Duration::from_millis(30)).await;
            return e.exit_code();
        }
    };
    let workers: Vec<String> = subscription
        .workers()
        .iter()
        .map(ToString::to_string)
        .collect();
    super::emit_err(serde_json::json!({"event": "subscribed", "workers": workers}));
    let code = loop {
        let event = tokio::select! {
            _ = super::shutdown_signal() => break exit::OK,
            event = subscription.next() => event,
        };
        match event {
            Some(SubscriptionEvent::Confirmation(delivered)) => {
                let mut stdout = std::io::stdout().lock();
                let written = stdout
                    .write_all(&delivered.message)
                    .and_then(|()| stdout.write_all(b"\n"))
                    .and_then(|()| stdout.flush());
                if written.is_err() {
                    // A closed pipe (| head) is a normal end.
                    break exit::OK;
                }
            }
            Some(SubscriptionEvent::Lost { lost, reason, from }) => {
                super::emit_err(serde_json::json!({
                    "event": "lost", "lost": lost, "reason": reason,
                    "worker": from.map(|n| n.to_string()),
                }));
            }
            Some(SubscriptionEvent::WorkerLost { node, reason }) => {
                super::emit_err(serde_json::json!({
                    "event": "worker_lost", "worker": node.to_string(), "reason": reason,
                }));
            }
            Some(SubscriptionEvent::Resubscribed {
                node,
                replaced,
                took,
            }) => {
                super::emit_err(serde_json::json!({
                    "event": "resubscribed", "worker": node.to_string(),
                    "replaced": replaced.to_string(), "ms": took.as_millis() as u64,
                }));
            }
            None => {
                eprintln!("nano-connect: the subscription ended");
                break exit::FAILURE;
            }
        }
    };
    drop(subscription);
    client.close(Duration::from_millis(30)).await;
    code
}
