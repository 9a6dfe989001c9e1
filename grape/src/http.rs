//! The Grenache-compatible HTTP API: `/announce`, `/lookup`, `/put`, `/get`.
//!
//! This follows grenache-grape's HTTP transport so that grenache-nodejs-link works
//! unchanged: any method, the path picks the handler, the body is JSON
//! `{"data": ..., "rid": "..."}` (`rid` is ignored), and the answer is HTTP 200 with a JSON
//! body, the result on success or an error string (grenache-grape answers
//! `JSON.stringify(err ? err.message : res)`).
//!
//! | path        | `data`                                             | answer                          |
//! |-------------|----------------------------------------------------|---------------------------------|
//! | `/announce` | `["name", port]`, port an integer in 1..=65535      | `1` (slots announced to)        |
//! | `/lookup`   | `"name"`                                           | `["ip:port", ...]`, maybe `[]`  |
//! | `/put`      | `{"v": "..."}` or `{"v", "k", "sig", "seq", "salt"?, "cas"?}` | `"<40 hex target>"`  |
//! | `/get`      | `"<40 hex target>"` or `{"hash", "salt"?, "k"?}`   | item object, or `null`          |
//!
//! Error strings (HTTP 200 unless noted):
//!
//! - `"ERR_GRAPE_ANNOUNCE"`: announce data is not `["non-empty name", ...]`;
//! - `"ERR_GRAPE_SERVICE_PORT"`: announce port missing, not an integer, or not 1..=65535;
//! - `"ERR_GRAPE_LOOKUP"`: lookup data is not a non-empty string;
//! - `"ERR_GRAPE_PUT"`: put data malformed (not an object, `v` not a string, `sig` without
//!   `k`, `seq` or `cas` not an integer, salt not a string), or the nodes refused it;
//! - `"ERR_GRAPE_PUT_SIG"`: `k` or `sig` is not hex of the right length (64 and 128 hex
//!   digits), `k` is not an ed25519 key, the signature is missing or does not verify;
//! - `"ERR_GRAPE_PUT_TOO_BIG"`: `v` over 1000 bytes or salt over 64 bytes (BEP 44);
//! - `"ERR_GRAPE_PUT_SEQ"`, `"ERR_GRAPE_PUT_CAS"`, `"ERR_GRAPE_PUT_CONFLICT"`: a mutable
//!   put whose `seq` is older than the stored one, whose `cas` does not match it, or that
//!   races another put of the same item without `cas`;
//! - `"ERR_GRAPE_HASH_FORMAT"`: get data is not 40 hex digits (or an object whose `hash` is
//!   not; `k` not 64 hex digits; salt not a string);
//! - `"ERR_GRAPE_NO_NODES"`, `"ERR_GRAPE_TIMEOUT"`: the DHT could not store (not
//!   bootstrapped; no node answered);
//! - `"ERR_GRAPE_QUOTA"`: the client made this grape store 64 distinct keys (or 8 entries
//!   of one key) in this announce window already ([`crate::quota`]);
//! - `"ERR_REQ_NOTFOUND"`: any other path;
//! - `"ERR_GRAPE_BODY"` with **HTTP 400**: the body is not JSON (grenache-grape crashes
//!   here); `"ERR_GRAPE_BODY_TOO_LARGE"` with **HTTP 413**: the body is over 64 KiB.
//!
//! # Differences from grenache-grape
//!
//! - Announces and lookups use time-slotted infohashes ([`mod@crate::infohash`]), so they do not
//!   meet Grenache grapes in the DHT; the HTTP faces are the same.
//! - `/get` answers `id` = the item's **target** (hex), not the id of the node that
//!   answered (mainline does not say which node it was); `k` and `sig` are hex strings,
//!   `salt` a string; there is no `token`.
//! - mainline can only fetch a mutable item by its public key, not by target alone. `/get`
//!   by target finds mutable items put or fetched through this grape (it remembers their
//!   key and salt); for others, pass the key: `{"hash": "...", "k": "<64 hex>"}` (`hash`
//!   may then be left out; if both are given and `k` and `salt` do not hash to `hash`,
//!   the answer is `null`).
//! - An empty salt is the same as no salt.

pub mod serve;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Router;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::bep44;
use crate::defaults::DEFAULT_MAX_BODY;
use crate::dht::{GrapeDht, MutableKey};
use crate::error::GrapeError;
use wire::{item_json, parse_announce, parse_get, parse_lookup, parse_put, peers_json, PutRequest};

/// Announce data is not `["non-empty name", port]`.
pub const ERR_GRAPE_ANNOUNCE: &str = "ERR_GRAPE_ANNOUNCE";
/// Announce port missing, not an integer, or out of 1..=65535.
pub const ERR_GRAPE_SERVICE_PORT: &str = "ERR_GRAPE_SERVICE_PORT";
/// Lookup data is not a non-empty string.
pub const ERR_GRAPE_LOOKUP: &str = "ERR_GRAPE_LOOKUP";
/// Put data malformed, or refused by the DHT nodes.
pub const ERR_GRAPE_PUT: &str = "ERR_GRAPE_PUT";
/// Put key or signature malformed, missing, or not verifying.
pub const ERR_GRAPE_PUT_SIG: &str = "ERR_GRAPE_PUT_SIG";
/// Get data is not a 40-hex-digit target.
pub const ERR_GRAPE_HASH_FORMAT: &str = "ERR_GRAPE_HASH_FORMAT";
/// Unknown path.
pub const ERR_REQ_NOTFOUND: &str = "ERR_REQ_NOTFOUND";
/// The client made this grape store as many distinct keys (or entries of one key) in
/// this window as one source may ([`crate::quota`]).
pub const ERR_GRAPE_QUOTA: &str = "ERR_GRAPE_QUOTA";
/// The request body is not JSON (HTTP 400).
pub const ERR_GRAPE_BODY: &str = "ERR_GRAPE_BODY";
/// The request body is over the limit (HTTP 413).
pub const ERR_GRAPE_BODY_TOO_LARGE: &str = "ERR_GRAPE_BODY_TOO_LARGE";

/// What the handlers share.
#[derive(Debug, Clone)]
struct ApiState {
    dht: Arc<GrapeDht>,
    lookup_deadline: Duration,
}

/// The API's router: every method and path goes to one handler that dispatches on the
/// path. Bodies over 64 KiB are refused with HTTP 413.
///
/// `lookup_deadline` bounds `/lookup` and `/get` (see [`GrapeDht::lookup`]).
pub fn router(dht: Arc<GrapeDht>, lookup_deadline: Duration) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(ApiState {
            dht,
            lookup_deadline,
        })
        .layer(DefaultBodyLimit::max(DEFAULT_MAX_BODY))
}

fn answer(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    answer(StatusCode::OK, &body)
}

fn err(code: &str) -> Response {
    answer(StatusCode::OK, &Value::from(code))
}

async fn handle(
    State(state): State<ApiState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Served without connection info (tests driving the router directly): loopback.
    let client = client.map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |c| c.0 .0.ip());
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return answer(rejection.status(), &Value::from(ERR_GRAPE_BODY_TOO_LARGE));
        }
        Err(_) => return answer(StatusCode::BAD_REQUEST, &Value::from(ERR_GRAPE_BODY)),
    };
    let Ok(envelope) = serde_json::from_slice::<Value>(&body) else {
        return answer(StatusCode::BAD_REQUEST, &Value::from(ERR_GRAPE_BODY));
    };
    let data = envelope.get("data").unwrap_or(&Value::Null);
    tracing::debug!(path = uri.path(), %data, "grape API request");
    match uri.path() {
        "/announce" => announce(&state, client, data).await,
        "/lookup" => lookup(&state, data).await,
        "/put" => put(&state, client, data).await,
        "/get" => get(&state, data).await,
        _ => err(ERR_REQ_NOTFOUND),
    }
}

// --- /announce ---

async fn announce(state: &ApiState, client: IpAddr, data: &Value) -> Response {
    let (name, port) = match parse_announce(data) {
        Ok(parsed) => parsed,
        Err(code) => return err(code),
    };
    if let Err(why) = state
        .dht
        .admit(client, &crate::infohash(name), u64::from(port))
    {
        tracing::info!(%client, name, %why, "announce refused");
        return err(ERR_GRAPE_QUOTA);
    }
    match state.dht.announce(name, port).await {
        Ok(n) => ok(Value::from(n)),
        Err(e) => dht_error("announce", &e),
    }
}

fn dht_error(what: &str, e: &GrapeError) -> Response {
    tracing::warn!(error = %e, "{what} failed");
    err(e.code())
}

// --- /lookup ---

async fn lookup(state: &ApiState, data: &Value) -> Response {
    let name = match parse_lookup(data) {
        Ok(name) => name,
        Err(code) => return err(code),
    };
    match state.dht.lookup(name, state.lookup_deadline).await {
        Ok(peers) => ok(peers_json(&peers)),
        Err(e) => dht_error("lookup", &e),
    }
}

// --- /put ---

async fn put(state: &ApiState, client: IpAddr, data: &Value) -> Response {
    let request = match parse_put(data) {
        Ok(request) => request,
        Err(code) => return err(code),
    };
    let target = match &request {
        PutRequest::Immutable(v) => bep44::immutable_target(v),
        PutRequest::Mutable { item, .. } => *item.target(),
    };
    // One entry per item: a newer seq of a mutable item replaces it.
    if let Err(why) = state.dht.admit(client, target.as_bytes(), 0) {
        tracing::info!(%client, %why, "put refused");
        return err(ERR_GRAPE_QUOTA);
    }
    let result = match request {
        PutRequest::Immutable(v) => state.dht.put_immutable(&v).await,
        PutRequest::Mutable { item, cas } => {
            let target = *item.target();
            state.dht.put_mutable(*item, cas).await.map(|_| target)
        }
    };
    match result {
        Ok(target) => ok(Value::from(target.to_string())),
        Err(e) => dht_error("put", &e),
    }
}

// --- /get ---

async fn get(state: &ApiState, data: &Value) -> Response {
    let request = match parse_get(data) {
        Ok(request) => request,
        Err(code) => return err(code),
    };
    let deadline = state.lookup_deadline;
    // A key given by the client, else one remembered from a put or get through this grape.
    let key = match request.k {
        Some(k) => Some(MutableKey {
            k,
            salt: request.salt.map(Vec::into_boxed_slice),
        }),
        None => state.dht.known_key(&request.target),
    };
    if let Some(MutableKey { k, salt }) = key {
        if bep44::mutable_target(&k, salt.as_deref()) != request.target {
            // The key and salt do not lead to the asked target: nothing can match.
            return ok(Value::Null);
        }
        return match state.dht.get_mutable(&k, salt.as_deref(), deadline).await {
            Some(item) => ok(item_json(&item)),
            None => ok(Value::Null),
        };
    }
    match state.dht.get_immutable(request.target, deadline).await {
        Some(v) => ok(json!({
            "id": request.target.to_string(),
            "v": String::from_utf8_lossy(&v),
        })),
        None => ok(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Routing through axum, with a real (lone, unbootstrapped) DHT node on loopback.

    async fn lone_router() -> Router {
        let config = crate::GrapeConfig {
            bind: std::net::Ipv4Addr::LOCALHOST,
            dht_port: 0,
            bootstrap: Some(vec![]),
            ..crate::GrapeConfig::default()
        };
        let dht = GrapeDht::start(&config).await.expect("DHT on loopback");
        router(Arc::new(dht), Duration::from_millis(300))
    }

    async fn call(app: &Router, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, String) {
        use tower::ServiceExt;
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::from(body))
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, String::from_utf8(bytes.to_vec()).expect("utf-8"))
    }

    fn envelope(data: Value) -> Vec<u8> {
        json!({"rid": "r-1", "data": data}).to_string().into_bytes()
    }

    #[tokio::test]
    async fn routing_by_path_any_method() {
        let app = lone_router().await;
        for method in ["POST", "GET", "PUT", "DELETE"] {
            let (status, body) = call(&app, method, "/lookup", envelope(json!(5))).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "\"ERR_GRAPE_LOOKUP\"")
            );
        }
        let cases = [
            ("/announce", json!("svc"), "\"ERR_GRAPE_ANNOUNCE\""),
            ("/announce", json!(["svc", 0]), "\"ERR_GRAPE_SERVICE_PORT\""),
            ("/put", json!({"v": 1}), "\"ERR_GRAPE_PUT\""),
            ("/get", json!("nothex"), "\"ERR_GRAPE_HASH_FORMAT\""),
            ("/nope", json!("x"), "\"ERR_REQ_NOTFOUND\""),
            ("/", json!("x"), "\"ERR_REQ_NOTFOUND\""),
            ("/lookup/", json!("x"), "\"ERR_REQ_NOTFOUND\""),
            // Nothing to find.
            ("/lookup", json!("svc"), "[]"),
            // A lone node keeps what comes through it (mainline never stores at itself).
            ("/announce", json!(["svc", 1]), "0"),
            ("/lookup", json!("svc"), "[\"127.0.0.1:1\"]"),
            ("/get", json!("00".repeat(20)), "null"),
        ];
        for (path, data, expected) in cases {
            let (status, body) = call(&app, "POST", path, envelope(data.clone())).await;
            assert_eq!(status, StatusCode::OK, "{path} {data}");
            assert_eq!(body, expected, "{path} {data}");
        }
    }

    #[tokio::test]
    async fn query_string_is_not_part_of_the_path() {
        let app = lone_router().await;
        let (_, body) = call(&app, "POST", "/lookup?x=1", envelope(json!(""))).await;
        assert_eq!(body, "\"ERR_GRAPE_LOOKUP\"");
    }

    #[tokio::test]
    async fn body_errors() {
        let app = lone_router().await;
        let (status, body) = call(&app, "POST", "/lookup", b"not json".to_vec()).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::BAD_REQUEST, "\"ERR_GRAPE_BODY\"")
        );
        let (status, body) = call(&app, "POST", "/lookup", Vec::new()).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::BAD_REQUEST, "\"ERR_GRAPE_BODY\"")
        );
        // JSON that is not an envelope: no data.
        let (status, body) = call(&app, "POST", "/lookup", b"[1,2]".to_vec()).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "\"ERR_GRAPE_LOOKUP\"")
        );
        // Missing rid is fine.
        let (_, body) = call(&app, "POST", "/lookup", br#"{"data":7}"#.to_vec()).await;
        assert_eq!(body, "\"ERR_GRAPE_LOOKUP\"");
        let big = envelope(json!("x".repeat(DEFAULT_MAX_BODY)));
        let (status, body) = call(&app, "POST", "/lookup", big).await;
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "\"ERR_GRAPE_BODY_TOO_LARGE\""
            )
        );
    }
}
