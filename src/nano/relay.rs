//! The relay's I/O edge: [`NanoRelay`] posts checked requests to a Nano node's HTTP RPC.
//!
//! Per request: [`Policy::check`] first (a refused request never reaches the node; in the
//! worker's stack the cache layer checks, once, and hands the [`CheckedRequest`] on), then
//! one HTTP/1.1 `POST /` to the node with `content-type: application/json` and the checked
//! body, through one shared pool of kept-alive connections ([`super::pool`], hyper's
//! HTTP/1.1 client; the node's address and `host` header are worked out once, when the
//! relay is made). The node's status and body come back as a
//! [`Reply::Answer`], whatever they are: nano-node reports errors as HTTP 200 with
//! `{"error": "..."}`, RsNano some as HTTP 422 with plain text, and the caller sees either
//! exactly as the node sent it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use reqwest::Url;

use super::checked::CheckedRequest;
use super::policy::Policy;
use super::pool::NodeConnections;
use crate::protocol::frame::{ErrorCode, WireError};
use crate::service::{Handler, Reply, Request};

/// Default deadline of one request to the node, from connecting to the answer's last
/// byte. Ledger reads answer in milliseconds; a node that takes ten seconds is stuck or
/// overloaded, and the caller's own deadline (`DEFAULT_REQUEST_TIMEOUT`, 10 s) has passed.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default cap on the node's answer, in bytes (4 MiB).
///
/// A `count` of [`DEFAULT_MAX_COUNT`](super::DEFAULT_MAX_COUNT) history entries or
/// blocks takes well under a megabyte; the cap stays below the 8 MiB response frame
/// (`DEFAULT_MAX_RESPONSE_BYTES`) so that an answer the relay accepts also fits a frame.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// The request [`NanoRelay::probe`] sends.
const VERSION_REQUEST: &[u8] = br#"{"action":"version"}"#;

/// What a [`CheckedRequest`] goes to after the policy: a relay to one node
/// ([`NanoRelay`]) or a router between relays ([`WorkRouted`](super::work::WorkRouted)).
///
/// The request is not checked again: the caller got it from the [`Policy`] of the whole
/// stack ([`Cached`](super::cache::Cached) holds it).
pub trait Forward: Send + Sync + 'static {
    /// Posts `request` and answers with the node's status and body, or a failure
    /// ([`NanoRelay`]'s table); `peer` is the caller, for the logs.
    fn forward(
        &self,
        request: CheckedRequest,
        peer: SocketAddr,
    ) -> impl Future<Output = Reply> + Send;
}

/// How a [`NanoRelay`] reaches its node and what it lets through.
#[derive(Debug, Clone)]
pub struct NanoRelayConfig {
    /// The node's RPC address, `http://host:port` (default `http://127.0.0.1:7076`, the
    /// live network's RPC port; a dev network node listens on 45000).
    ///
    /// Only the scheme, host and port are used: requests always go to path `/`, and any
    /// path, query or user name given here is ignored (with a warning). nano-node treats
    /// POSTs to paths under `/api/v2` differently, skipping its control check, so a
    /// relay must not post there. Only `http` is accepted: this build has no TLS.
    pub node_url: String,
    /// Which requests to forward (default [`Policy::read_only`]).
    pub policy: Policy,
    /// Deadline of one request to the node, connecting and reading the whole answer
    /// included (default [`DEFAULT_NODE_TIMEOUT`], 10 s).
    pub timeout: Duration,
    /// Largest answer body taken from the node, in bytes (default
    /// [`DEFAULT_MAX_ANSWER_BYTES`], 4 MiB). A longer answer is dropped as soon as the
    /// limit is passed and the caller gets an [`ErrorCode::Internal`] failure.
    pub max_answer_bytes: usize,
}

impl Default for NanoRelayConfig {
    fn default() -> Self {
        Self {
            node_url: crate::defaults::DEFAULT_NANO_RPC_URL.to_string(),
            policy: Policy::read_only(),
            timeout: DEFAULT_NODE_TIMEOUT,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
        }
    }
}

/// A [`Handler`] that relays Nano RPC requests to one node under a [`Policy`].
///
/// It answers every request: with the node's status and body ([`Reply::Answer`]), or with
/// a [`Reply::Failure`] whose code says why not:
///
/// | code | when |
/// |---|---|
/// | [`ErrorCode::InvalidRequest`], [`ErrorCode::ActionNotAllowed`] | the policy refused it; the node never saw it |
/// | [`ErrorCode::UpstreamUnreachable`] | no connection to the node, or it broke off the exchange |
/// | [`ErrorCode::UpstreamTimeout`] | no complete answer within the configured timeout |
/// | [`ErrorCode::Internal`] | the answer is larger than `max_answer_bytes` |
///
/// It serves whatever key the server routes to it; it does not look at
/// [`Request::key`]. Cloning is cheap and shares the connection pool.
///
/// As a [`Handler`] it checks each request against its own [`Policy`]; as a [`Forward`]
/// it posts a request that was checked already.
#[derive(Debug, Clone)]
pub struct NanoRelay {
    shared: Arc<Shared>,
}

/// What the clones of one [`NanoRelay`] share.
#[derive(Debug)]
struct Shared {
    connections: NodeConnections,
    /// The `host` header of every request, made once.
    host: HeaderValue,
    endpoint: String,
    policy: Policy,
    timeout: Duration,
    max_answer_bytes: usize,
}

/// Why [`NanoRelay::new`] could not make a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NanoRelayError {
    /// `node_url` is not an absolute URL with a host; give it as `http://host:port`.
    #[error("invalid Nano node URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `node_url` has a scheme other than `http`. This build has no TLS; put a node
    /// that is not local behind a tunnel and give the tunnel's `http` address.
    #[error("Nano node URL {url:?} has scheme {scheme:?}; only http is supported")]
    UnsupportedScheme {
        /// The URL as configured.
        url: String,
        /// Its scheme.
        scheme: String,
    },
}

/// Why [`NanoRelay::probe`] found no working node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Nothing accepted a connection at the node's address: is the node running with
    /// RPC enabled (`rpc.enable`), on that port?
    #[error("Nano node at {url} is unreachable: {reason}")]
    Unreachable {
        /// The node's endpoint.
        url: String,
        /// The transport's explanation.
        reason: String,
    },
    /// The node did not answer `version` within the relay's timeout.
    #[error("Nano node at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The node's endpoint.
        url: String,
        /// The relay's timeout.
        timeout: Duration,
    },
    /// Something answered, but not as a Nano node answers `version`: an HTTP status
    /// other than 200, a body that is not a JSON object, `{"error": ...}`, or an answer
    /// over the relay's size limit.
    #[error("{url} does not answer like a Nano node RPC: {reason}")]
    NotANode {
        /// The node's endpoint.
        url: String,
        /// What came back.
        reason: String,
    },
}

/// What a node said about itself in its answer to `version`. A field the node left out
/// is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct NodeVersion {
    /// The node's name and version, such as `"Nano V27.1"` or `"RsNano 2.0"`.
    pub node_vendor: Option<String>,
    /// The network: `"live"`, `"beta"`, `"test"` or `"dev"`.
    pub network: Option<String>,
    /// The RPC protocol version, such as `"1"`.
    pub rpc_version: Option<String>,
}

/// Why one exchange with the node gave no answer.
#[derive(Debug)]
enum ForwardError {
    /// No connection (refused, no route, connect timeout).
    Unreachable(String),
    /// No complete answer within the timeout.
    Timeout,
    /// The connection broke after it was made.
    Broken(String),
    /// The answer passed the size cap.
    TooLarge,
}

impl NanoRelay {
    /// Makes a relay from `config`; nothing is sent until the first request.
    ///
    /// Errors with [`NanoRelayError::InvalidUrl`] or [`NanoRelayError::UnsupportedScheme`]
    /// for a `node_url` that is not `http://host[:port]`.
    ///
    /// Needs no runtime; requests must be sent from within a tokio runtime, on which each
    /// new connection to the node spawns its task.
    pub fn new(config: NanoRelayConfig) -> Result<Self, NanoRelayError> {
        let endpoint = endpoint(&config.node_url)?;
        let uri: Uri = endpoint
            .as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| NanoRelayError::InvalidUrl {
                url: config.node_url.clone(),
                reason: e.to_string(),
            })?;
        let host = host_header(&uri).map_err(|reason| NanoRelayError::InvalidUrl {
            url: config.node_url.clone(),
            reason,
        })?;
        let port = uri.port_u16().unwrap_or(80);
        let name = uri.host().unwrap_or_default();
        // An IPv6 address comes bracketed in a URI, and without brackets to connect().
        let name = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Self {
            shared: Arc::new(Shared {
                connections: NodeConnections::new(name, port),
                host,
                endpoint: endpoint.to_string(),
                policy: config.policy,
                timeout: config.timeout,
                max_answer_bytes: config.max_answer_bytes,
            }),
        })
    }

    /// The URL requests are posted to: the configured scheme, host and port, path `/`.
    pub fn node_url(&self) -> &str {
        &self.shared.endpoint
    }

    /// The policy requests are checked against.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// Asks the node for `{"action":"version"}`, bypassing the policy, to learn whether
    /// a Nano node answers at the configured address, and what it says about itself.
    ///
    /// Errors with [`ProbeError::Unreachable`] when no connection can be made,
    /// [`ProbeError::Timeout`] after the configured timeout, and
    /// [`ProbeError::NotANode`] when the answer is not a Nano node's answer to `version`
    /// (a status other than 200, not a JSON object, or `{"error": ...}`).
    pub async fn probe(&self) -> Result<NodeVersion, ProbeError> {
        let url = self.shared.endpoint.clone();
        let (status, body) = match self.post(Bytes::from_static(VERSION_REQUEST)).await {
            Ok(answer) => answer,
            Err(ForwardError::Unreachable(reason)) | Err(ForwardError::Broken(reason)) => {
                return Err(ProbeError::Unreachable { url, reason })
            }
            Err(ForwardError::Timeout) => {
                return Err(ProbeError::Timeout {
                    url,
                    timeout: self.shared.timeout,
                })
            }
            Err(ForwardError::TooLarge) => {
                return Err(ProbeError::NotANode {
                    url,
                    reason: format!("an answer over {} bytes", self.shared.max_answer_bytes),
                })
            }
        };
        let not_a_node = |reason: String| ProbeError::NotANode {
            url: url.clone(),
            reason,
        };
        if status != 200 {
            return Err(not_a_node(format!("HTTP {status}: {}", excerpt(&body))));
        }
        let Ok(serde_json::Value::Object(answer)) = serde_json::from_slice(&body) else {
            return Err(not_a_node(format!("not a JSON object: {}", excerpt(&body))));
        };
        let field = |name: &str| answer.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        if let Some(error) = field("error") {
            return Err(not_a_node(format!("error {error:?}")));
        }
        Ok(NodeVersion {
            node_vendor: field("node_vendor"),
            network: field("network"),
            rpc_version: field("rpc_version"),
        })
    }

    /// One `POST /` with `body`; the node's status and its whole body, read up to the cap,
    /// all within the relay's timeout.
    async fn post(&self, body: Bytes) -> Result<(u16, Vec<u8>), ForwardError> {
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        // Origin form: the path only, on a connection to the node's host and port.
        *request.uri_mut() = Uri::from_static("/");
        let headers = request.headers_mut();
        headers.insert(HOST, self.shared.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let connections = &self.shared.connections;
        let exchange = async {
            let (mut connection, mut reused) = match connections.reuse().await {
                Some(connection) => (connection, true),
                None => (
                    connections
                        .open()
                        .await
                        .map_err(ForwardError::Unreachable)?,
                    false,
                ),
            };
            let response = loop {
                match connection.try_send_request(request).await {
                    Ok(response) => break response,
                    Err(mut error) => match error.take_message() {
                        // The node closed a kept-alive connection before the request
                        // went out on it: once more, on a new connection.
                        Some(unsent) if reused => {
                            request = unsent;
                            reused = false;
                            connection = connections
                                .open()
                                .await
                                .map_err(ForwardError::Unreachable)?;
                        }
                        _ => return Err(ForwardError::Broken(causes(&error.into_error()))),
                    },
                }
            };
            let status = response.status().as_u16();
            let limit = self.shared.max_answer_bytes;
            let announced = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let mut answer = match announced {
                Some(len) if len <= limit as u64 => Vec::with_capacity(len as usize),
                Some(_) => return Err(ForwardError::TooLarge),
                None => Vec::new(),
            };
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ForwardError::Broken(causes(&e)))?;
                if let Ok(chunk) = frame.into_data() {
                    if chunk.len() > limit - answer.len() {
                        return Err(ForwardError::TooLarge);
                    }
                    answer.extend_from_slice(&chunk);
                }
            }
            // Read to the end: the connection can take the next request.
            connections.put_back(connection);
            Ok((status, answer))
        };
        tokio::time::timeout(self.shared.timeout, exchange)
            .await
            .unwrap_or(Err(ForwardError::Timeout))
    }

    /// Posts a request the stack's policy checked already (the [`Forward`] of a relay).
    pub async fn forward(&self, request: CheckedRequest, peer: SocketAddr) -> Reply {
        match self.post(request.body().clone()).await {
            Ok((status, body)) => Reply::Answer { status, body },
            Err(error) => {
                let error = self.wire_error(error);
                tracing::warn!(%peer, code = %error.code, "{}", error.message);
                Reply::Failure(error)
            }
        }
    }

    /// The wire error a caller gets for `error`.
    fn wire_error(&self, error: ForwardError) -> WireError {
        let url = &self.shared.endpoint;
        match error {
            ForwardError::Unreachable(reason) => WireError::new(
                ErrorCode::UpstreamUnreachable,
                format!("Nano node at {url} is unreachable: {reason}"),
            ),
            ForwardError::Broken(reason) => WireError::new(
                ErrorCode::UpstreamUnreachable,
                format!("Nano node at {url} broke off the exchange: {reason}"),
            ),
            ForwardError::Timeout => WireError::new(
                ErrorCode::UpstreamTimeout,
                format!(
                    "Nano node at {url} did not answer within {:?}",
                    self.shared.timeout
                ),
            ),
            ForwardError::TooLarge => WireError::new(
                ErrorCode::Internal,
                format!(
                    "the Nano node's answer is larger than this relay's limit of {} bytes",
                    self.shared.max_answer_bytes
                ),
            ),
        }
    }
}

impl Handler for NanoRelay {
    async fn handle(&self, request: Request) -> Reply {
        match self.shared.policy.check(&request.body) {
            Ok(checked) => self.forward(checked, request.peer).await,
            Err(refusal) => {
                tracing::debug!(peer = %request.peer, %refusal, "nano relay refused a request");
                Reply::Failure(refusal.into())
            }
        }
    }
}

impl Forward for NanoRelay {
    fn forward(
        &self,
        request: CheckedRequest,
        peer: SocketAddr,
    ) -> impl Future<Output = Reply> + Send {
        NanoRelay::forward(self, request, peer)
    }
}

/// The error and its causes, joined by ": ".
fn causes(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts.join(": ")
}

/// The first 200 bytes of a body, as lossy UTF-8 on one line.
fn excerpt(body: &[u8]) -> String {
    let head = String::from_utf8_lossy(&body[..body.len().min(200)]);
    head.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `host` header for `uri`, as hyper's client writes it: the authority, without the
/// port when it is http's default, 80.
fn host_header(uri: &Uri) -> Result<HeaderValue, String> {
    let authority = uri.authority().ok_or("no host")?;
    let host = match authority.port_u16() {
        Some(80) => authority.host(),
        _ => authority.as_str(),
    };
    HeaderValue::from_str(host).map_err(|e| e.to_string())
}

/// `node_url` reduced to scheme, host and port, with path `/`.
fn endpoint(node_url: &str) -> Result<Url, NanoRelayError> {
    let invalid = |reason: String| NanoRelayError::InvalidUrl {
        url: node_url.to_string(),
        reason,
    };
    let mut url = Url::parse(node_url).map_err(|e| invalid(e.to_string()))?;
    if url.scheme() != "http" {
        return Err(NanoRelayError::UnsupportedScheme {
            url: node_url.to_string(),
            scheme: url.scheme().to_string(),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".to_string()));
    }
    let extra = url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some();
    url.set_path("/");
    url.set_query(None);
    url.set_fragment(None);
    // These fail only for URLs without a host, excluded above.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if extra {
        tracing::warn!(
            configured = node_url,
            used = %url,
            "the Nano relay posts to path / only: ignoring the path, query and user of the node URL"
        );
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A minimal HTTP/1.1 node on loopback that answers every POST with `{}` and counts
    /// the connections it accepted; with `close_after` it closes each connection after
    /// that many answers (as a node whose keep-alive limit is reached).
    async fn counting_node(close_after: Option<usize>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut answered = 0;
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = socket.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        // One request: head, then content-length bytes of body.
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if buffer.len() < end + 4 + length {
                                break;
                            }
                            buffer.drain(..end + 4 + length);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                            if socket.write_all(answer).await.is_err() {
                                return;
                            }
                            answered += 1;
                            if close_after == Some(answered) {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    fn relay_to(url: &str) -> NanoRelay {
        NanoRelay::new(NanoRelayConfig {
            node_url: url.to_string(),
            timeout: Duration::from_secs(5),
            ..NanoRelayConfig::default()
        })
        .expect("relay")
    }

    #[tokio::test]
    async fn kept_alive_connections_are_reused() {
        let (url, accepted) = counting_node(None).await;
        let relay = relay_to(&url);
        for _ in 0..20 {
            assert_eq!(
                relay
                    .post(Bytes::from_static(b"{}"))
                    .await
                    .expect("answer")
                    .0,
                200
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for 20 in a row"
        );
        let many: Vec<_> = (0..8)
            .map(|_| relay.post(Bytes::from_static(b"{}")))
            .collect();
        for answer in futures::future::join_all(many).await {
            assert_eq!(answer.expect("answer").0, 200);
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!(
            (1..=8).contains(&opened),
            "{opened} connections for 8 at once"
        );
        for _ in 0..20 {
            relay.post(Bytes::from_static(b"{}")).await.expect("answer");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), opened, "the 8 were kept");
    }

    /// A node that closes each connection after one answer: every request still gets its
    /// answer, on a new connection, never a broken exchange.
    #[tokio::test]
    async fn a_connection_the_node_closed_is_replaced() {
        let (url, accepted) = counting_node(Some(1)).await;
        let relay = relay_to(&url);
        for i in 0..20 {
            let answer = relay.post(Bytes::from_static(b"{}")).await;
            assert!(matches!(answer, Ok((200, _))), "request {i}: {answer:?}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 20);
    }

    #[test]
    fn endpoint_keeps_scheme_host_and_port_only() {
        for (given, used) in [
            ("http://127.0.0.1:7076", "http://127.0.0.1:7076/"),
            ("http://127.0.0.1:7076/api/v2", "http://127.0.0.1:7076/"),
            ("http://user:pw@[::1]:45000/x?y=1#z", "http://[::1]:45000/"),
            ("http://localhost", "http://localhost/"),
        ] {
            assert_eq!(endpoint(given).unwrap().as_str(), used, "{given}");
        }
    }

    #[test]
    fn the_host_header_is_the_authority_without_port_80() {
        for (url, host) in [
            ("http://127.0.0.1:7076/", "127.0.0.1:7076"),
            ("http://node.example:80/", "node.example"),
            ("http://[::1]:45000/", "[::1]:45000"),
            ("http://localhost/", "localhost"),
        ] {
            let uri: Uri = url.parse().expect("URI");
            assert_eq!(host_header(&uri).expect("host"), host, "{url}");
        }
    }

    #[test]
    fn endpoint_refuses_other_schemes_and_garbage() {
        assert!(matches!(
            endpoint("https://node.example:7076"),
            Err(NanoRelayError::UnsupportedScheme { scheme, .. }) if scheme == "https"
        ));
        for bad in ["", "127.0.0.1:7076", "http://", "not a url"] {
            assert!(endpoint(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn default_config_says_its_defaults() {
        let config = NanoRelayConfig::default();
        assert_eq!(config.node_url, "http://127.0.0.1:7076");
        assert_eq!(config.timeout, Duration::from_secs(10));
        assert_eq!(config.max_answer_bytes, 4 * 1024 * 1024);
        assert_eq!(config.policy, Policy::read_only());
    }

    #[test]
    fn excerpt_is_short_and_one_line() {
        let body = format!("line one\nline two {}", "x".repeat(1000));
        let e = excerpt(body.as_bytes());
        assert!(!e.contains('\n'));
        assert!(e.len() <= 200);
    }
}
