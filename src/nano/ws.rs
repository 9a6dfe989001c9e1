//! The worker's client of its Nano node's websocket: one connection, one subscription to
//! the `confirmation` topic for every account, kept up for as long as the worker runs.
//!
//! The node's websocket API (the Nano docs' "WebSockets" integration guide; nano-node's
//! `nano/node/websocket.cpp`, RsNano's `rust/websocket_server`): a client sends JSON text
//! messages `{"action":"subscribe","topic":"confirmation","ack":true,"id":...,
//! "options":{...}}`; the node answers `{"ack":"subscribe","time":"<ms>","id":...}` (acks
//! are not ordered with other messages) and then sends one
//! `{"topic":"confirmation","time":"<ms>","message":{...}}` per confirmed block. With no
//! `accounts` option the node sends every confirmation: this client asks for all of them,
//! with `include_block` and `include_election_info`, so that the worker can serve each
//! subscriber the accounts and fields it asked for ([`super::confirmations`]).
//!
//! ```text
//!   connect ─▶ subscribe ─▶ ack (≤ ACK_TIMEOUT) ─▶ messages … ─┐ silent > DEAD_AFTER,
//!      ▲                                                       │ closed, or failed
//!      └──────────── back-off 200 ms … 5 s ◀───────────────────┘
//! ```
//!
//! A ping (`{"action":"ping"}`, answered `{"ack":"pong"}`) goes out every [`KEEPALIVE`],
//! so that a connection on which nothing at all comes back for [`DEAD_AFTER`] is known to
//! be dead even on a quiet network.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The id this client gives its `subscribe`.
pub const SUBSCRIBE_ID: &str = "nano-connect-worker";

/// Time the node has to open the websocket.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time the node has to acknowledge the subscription (it answers at once).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Interval of the keep-alive ping.
pub const KEEPALIVE: Duration = Duration::from_secs(20);

/// Silence after which the connection is taken for dead: three pings unanswered.
pub const DEAD_AFTER: Duration = Duration::from_secs(60);

/// Longest wait between reconnection attempts; the first is after 200 ms, doubling.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Largest websocket message taken from the node, bytes: a confirmation with election
/// information is a few KB.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// What the node's websocket did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeWsEvent {
    /// The subscription is up (the node acknowledged it).
    Up,
    /// The connection closed or failed; the client reconnects.
    Down(String),
    /// One text message from the node (confirmations, and anything else it sends).
    Message(String),
}

/// The subscription sent to the node.
pub fn subscribe_message() -> String {
    serde_json::json!({
        "action": "subscribe",
        "topic": "confirmation",
        "ack": true,
        "id": SUBSCRIBE_ID,
        "options": {"include_block": true, "include_election_info": true},
    })
    .to_string()
}

/// Keeps a subscription to `url`'s confirmations until `cancel` fires, telling `on_event`
/// of every change and message (called from this task, in order; it must not block).
pub async fn run(
    url: String,
    mut on_event: impl FnMut(NodeWsEvent) + Send,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let mut logged_down = false;
    loop {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = session(&url, &mut on_event) => outcome,
        };
        let reason = match outcome {
            Ok(reason) => {
                backoff = Duration::from_millis(200);
                logged_down = false;
                reason
            }
            Err(reason) => reason,
        };
        if !logged_down {
            warn!(url = %url, %reason, "node websocket down; reconnecting");
            logged_down = true;
        } else {
            debug!(url = %url, %reason, "node websocket still down");
        }
        on_event(NodeWsEvent::Down(reason));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: `Ok(reason)` when it was up and then ended, `Err(reason)` when it
/// never came up.
async fn session(
    url: &str,
    on_event: &mut (impl FnMut(NodeWsEvent) + Send),
) -> Result<String, String> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let (mut ws, _) = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return Err(format!("cannot open {url}: {e}")),
        Err(_) => {
            return Err(format!(
                "{url} did not open a websocket within {} ms",
                CONNECT_TIMEOUT.as_millis()
            ))
        }
    };
    ws.send(Message::text(subscribe_message()))
        .await
        .map_err(|e| format!("cannot subscribe: {e}"))?;
    let ack_by = tokio::time::Instant::now() + ACK_TIMEOUT;
    let mut up = false;
    let mut last_heard = tokio::time::Instant::now();
    let mut ping = tokio::time::interval(KEEPALIVE);
    ping.tick().await;
    loop {
        let deadline = if up { last_heard + DEAD_AFTER } else { ack_by };
        let message = tokio::select! {
            m = ws.next() => m,
            _ = ping.tick() => {
                let ping = serde_json::json!({"action": "ping"}).to_string();
                if let Err(e) = ws.send(Message::text(ping)).await {
                    return end(up, format!("cannot ping: {e}"));
                }
                continue;
            }
            _ = tokio::time::sleep_until(deadline) => {
                return if up {
                    Ok(format!("nothing from the node for {} s", DEAD_AFTER.as_secs()))
                } else {
                    Err(format!(
                        "the node did not acknowledge the subscription within {} ms (is {url} a Nano node's websocket?)",
                        ACK_TIMEOUT.as_millis()
                    ))
                };
            }
        };
        let text = match message {
            None => return end(up, "the node closed the websocket".into()),
            Some(Err(e)) => return end(up, format!("websocket error: {e}")),
            Some(Ok(Message::Text(text))) => text.to_string(),
            Some(Ok(Message::Close(frame))) => {
                return end(up, format!("the node closed the websocket ({frame:?})"))
            }
            // Pings are answered by the library; binary frames are not the node's.
            Some(Ok(_)) => {
                last_heard = tokio::time::Instant::now();
                continue;
            }
        };
        last_heard = tokio::time::Instant::now();
        if !up && is_subscribe_ack(&text) {
            up = true;
            info!(%url, "subscribed to the node's confirmations");
            on_event(NodeWsEvent::Up);
            continue;
        }
        on_event(NodeWsEvent::Message(text));
    }
}

fn end(up: bool, reason: String) -> Result<String, String> {
    if up {
        Ok(reason)
    } else {
        Err(reason)
    }
}

/// Whether `text` is the node's ack of [`subscribe_message`].
fn is_subscribe_ack(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Ack<'a> {
        #[serde(borrow)]
        ack: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        id: Option<std::borrow::Cow<'a, str>>,
    }
    matches!(
        serde_json::from_str::<Ack<'_>>(text),
        Ok(Ack { ack: Some(a), id: Some(i) }) if a == "subscribe" && i == SUBSCRIBE_ID
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_ack_is_recognised_by_its_id() {
        assert!(is_subscribe_ack(
            r#"{"id":"nano-connect-worker","ack":"subscribe","time":"1795317768639"}"#
        ));
        assert!(!is_subscribe_ack(
            r#"{"id":"sub-1","ack":"subscribe","time":"1795317768639"}"#
        ));
        assert!(!is_subscribe_ack(r#"{"ack":"pong"}"#));
        assert!(!is_subscribe_ack("not json"));
    }
}
