//! The gateway's websocket face: the Nano node's own websocket dialect on a local port,
//! its `confirmation` topic carried by the mesh ([`crate::route::subscribe`]), so that a
//! wallet's websocket code works against `ws://127.0.0.1:7078` unchanged.
//!
//! ```text
//!  wallet ── ws text {"action":"subscribe",...} ──▶ WsGateway ── Subscription ──▶ worker(s) ──▶ node
//!         ◀── {"ack":"subscribe","time","id"} ───┘        (N with --quorum N; another
//!         ◀── {"topic":"confirmation",...} ────────         worker when one goes away)
//! ```
//!
//! # The dialect (nano-node's `nano/node/websocket.cpp`, the Nano docs' "WebSockets")
//!
//! | the wallet sends | the gateway |
//! |---|---|
//! | `{"action":"subscribe","topic":"confirmation","ack":true,"id":"x","options":{"accounts":[...],"include_block":true,"include_election_info":false,"confirmation_type":"all"}}` | subscribes through the mesh; then `{"ack":"subscribe","time":"<ms>","id":"x"}` (when `ack` is true), then `{"topic":"confirmation","time":...,"message":{...}}` per confirmation, as the node sends it. A second `subscribe` replaces the first. |
//! | `{"action":"update","topic":"confirmation","ack":true,"options":{"accounts_add":[...],"accounts_del":[...]}}` | changes the accounts; `{"ack":"update",...}` |
//! | `{"action":"unsubscribe","topic":"confirmation","ack":true}` | ends it; `{"ack":"unsubscribe",...}` |
//! | `{"action":"ping","id":"x"}` | `{"ack":"pong","time":"<ms>","id":"x"}` (always, as the node) |
//!
//! Option values may be JSON booleans or the strings `"true"`/`"false"` (the node reads
//! them through a property tree, where both are the same). `id` comes back as a string.
//!
//! # What the node does not send
//!
//! - **Refusals** (the node logs and stays silent; a wallet here learns why):
//!   `{"error":"nano-connect: ...","code":"<code>","action":"subscribe","id":"x","time":"<ms>"}`,
//!   with `code` a worker's refusal (`all_accounts_refused`, `too_many_accounts`,
//!   `invalid_account`, ...), a mesh failure (`no_worker`, `unreachable`, `timeout`,
//!   `no_quorum`), or the gateway's own (`invalid_request`, `unknown_topic`,
//!   `unknown_action`, `no_subscription`, `too_many_connections`).
//! - **Gaps**: `{"notice":"messages_lost","lost":"N","total_lost":"M","reason":"slow_reader"|"rate_limit","message":"...","time":"<ms>"}`
//!   when confirmations were dropped (by a worker, or here for a wallet that reads too
//!   slowly: its queue holds [`WsConfig::queue`] messages).
//!
//! Other topics (`votes`, `telemetry`, ...) are refused with `unknown_topic`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::nano::checked::ledger_key;
use crate::route::subscribe::{
    Filter, SubscribeError, Subscription, SubscriptionConfig, SubscriptionEvent,
    SubscriptionMetrics, Updater,
};
use crate::route::RpcClient;

/// The Nano node's websocket port on the live network, where wallets look for it.
pub const DEFAULT_WS_LISTEN: &str = "127.0.0.1:7078";

/// Settings of a [`WsGateway`].
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// How subscriptions are made (key, quorum, heartbeat, resubscribe bound).
    pub subscription: SubscriptionConfig,
    /// Websocket connections at once (default 256: a gateway serves the wallets of one
    /// host or household).
    pub max_connections: usize,
    /// Largest message taken from a wallet, bytes (default 256 KiB: a subscribe with
    /// the workers' default 500 accounts is about 35 KB).
    pub max_message_bytes: usize,
    /// Messages queued for one wallet (default 256); past it confirmations are dropped
    /// and counted, and a notice follows.
    pub queue: usize,
    /// Accounts one wallet connection may follow (default 500, the workers' default).
    pub max_accounts: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            subscription: SubscriptionConfig::default(),
            max_connections: 256,
            max_message_bytes: 256 * 1024,
            queue: 256,
            max_accounts: crate::nano::confirmations::DEFAULT_MAX_ACCOUNTS,
        }
    }
}

/// The websocket face's metrics, registered in the gateway's registry.
///
/// | metric | type | labels |
/// |---|---|---|
/// | `nano_connect_gateway_ws_connections` | gauge | (websocket connections open) |
/// | `nano_connect_gateway_ws_subscriptions` | gauge | (connections with a subscription) |
/// | `nano_connect_gateway_ws_confirmations_total` | counter | (confirmations sent to wallets) |
/// | `nano_connect_gateway_ws_dropped_total` | counter | `reason` = `slow_reader` (a wallet's queue was full) |
/// | `nano_connect_gateway_ws_errors_total` | counter | `code` (refusals and failures told to wallets) |
///
/// and [`SubscriptionMetrics`] (workers lost, resubscribes and their time).
#[derive(Debug, Clone)]
pub struct WsMetrics {
    connections: IntGauge,
    subscriptions: IntGauge,
    confirmations: IntCounter,
    dropped: IntCounterVec,
    errors: IntCounterVec,
    /// The subscriptions' own.
    pub subscription: SubscriptionMetrics,
}

impl WsMetrics {
    /// Fresh metrics, registered in `registry`.
    ///
    /// Errors: a metric of the same name is registered there already.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connections = IntGauge::new(
            "nano_connect_gateway_ws_connections",
            "Websocket connections open on the gateway",
        )?;
        let subscriptions = IntGauge::new(
            "nano_connect_gateway_ws_subscriptions",
            "Websocket connections with a confirmation subscription",
        )?;
        let confirmations = IntCounter::new(
            "nano_connect_gateway_ws_confirmations_total",
            "Confirmations sent to websocket clients",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "nano_connect_gateway_ws_dropped_total",
                "Confirmations dropped for websocket clients, by reason",
            ),
            &["reason"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "nano_connect_gateway_ws_errors_total",
                "Refusals and failures told to websocket clients, by code",
            ),
            &["code"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(subscriptions.clone()))?;
        registry.register(Box::new(confirmations.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(Self {
            connections,
            subscriptions,
            confirmations,
            dropped,
            errors,
            subscription: SubscriptionMetrics::register(registry)?,
        })
    }
}

/// The websocket face: wallet connections in, mesh subscriptions out.
#[derive(Debug, Clone)]
pub struct WsGateway {
    client: Arc<RpcClient>,
    config: Arc<WsConfig>,
    metrics: Option<WsMetrics>,
}

impl WsGateway {
    /// A websocket face that subscribes with `client`.
    pub fn new(client: Arc<RpcClient>, mut config: WsConfig, metrics: Option<WsMetrics>) -> Self {
        if let Some(m) = &metrics {
            config.subscription.metrics = Some(m.subscription.clone());
        }
        Self {
            client,
            config: Arc::new(config),
            metrics,
        }
    }
}

/// Serves `gateway` on `listener` until `shutdown` resolves; open connections are ended
/// then.
pub async fn serve(
    listener: TcpListener,
    gateway: WsGateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(gateway.config.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                warn!(error = %e, "websocket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let gateway = gateway.clone();
        let stop = stop.clone();
        let permit = slots.clone().try_acquire_owned().ok();
        connections.spawn(async move {
            debug!(%peer, "websocket connection");
            connection(stream, gateway, permit.is_some(), stop).await;
            drop(permit);
        });
    }
    stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
    Ok(())
}

fn now_ms() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis().to_string())
        .unwrap_or_else(|_| "0".into())
}

/// A refusal or failure told to the wallet.
fn error_message(code: &str, message: &str, action: Option<&str>, id: Option<&str>) -> String {
    let mut m = Map::new();
    m.insert(
        "error".into(),
        Value::String(format!("nano-connect: {message}")),
    );
    m.insert("code".into(), Value::String(code.to_string()));
    if let Some(action) = action {
        m.insert("action".into(), Value::String(action.to_string()));
    }
    if let Some(id) = id {
        m.insert("id".into(), Value::String(id.to_string()));
    }
    m.insert("time".into(), Value::String(now_ms()));
    Value::Object(m).to_string()
}

/// The node's ack: `{"ack":ACTION,"time":"<ms>","id":ID}`.
fn ack_message(action: &str, id: Option<&str>) -> String {
    let mut m = Map::new();
    m.insert("ack".into(), Value::String(action.to_string()));
    m.insert("time".into(), Value::String(now_ms()));
    if let Some(id) = id {
        m.insert("id".into(), Value::String(id.to_string()));
    }
    Value::Object(m).to_string()
}

fn notice_message(lost: u64, total: u64, reason: &str, text: &str) -> String {
    json!({
        "notice": "messages_lost",
        "lost": lost.to_string(),
        "total_lost": total.to_string(),
        "reason": reason,
        "message": format!("nano-connect: {text}"),
        "time": now_ms(),
    })
    .to_string()
}

/// A wallet's request, read as the node reads it.
pub(crate) struct Request {
    action: String,
    topic: Option<String>,
    ack: bool,
    id: Option<String>,
    options: Map<String, Value>,
}

/// The node's boolean: JSON `true`/`false` or the strings `"true"`/`"false"`.
fn flag(value: Option<&Value>, default: bool, name: &str) -> Result<bool, String> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(format!("{name} must be true or false, not {other}")),
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads a wallet's websocket message as the node does; the refusal says why (also the
/// fuzz target `subscription`'s entry, `crate::fuzzing`).
pub(crate) fn parse_request(text: &str) -> Result<Request, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("the message is not JSON: {e}"))?;
    let Value::Object(mut object) = value else {
        return Err("the message must be a JSON object with an \"action\"".into());
    };
    let action = match object.get("action") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err("the message has no string \"action\"".into()),
    };
    let topic = object.get("topic").and_then(text_of);
    let ack = flag(object.get("ack"), false, "ack")?;
    let id = object.get("id").and_then(text_of);
    let options = match object.remove("options") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o,
        Some(_) => return Err("\"options\" must be an object".into()),
    };
    Ok(Request {
        action,
        topic,
        ack,
        id,
        options,
    })
}

/// An array of account addresses under `name` (`None` when absent).
fn accounts_of(options: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, String> {
    let Some(value) = options.get(name) else {
        return Ok(None);
    };
    let Value::Array(items) = value else {
        return Err(format!(
            "options.{name} must be an array of account addresses"
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for item in items {
        let Some(text) = item.as_str() else {
            return Err(format!("options.{name} must hold strings, not {item}"));
        };
        let valid =
            (text.starts_with("nano_") || text.starts_with("xrb_")) && ledger_key(text).is_some();
        if !valid {
            let shown: String = text.chars().take(80).collect();
            return Err(format!(
                "{shown:?} in options.{name} is not a Nano account address"
            ));
        }
        if seen.insert(text.to_string()) {
            out.push(text.to_string());
        }
    }
    Ok(Some(out))
}

fn filter_of(
    options: &Map<String, Value>,
    max_accounts: usize,
) -> Result<Filter, (String, &'static str)> {
    let bad = |m: String| (m, "invalid_request");
    if options.contains_key("all_local_accounts") {
        return Err((
            "all_local_accounts names a node's wallets, which the mesh has not; list the accounts"
                .into(),
            "invalid_request",
        ));
    }
    let accounts = accounts_of(options, "accounts").map_err(|m| (m, "invalid_account"))?;
    if let Some(list) = &accounts {
        if list.len() > max_accounts {
            return Err((
                format!(
                    "{} accounts asked; this gateway follows at most {max_accounts} per connection",
                    list.len()
                ),
                "too_many_accounts",
            ));
        }
    }
    let confirmation_type = match options.get("confirmation_type") {
        None | Some(Value::Null) => "all".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(bad(format!(
                "confirmation_type must be a string, not {other}"
            )))
        }
    };
    Ok(Filter {
        accounts,
        include_block: flag(options.get("include_block"), true, "include_block").map_err(bad)?,
        include_election_info: flag(
            options.get("include_election_info"),
            false,
            "include_election_info",
        )
        .map_err(bad)?,
        confirmation_type,
    })
}

type Opening =
    Pin<Box<dyn Future<Output = (Result<Subscription, SubscribeError>, Request)> + Send>>;
type Updating = Pin<Box<dyn Future<Output = (Result<u32, SubscribeError>, Request)> + Send>>;

/// One wallet's connection.
struct Conn {
    gateway: WsGateway,
    out: mpsc::Sender<Message>,
    lost: u64,
    total_lost: u64,
}

impl Conn {
    /// Queues a control message (ack, error, notice); a wallet whose queue is full of
    /// them is not reading at all, and loses them too.
    fn say(&mut self, text: String) {
        let _ = self.out.try_send(Message::text(text));
    }

    fn error(&mut self, code: &str, message: &str, request: Option<&Request>) {
        if let Some(m) = &self.gateway.metrics {
            m.errors.with_label_values(&[code]).inc();
        }
        info!(code, "websocket request refused: {message}");
        let action = request.map(|r| r.action.as_str());
        let id = request.and_then(|r| r.id.as_deref());
        self.say(error_message(code, message, action, id));
    }

    fn confirmation(&mut self, message: Vec<u8>) {
        let Ok(text) = String::from_utf8(message) else {
            return;
        };
        if self.lost > 0 {
            let (lost, total) = (self.lost, self.total_lost);
            let notice = notice_message(
                lost,
                total,
                "slow_reader",
                &format!("{lost} confirmation(s) dropped: this connection reads too slowly"),
            );
            if self.out.try_send(Message::text(notice)).is_ok() {
                self.lost = 0;
            }
        }
        if self.lost == 0 && self.out.try_send(Message::text(text)).is_ok() {
            if let Some(m) = &self.gateway.metrics {
                m.confirmations.inc();
            }
            return;
        }
        self.lost += 1;
        self.total_lost += 1;
        if let Some(m) = &self.gateway.metrics {
            m.dropped.with_label_values(&["slow_reader"]).inc();
        }
    }
}

async fn connection(
    stream: TcpStream,
    gateway: WsGateway,
    admitted: bool,
    stop: CancellationToken,
) {
    // Each confirmation is one small write: without this, Nagle's algorithm holds it
    // until the wallet's delayed ACK (up to 40 ms on Linux).
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .max_message_size(Some(gateway.config.max_message_bytes))
        .max_frame_size(Some(gateway.config.max_message_bytes));
    let ws = match tokio_tungstenite::accept_async_with_config(stream, Some(config)).await {
        Ok(ws) => ws,
        Err(e) => {
            debug!(error = %e, "websocket handshake failed");
            return;
        }
    };
    let (mut sink, mut incoming) = ws.split();
    if !admitted {
        let text = error_message(
            "too_many_connections",
            &format!(
                "this gateway serves its limit of {} websocket connections",
                gateway.config.max_connections
            ),
            None,
            None,
        );
        let _ = sink.send(Message::text(text)).await;
        let _ = sink.close().await;
        return;
    }
    let (out, mut queued) = mpsc::channel::<Message>(gateway.config.queue.max(1));
    let writer = tokio::spawn(async move {
        while let Some(message) = queued.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    if let Some(m) = &gateway.metrics {
        m.connections.inc();
    }
    let mut conn = Conn {
        gateway: gateway.clone(),
        out,
        lost: 0,
        total_lost: 0,
    };
    let mut subscription: Option<Subscription> = None;
    let mut updater: Option<Updater> = None;
    let mut opening: Option<Opening> = None;
    let mut updating: FuturesUnordered<Updating> = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            message = incoming.next() => {
                let text = match message {
                    None | Some(Err(_)) => break,
                    Some(Ok(Message::Text(text))) => text.to_string(),
                    Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Binary(_))) => {
                        conn.error("invalid_request", "send JSON text messages, not binary", None);
                        continue;
                    }
                    Some(Ok(_)) => continue,
                };
                let request = match parse_request(&text) {
                    Ok(request) => request,
                    Err(message) => {
                        conn.error("invalid_request", &message, None);
                        continue;
                    }
                };
                match request.action.as_str() {
                    "ping" => {
                        let id = request.id.as_deref();
                        conn.say(ack_message("pong", id));
                    }
                    "subscribe" | "update" | "unsubscribe" => {
                        let topic = request.topic.clone().unwrap_or_default();
                        if topic != "confirmation" {
                            let message = format!(
                                "topic {topic:?} is not carried by the mesh; only \"confirmation\""
                            );
                            conn.error("unknown_topic", &message, Some(&request));
                            continue;
                        }
                        match request.action.as_str() {
                            "subscribe" => {
                                let filter = match filter_of(&request.options, gateway.config.max_accounts) {
                                    Ok(filter) => filter,
                                    Err((message, code)) => {
                                        conn.error(code, &message, Some(&request));
                                        continue;
                                    }
                                };
                                // A new subscribe replaces the old, as on the node.
                                if subscription.take().is_some() {
                                    if let Some(m) = &gateway.metrics {
                                        m.subscriptions.dec();
                                    }
                                }
                                updater = None;
                                let client = gateway.client.clone();
                                let config = gateway.config.subscription.clone();
                                opening = Some(Box::pin(async move {
                                    (Subscription::open(client, config, filter).await, request)
                                }));
                            }
                            "update" => {
                                let add = accounts_of(&request.options, "accounts_add");
                                let del = accounts_of(&request.options, "accounts_del");
                                let (add, del) = match (add, del) {
                                    (Ok(a), Ok(d)) => (a.unwrap_or_default(), d.unwrap_or_default()),
                                    (Err(message), _) | (_, Err(message)) => {
                                        conn.error("invalid_account", &message, Some(&request));
                                        continue;
                                    }
                                };
                                let Some(updater) = updater.clone() else {
                                    conn.error("no_subscription", "no confirmation subscription to update: subscribe first", Some(&request));
                                    continue;
                                };
                                updating.push(Box::pin(async move {
                                    (updater.update(add, del).await, request)
                                }));
                            }
                            _ => {
                                opening = None;
                                updater = None;
                                if subscription.take().is_some() {
                                    if let Some(m) = &gateway.metrics {
                                        m.subscriptions.dec();
                                    }
                                }
                                if request.ack {
                                    conn.say(ack_message("unsubscribe", request.id.as_deref()));
                                }
                            }
                        }
                    }
                    other => {
                        let message = format!("unknown action {:?}", other.chars().take(40).collect::<String>());
                        conn.error("unknown_action", &message, Some(&request));
                    }
                }
            }
            (result, request) = async { opening.as_mut().expect("guarded").await }, if opening.is_some() => {
                opening = None;
                match result {
                    Ok(opened) => {
                        info!(workers = ?opened.workers(), "websocket subscription open");
                        updater = Some(opened.updater());
                        subscription = Some(opened);
                        if let Some(m) = &gateway.metrics {
                            m.subscriptions.inc();
                        }
                        if request.ack {
                            conn.say(ack_message("subscribe", request.id.as_deref()));
                        }
                    }
                    Err(e) => conn.error(e.code(), &e.to_string(), Some(&request)),
                }
            }
            Some((result, request)) = updating.next(), if !updating.is_empty() => {
                match result {
                    Ok(_) if request.ack => conn.say(ack_message("update", request.id.as_deref())),
                    Ok(_) => {}
                    Err(e) => conn.error(e.code(), &e.to_string(), Some(&request)),
                }
            }
            event = async { subscription.as_mut().expect("guarded").next().await }, if subscription.is_some() => {
                match event {
                    Some(SubscriptionEvent::Confirmation(delivered)) => conn.confirmation(delivered.message),
                    Some(SubscriptionEvent::Lost { lost, reason, from }) => {
                        let who = match from {
                            Some(node) => format!("worker {node}"),
                            None => "this gateway".into(),
                        };
                        let text = format!("{lost} confirmation(s) dropped by {who} ({reason})");
                        conn.total_lost += lost;
                        let notice = notice_message(lost, conn.total_lost, &reason, &text);
                        conn.say(notice);
                    }
                    Some(SubscriptionEvent::WorkerLost { .. }) | Some(SubscriptionEvent::Resubscribed { .. }) => {}
                    None => {
                        subscription = None;
                        updater = None;
                        if let Some(m) = &gateway.metrics {
                            m.subscriptions.dec();
                        }
                    }
                }
            }
        }
    }
    if subscription.take().is_some() {
        if let Some(m) = &gateway.metrics {
            m.subscriptions.dec();
        }
    }
    if let Some(m) = &gateway.metrics {
        m.connections.dec();
    }
    drop(conn);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";

    #[test]
    fn a_wallets_subscribe_reads_as_the_node_reads_it() {
        let text = format!(
            r#"{{"action":"subscribe","topic":"confirmation","ack":"true","id":7,"options":{{"accounts":["{ACCOUNT}","{ACCOUNT}"],"include_block":"false","confirmation_type":"active_quorum"}}}}"#
        );
        let r = parse_request(&text).unwrap();
        assert_eq!(r.action, "subscribe");
        assert!(r.ack);
        assert_eq!(r.id.as_deref(), Some("7"));
        let f = filter_of(&r.options, 500).unwrap();
        assert_eq!(f.accounts, Some(vec![ACCOUNT.to_string()]));
        assert!(!f.include_block);
        assert!(!f.include_election_info);
        assert_eq!(f.confirmation_type, "active_quorum");
        let all = parse_request(r#"{"action":"subscribe","topic":"confirmation"}"#).unwrap();
        assert_eq!(filter_of(&all.options, 500).unwrap().accounts, None);
    }

    #[test]
    fn bad_requests_are_told_why() {
        for text in [
            "",
            "[]",
            r#"{"topic":"confirmation"}"#,
            r#"{"action":"subscribe","options":5}"#,
        ] {
            assert!(parse_request(text).is_err(), "{text}");
        }
        let r =
            parse_request(r#"{"action":"subscribe","options":{"accounts":["nano_x"]}}"#).unwrap();
        assert_eq!(filter_of(&r.options, 500).unwrap_err().1, "invalid_account");
        let r =
            parse_request(r#"{"action":"subscribe","options":{"include_block":"maybe"}}"#).unwrap();
        assert_eq!(filter_of(&r.options, 500).unwrap_err().1, "invalid_request");
        let r = parse_request(&format!(
            r#"{{"action":"subscribe","options":{{"accounts":["{ACCOUNT}"]}}}}"#
        ))
        .unwrap();
        assert_eq!(filter_of(&r.options, 0).unwrap_err().1, "too_many_accounts");
    }

    #[test]
    fn acks_and_errors_carry_the_callers_id() {
        let ack: Value = serde_json::from_str(&ack_message("subscribe", Some("x"))).unwrap();
        assert_eq!(ack["ack"], "subscribe");
        assert_eq!(ack["id"], "x");
        assert!(ack["time"].as_str().unwrap().parse::<u64>().is_ok());
        let e: Value = serde_json::from_str(&error_message(
            "no_worker",
            "none",
            Some("subscribe"),
            Some("y"),
        ))
        .unwrap();
        assert_eq!(e["code"], "no_worker");
        assert_eq!(e["id"], "y");
        assert!(e["error"].as_str().unwrap().starts_with("nano-connect: "));
    }
}
