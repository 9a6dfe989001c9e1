//! The gateway: a Nano node's own RPC dialect on a local HTTP port, carried through the
//! mesh, so that wallet software written for a node works unchanged.
//!
//! ```text
//!  wallet / browser ── POST / {"action":...} ──▶ Gateway ── RpcClient (QUIC) ──▶ worker ──▶ node
//!                  ◀── node's status and body ──┘  (failover for read-only actions,
//!                                                    or --quorum N identical answers)
//! ```
//!
//! # What a caller sees
//!
//! - **The node's answer, as is.** The status and body a worker's node gave (nano-node's
//!   errors are HTTP 200 `{"error": "..."}`; RsNano refuses malformed requests with HTTP
//!   422 and plain text). `content-type` is `application/json` when the body parses as
//!   JSON, `text/plain` otherwise, and `x-nano-connect-worker` names the worker by its
//!   node id (the key its handshake proved).
//! - **Mesh failures in the node's dialect.** No worker, a refusal, a timeout, a quorum
//!   not met: HTTP 200 `{"error": "..."}`, as nano-node reports its own errors, with a
//!   message that starts with `nano-connect:` and says which action and why (for
//!   example `nano-connect: worker NODEID (127.0.0.1:4000) refused "wallet_create":
//!   action_not_allowed: ...`), and an `x-nano-connect-error` header with the code
//!   ([`crate::route::error`] has the one table of codes).
//! - **Any path, POST only.** Nano clients post to whatever URL they were given; every
//!   path is served the same. `OPTIONS` answers CORS preflights (any origin), so that a
//!   browser page can call the gateway; other methods get HTTP 405 with a JSON error.
//! - **Bounded bodies.** A body over [`GatewayConfig::max_body_bytes`] gets HTTP 413 with
//!   a JSON error and is not sent anywhere.
//!
//! # Failover and quorum
//!
//! Each request goes through [`crate::nano::retry::options_for`]: read-only actions may be
//! retried on another worker within the client's attempt budget, `process` and the other
//! opt-ins are sent once. With [`GatewayConfig::quorum`] N > 1, each read-only request is
//! sent to N distinct workers and answered only when a strict majority agree byte for
//! byte ([`crate::route::quorum`]). The opt-ins are still sent once: `process` through
//! three nodes would publish one block three times, and the later nodes' "Old block"
//! answers would make a published block look like a disagreement.
//!
//! The gateway takes its [`RpcClient`] from the caller, so that how the client finds and
//! reaches workers (a grape, its own DHT node, brokers, trusted nodes only) is decided
//! outside it, the same way as for `call`.
//!
//! [`ws`] is its websocket face: the node's websocket dialect (confirmations), carried
//! by subscriptions through the same client.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grape::http::serve::HttpLimits;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::cors::{Any, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::metrics::GatewayMetrics;
use crate::nano::retry::{action_of, failover_safe, options_for};
use crate::protocol::identity::NodeId;
use crate::route::quorum::{request_quorum, QuorumError};
use crate::route::{Answer, CallError, RpcClient};

pub mod ws;

pub use crate::defaults::DEFAULT_GATEWAY_MAX_BODY_BYTES as DEFAULT_MAX_BODY_BYTES;

/// How long browsers may cache a CORS preflight answer, in seconds (one day).
const PREFLIGHT_MAX_AGE_SECS: u64 = 86_400;

/// Header naming the worker that answered, by node id.
pub const WORKER_HEADER: &str = "x-nano-connect-worker";

/// Header carrying the code of a mesh failure (`no_worker`, `action_not_allowed`, ...).
pub const ERROR_HEADER: &str = "x-nano-connect-error";

/// Settings of a [`Gateway`].
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Service key looked up for every request (default `nano_rpc`).
    pub service: String,
    /// Workers asked per request; above 1, a strict majority must agree byte for byte
    /// (default 1: no quorum, failover for read-only actions).
    pub quorum: usize,
    /// Largest request body taken, in bytes (default [`DEFAULT_MAX_BODY_BYTES`], 64 KiB).
    pub max_body_bytes: usize,
    /// A connection that sends no complete request head within this long (idle between
    /// requests included) is closed (default 10 s).
    pub header_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            service: crate::defaults::DEFAULT_SERVICE_KEY.to_string(),
            quorum: 1,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_timeout: HttpLimits::default().header_timeout,
        }
    }
}

/// What the gateway answers one request with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayReply {
    /// A node's answer: status, body, and the worker that carried it.
    Node {
        /// The node's HTTP status.
        status: u16,
        /// The node's body, unchanged.
        body: Vec<u8>,
        /// The worker that answered, by node id.
        node: NodeId,
        /// Its address.
        worker: SocketAddr,
    },
    /// The mesh gave no node answer: a wire or mesh code (`no_worker`, `timeout`,
    /// `unreachable`, `disagreement`, or a worker's [`ErrorCode`]) and a message that
    /// names the action and the reason.
    Failure {
        /// Machine-readable code.
        code: &'static str,
        /// One line for people.
        message: String,
    },
}

/// The gateway: turns HTTP requests into mesh requests with its [`RpcClient`].
#[derive(Debug, Clone)]
pub struct Gateway {
    client: Arc<RpcClient>,
    config: Arc<GatewayConfig>,
    metrics: Option<Arc<GatewayMetrics>>,
}

impl Gateway {
    /// A gateway that carries requests with `client`.
    pub fn new(client: Arc<RpcClient>, config: GatewayConfig) -> Self {
        Self {
            client,
            config: Arc::new(config),
            metrics: None,
        }
    }

    /// Counts every carried request in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<GatewayMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The gateway's settings.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Carries one Nano RPC body through the mesh and says what to answer.
    pub async fn carry(&self, body: &[u8]) -> GatewayReply {
        let key = &self.config.service;
        let action = action_of(body).unwrap_or_else(|| "(no action)".to_string());
        let started = Instant::now();
        let result = if self.config.quorum > 1 && failover_safe(body) {
            request_quorum(&self.client, key, body, self.config.quorum).await
        } else {
            self.client
                .request_with(key, body, options_for(body))
                .await
                .map_err(QuorumError::Call)
        };
        if let (Some(metrics), Ok(answer)) = (&self.metrics, &result) {
            metrics.failed_over(answer.failovers);
        }
        let reply = match result {
            Ok(Answer {
                status,
                body,
                node,
                worker,
                ..
            }) => GatewayReply::Node {
                status,
                body,
                node,
                worker,
            },
            Err(e) => failure(&action, e),
        };
        if let Some(metrics) = &self.metrics {
            let outcome = match &reply {
                GatewayReply::Node { .. } => "answered",
                GatewayReply::Failure { code, .. } => code,
            };
            metrics.carried(outcome, started.elapsed());
        }
        match &reply {
            GatewayReply::Node {
                status,
                node,
                worker,
                ..
            } => tracing::debug!(
                %action, %node, %worker, status, ms = started.elapsed().as_secs_f64() * 1e3, "carried"
            ),
            GatewayReply::Failure { code, message } => {
                tracing::info!(%action, code, "{message}")
            }
        }
        reply
    }

    /// The HTTP face: every path, POST to carry, OPTIONS for CORS, with the body cap.
    pub fn router(self) -> Router {
        let cors = CorsLayer::new()
            .allow_origin(Any)
            .allow_methods([Method::POST, Method::OPTIONS])
            .allow_headers(Any)
            .expose_headers([
                header::HeaderName::from_static(WORKER_HEADER),
                header::HeaderName::from_static(ERROR_HEADER),
            ])
            .max_age(std::time::Duration::from_secs(PREFLIGHT_MAX_AGE_SECS));
        Router::new()
            .fallback(serve_one)
            .with_state(self)
            .layer(cors)
            // The CORS layer answers every OPTIONS itself; a bare one (no CORS request
            // headers) still learns what is allowed (RFC 9110 §9.3.7).
            .layer(SetResponseHeaderLayer::if_not_present(
                header::ALLOW,
                HeaderValue::from_static("POST, OPTIONS"),
            ))
    }
}

/// Serves `gateway` on `listener` until `shutdown` resolves.
///
/// The HTTP server is bounded ([`HttpLimits`]): a connection that idles or trickles its
/// request is closed, and connections are capped in all and per client address. A
/// request gets its client's whole deadline and 5 s more before HTTP 408.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = HttpLimits {
        header_timeout: gateway.config.header_timeout,
        request_timeout: gateway.client.config().request_timeout + Duration::from_secs(5),
        ..HttpLimits::default()
    };
    grape::http::serve::serve(listener, gateway.router(), limits, shutdown).await
}

/// The [`GatewayReply::Failure`] for a failed request of `action`.
fn failure(action: &str, error: QuorumError) -> GatewayReply {
    let code = error.code();
    let message = match &error {
        QuorumError::Call(CallError::Refused { worker, error }) => format!(
            "worker {worker} refused {action:?}: {}: {}",
            error.code, error.message
        ),
        other => other.to_string(),
    };
    let message = if message.contains(action) {
        message
    } else {
        format!("{action:?}: {message}")
    };
    GatewayReply::Failure {
        code,
        message: format!("nano-connect: {message}"),
    }
}

/// A JSON `{"error": message}` answer with `status`.
fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(code) {
        response.headers_mut().insert(ERROR_HEADER, value);
    }
    response
}

/// Whether a body read failed because the body is over the limit (not malformed).
fn is_over_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The gateway's only route.
async fn serve_one(State(gateway): State<Gateway>, method: Method, body: Body) -> Response {
    if method == Method::OPTIONS {
        // A preflight with CORS headers was answered by the CORS layer; a bare OPTIONS
        // learns what is allowed.
        return (
            StatusCode::NO_CONTENT,
            [(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"))],
        )
            .into_response();
    }
    if method != Method::POST {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "nano-connect: POST a Nano RPC JSON body, such as {\"action\":\"block_count\"}",
        );
    }
    let limit = gateway.config.max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(e) if is_over_limit(&e) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                &format!(
                    "nano-connect: request body larger than this gateway's limit of {limit} bytes"
                ),
            )
        }
        // A body that could not be read (a malformed chunked encoding, a client that
        // went away mid-body) is the client's error, not a size.
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                &format!("nano-connect: the request body could not be read: {e}"),
            )
        }
    };
    match gateway.carry(&bytes).await {
        GatewayReply::Node {
            status, body, node, ..
        } => {
            let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut response = (
                status,
                [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
                body,
            )
                .into_response();
            if let Ok(value) = HeaderValue::from_str(&node.to_string()) {
                response.headers_mut().insert(WORKER_HEADER, value);
            }
            response
        }
        GatewayReply::Failure { code, message } => json_error(StatusCode::OK, code, &message),
    }
}
