//! The worker side of the RPC protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::defaults::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_STREAM_READ_TIMEOUT,
};
use crate::protocol::frame::{self, ErrorCode, FrameError, RequestFrame, ResponseFrame, WireError};
use crate::protocol::identity::NodeKey;
use crate::protocol::record::{WireRecord, RECORD_SERVICE};
use crate::service::{Handler, Reply, Request};
use crate::subscription::SubscriptionService;
use crate::transport::admission::Admission;
use crate::transport::{bind_udp, server_endpoint, QuicConfig, TransportError};
use tokio::sync::watch;

use super::{subscriptions, CLOSE_NORMAL, STOP_REFUSED};

/// Settings of an [`RpcServer`].
#[derive(Debug, Clone)]
pub struct RpcServerConfig {
    /// Service keys this worker answers; a request for another key gets
    /// `unknown_service`. Empty answers every key.
    pub keys: Vec<String>,
    /// Largest request frame accepted, bytes (prefix not counted). Default 64 KiB.
    pub max_request_bytes: usize,
    /// Largest response frame sent, bytes; a larger answer becomes an `internal` error
    /// frame. Default 8 MiB.
    pub max_response_bytes: usize,
    /// Time allowed for a caller to send its whole request frame. Default 10 s.
    pub read_timeout: Duration,
    /// QUIC connections open at once (handshakes included); more are refused before
    /// their handshake. Default 1024.
    pub max_connections: usize,
    /// QUIC connections from one IP address at once. Default 64.
    pub max_connections_per_ip: usize,
    /// QUIC settings.
    pub quic: QuicConfig,
    /// The node key every handshake proves. Default: a fresh random key (an identity
    /// that lives as long as the server; workers load theirs from a key file).
    pub identity: NodeKey,
    /// The worker's current signed record, answered to requests for
    /// [`RECORD_SERVICE`] (a grape asks it for browsers, docs/protocol.md §9). `None`:
    /// such requests get `unknown_service`.
    pub record: Option<watch::Receiver<Option<WireRecord>>>,
}

impl Default for RpcServerConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            read_timeout: DEFAULT_STREAM_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            quic: QuicConfig::default(),
            identity: NodeKey::generate(),
            record: None,
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The UDP socket or QUIC endpoint could not be made.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// A running RPC server. Dropping it does not stop it; call [`RpcServer::shutdown`].
#[derive(Debug)]
pub struct RpcServer {
    endpoint: Endpoint,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RpcServer {
    /// Binds UDP `addr` (port 0 = any) and serves `handler` on it.
    ///
    /// Errors: [`ServerError::Transport`] when the port is taken or QUIC set-up fails.
    pub async fn bind<H: Handler>(
        addr: SocketAddr,
        config: RpcServerConfig,
        handler: H,
    ) -> Result<Self, ServerError> {
        let socket = bind_udp(addr).map_err(|source| TransportError::Bind { addr, source })?;
        let endpoint = server_endpoint(socket, &config.quic, &config.identity)?;
        Ok(Self::serve(endpoint, config, handler))
    }

    /// Serves `handler` on an endpoint made by the caller (it must have a server config).
    pub fn serve<H: Handler>(endpoint: Endpoint, config: RpcServerConfig, handler: H) -> Self {
        Self::serve_with_sessions(endpoint, config, handler, None)
    }

    /// Serves `handler`, and subscription sessions (docs/protocol.md §8) with `sessions`
    /// when given (without, a stream that opens a session is refused).
    pub fn serve_with_sessions<H: Handler>(
        endpoint: Endpoint,
        config: RpcServerConfig,
        handler: H,
        sessions: Option<Arc<dyn SubscriptionService>>,
    ) -> Self {
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            config,
            handler,
            sessions,
        });
        let task = tokio::spawn(accept_loop(endpoint.clone(), shared, cancel.clone()));
        Self {
            endpoint,
            cancel,
            task,
        }
    }

    /// The UDP address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The QUIC endpoint (for statistics or to dial out from the same socket).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Stops accepting, closes every connection with code 0, and waits up to `grace` for
    /// peers to learn of it.
    pub async fn shutdown(self, grace: Duration) {
        self.cancel.cancel();
        self.endpoint
            .close(CLOSE_NORMAL.into(), b"worker shutting down");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
        let _ = self.task.await;
    }
}

/// What every connection of a server shares: its settings, the service, and the
/// subscription sessions' service (native QUIC streams only).
pub(crate) struct Shared<H> {
    pub(crate) config: RpcServerConfig,
    pub(crate) handler: H,
    pub(crate) sessions: Option<Arc<dyn SubscriptionService>>,
}

async fn accept_loop<H: Handler>(
    endpoint: Endpoint,
    shared: Arc<Shared<H>>,
    cancel: CancellationToken,
) {
    let mut connections = JoinSet::new();
    let mut admission = Admission::new(
        shared.config.max_connections,
        shared.config.max_connections_per_ip,
    );
    loop {
        let incoming = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                match done {
                    Ok(ip) => admission.release(ip),
                    Err(e) => warn!(%e, "connection task failed"),
                }
                continue;
            }
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        let ip = remote.ip();
        if !admission.admit(ip) {
            // Before the handshake: a refused connection costs one datagram.
            debug!(%remote, open = admission.open(), from_ip = admission.from_ip(ip), "connection refused: over the limits");
            incoming.refuse();
            continue;
        }
        let shared = shared.clone();
        let cancel = cancel.clone();
        connections.spawn(
            async move {
                match incoming.await {
                    Ok(connection) => serve_connection(connection, shared, cancel).await,
                    Err(e) => debug!(%e, "handshake failed"),
                }
                ip
            }
            .instrument(tracing::debug_span!("conn", %remote)),
        );
    }
    connections.shutdown().await;
}

async fn serve_connection<H: Handler>(
    connection: Connection,
    shared: Arc<Shared<H>>,
    cancel: CancellationToken,
) {
    debug!("connection open");
    let mut streams = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(_) = streams.join_next(), if !streams.is_empty() => continue,
            accepted = connection.accept_bi() => accepted,
        };
        match accepted {
            Ok((send, recv)) => {
                let shared = shared.clone();
                let peer = connection.remote_address();
                let cancel = cancel.clone();
                streams.spawn(async move { serve_stream(send, recv, peer, &shared, cancel).await });
            }
            Err(e) => {
                debug!(reason = %e, "connection closed");
                break;
            }
        }
    }
    streams.shutdown().await;
}

/// Reads a native stream's first frame: a subscription session's goes to
/// [`subscriptions::serve`], an RPC request is answered here and the stream finished.
/// Never panics on peer input.
async fn serve_stream<H: Handler>(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: SocketAddr,
    shared: &Shared<H>,
    cancel: CancellationToken,
) {
    match read_opening(&mut recv, shared).await {
        Ok(First::Session(body)) => {
            let sessions = shared.sessions.as_deref();
            let keys = &shared.config.keys;
            subscriptions::serve(body, send, recv, peer, keys, sessions, cancel).await;
        }
        Ok(First::Request(request)) => answer(request, &mut send, peer, shared).await,
        Err(e) => refuse_opening(e, &mut send, &mut recv, &shared.config).await,
    }
}

/// Reads one request from a stream the caller keeps (a WebTransport stream, `src/web/`),
/// answers it and finishes. Native and WebTransport requests meet one policy, one set of
/// limits and one set of metrics, here and in [`answer`]. Sessions are not served on
/// such streams: their opening frame is answered with `unknown_service`.
pub(crate) async fn serve_request_stream<H: Handler>(
    send: &mut SendStream,
    recv: &mut RecvStream,
    peer: SocketAddr,
    shared: &Shared<H>,
) {
    match read_opening(recv, shared).await {
        Ok(First::Request(request)) => answer(request, send, peer, shared).await,
        Ok(First::Session(_)) => {
            let error = WireError::new(
                ErrorCode::UnknownService,
                "subscription sessions are served on native QUIC streams only",
            );
            write_response(send, ResponseFrame::failure(0, error), &shared.config).await;
        }
        Err(e) => refuse_opening(e, send, recv, &shared.config).await,
    }
}

/// Why a stream's first frame could not be read.
enum OpeningError {
    /// The bytes were not one well-formed frame within the limits.
    Frame(FrameError),
    /// No complete frame within the read timeout.
    TimedOut,
}

/// Reads a stream's first frame within the read timeout.
async fn read_opening<H>(recv: &mut RecvStream, shared: &Shared<H>) -> Result<First, OpeningError> {
    let config = &shared.config;
    let first = tokio::time::timeout(config.read_timeout, async {
        let session_limit = shared
            .sessions
            .as_ref()
            .map(|_| subscriptions::MAX_FIRST_FRAME_BYTES);
        let body = read_first(recv, config.max_request_bytes, session_limit).await?;
        if subscriptions::opens_session(&body) {
            return Ok(First::Session(body));
        }
        if body.len() > config.max_request_bytes {
            return Err(FrameError::TooLarge {
                len: body.len(),
                limit: config.max_request_bytes,
            });
        }
        read_end(recv, body.len()).await?;
        frame::decode_body(&body).map(First::Request)
    })
    .await;
    match first {
        Ok(Ok(first)) => Ok(first),
        Ok(Err(e)) => Err(OpeningError::Frame(e)),
        Err(_) => Err(OpeningError::TimedOut),
    }
}

/// Answers a first frame that could not be read, and stops reading when more would come.
async fn refuse_opening(
    e: OpeningError,
    send: &mut SendStream,
    recv: &mut RecvStream,
    config: &RpcServerConfig,
) {
    let error = match e {
        OpeningError::Frame(e) => {
            debug!(%e, "bad request frame");
            if matches!(e, FrameError::TooLarge { .. }) {
                let _ = recv.stop(STOP_REFUSED.into());
            }
            WireError::new(e.code(), e.to_string())
        }
        OpeningError::TimedOut => {
            let _ = recv.stop(STOP_REFUSED.into());
            WireError::new(
                ErrorCode::MalformedFrame,
                format!(
                    "no complete request frame within {} ms",
                    config.read_timeout.as_millis()
                ),
            )
        }
    };
    write_response(send, ResponseFrame::failure(0, error), config).await;
}

/// Answers one request: the worker's own record for [`RECORD_SERVICE`], a refusal for a
/// key this worker does not serve, else the handler's reply.
async fn answer<H: Handler>(
    request: RequestFrame,
    send: &mut SendStream,
    peer: SocketAddr,
    shared: &Shared<H>,
) {
    let config = &shared.config;
    let id = request.id;
    let response = if request.key == RECORD_SERVICE {
        own_record(id, &request.body, config)
    } else if !config.keys.is_empty() && !config.keys.contains(&request.key) {
        ResponseFrame::failure(
            id,
            WireError::new(
                ErrorCode::UnknownService,
                format!(
                    "this worker serves {:?}, not {:?}",
                    config.keys, request.key
                ),
            ),
        )
    } else {
        // Boxed: a stream task's state is as large as its largest await, and a
        // subscription session's task keeps it for hours.
        let reply = Box::pin(shared.handler.handle(Request {
            key: request.key,
            body: request.body,
            peer,
        }))
        .await;
        match reply {
            Reply::Answer { status, body } => ResponseFrame::answer(id, status, body),
            Reply::Failure(error) => ResponseFrame::failure(id, error),
        }
    };
    write_response(send, response, config).await;
}

/// A worker's RPC service on its WebTransport face: the streams go through
/// [`serve_request_stream`], to the same [`answer`] as native ones.
pub(crate) struct WebRpc<H> {
    shared: Arc<Shared<H>>,
}

impl<H: Handler> WebRpc<H> {
    pub(crate) fn new(config: RpcServerConfig, handler: H) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                handler,
                sessions: None,
            }),
        }
    }
}

impl<H: Handler> crate::web::WebService for WebRpc<H> {
    fn serve_stream<'a>(
        &'a self,
        send: &'a mut SendStream,
        recv: &'a mut RecvStream,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        serve_request_stream(send, recv, peer, &self.shared)
    }
}

/// The answer to a [`RECORD_SERVICE`] request: the record for the service key in `body`,
/// MessagePack-encoded (named fields, as in broker messages).
fn own_record(id: u64, body: &[u8], config: &RpcServerConfig) -> ResponseFrame {
    let current = config.record.as_ref().and_then(|r| r.borrow().clone());
    match current {
        Some(record) if record.salt.as_bytes() == body => match rmp_serde::to_vec_named(&record) {
            Ok(bytes) => ResponseFrame::answer(id, 200, bytes),
            Err(e) => {
                ResponseFrame::failure(id, WireError::new(ErrorCode::Internal, e.to_string()))
            }
        },
        _ => ResponseFrame::failure(
            id,
            WireError::new(
                ErrorCode::UnknownService,
                "this worker has no record for that service key (yet)",
            ),
        ),
    }
}

/// Reads the one request frame of a stream, at most `limit` bytes after the prefix, to
/// the end of the stream (a caller sends exactly one frame and finishes).
pub(crate) async fn read_request(
    recv: &mut RecvStream,
    limit: usize,
) -> Result<RequestFrame, FrameError> {
    let body = read_first(recv, limit, None).await?;
    read_end(recv, body.len()).await?;
    frame::decode_body(&body)
}

/// What a stream's first frame opened.
enum First {
    Request(RequestFrame),
    Session(Vec<u8>),
}

/// Reads the first frame's prefix and body (not the end of the stream: a session's
/// stream stays open). Up to `limit` bytes for a request, and up to `session_limit` for a
/// session's `subscribe` when the server serves sessions; which one it is is known only
/// from the body.
async fn read_first(
    recv: &mut RecvStream,
    limit: usize,
    session_limit: Option<usize>,
) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; frame::LENGTH_PREFIX_LEN];
    read_exact(recv, &mut prefix).await?;
    let len =
        frame::body_len(prefix, limit.max(session_limit.unwrap_or(0))).map_err(|e| match e {
            FrameError::TooLarge { len, .. } => FrameError::TooLarge { len, limit },
            e => e,
        })?;
    let mut body = vec![0u8; len];
    read_exact(recv, &mut body).await?;
    Ok(body)
}

async fn read_exact(recv: &mut RecvStream, buf: &mut [u8]) -> Result<(), FrameError> {
    recv.read_exact(buf).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(got) => FrameError::Truncated {
            expected: buf.len(),
            got,
        },
        quinn::ReadExactError::ReadError(e) => FrameError::Malformed(e.to_string()),
    })
}

/// Waits for the end of a request's stream: a caller sends exactly one frame of `len`
/// bytes and finishes.
async fn read_end(recv: &mut RecvStream, len: usize) -> Result<(), FrameError> {
    match recv.read_to_end(0).await {
        Ok(_) => Ok(()),
        Err(quinn::ReadToEndError::TooLong) => Err(FrameError::Malformed(format!(
            "more than the {len} bytes the length prefix announced"
        ))),
        Err(quinn::ReadToEndError::Read(e)) => Err(FrameError::Malformed(e.to_string())),
    }
}

/// Writes `response` (or an `internal` error frame when it is too large) and finishes.
pub(crate) async fn write_response(
    send: &mut SendStream,
    response: ResponseFrame,
    config: &RpcServerConfig,
) {
    let id = response.id;
    let bytes = match frame::encode(&response, config.max_response_bytes) {
        Ok(bytes) => bytes,
        Err(e) => {
            info!(%e, "answer too large for a response frame");
            let error = WireError::new(
                ErrorCode::Internal,
                format!("the answer does not fit a response frame: {e}"),
            );
            match frame::encode(
                &ResponseFrame::failure(id, error),
                config.max_response_bytes,
            ) {
                Ok(bytes) => bytes,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = send.write_all(&bytes).await {
        debug!(%e, "caller went away before the answer was written");
        return;
    }
    let _ = send.finish();
}
