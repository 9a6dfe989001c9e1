//! The worker side of the RPC protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::defaults::{
    DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_STREAM_READ_TIMEOUT,
};
use crate::protocol::frame::{self, ErrorCode, FrameError, RequestFrame, ResponseFrame, WireError};
use crate::protocol::identity::NodeKey;
use crate::service::{Handler, Reply, Request};
use crate::subscription::SubscriptionService;
use crate::transport::{bind_udp, server_endpoint, QuicConfig, TransportError};

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
    /// QUIC settings.
    pub quic: QuicConfig,
    /// The node key every handshake proves. Default: a fresh random key (an identity
    /// that lives as long as the server; workers load theirs from a key file).
    pub identity: NodeKey,
}

impl Default for RpcServerConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            read_timeout: DEFAULT_STREAM_READ_TIMEOUT,
            quic: QuicConfig::default(),
            identity: NodeKey::generate(),
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

    /// Serves `handler`, and subscription sessions (docs/protocol.md §6) with `sessions`
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

struct Shared<H> {
    config: RpcServerConfig,
    handler: H,
    sessions: Option<Arc<dyn SubscriptionService>>,
}

async fn accept_loop<H: Handler>(
    endpoint: Endpoint,
    shared: Arc<Shared<H>>,
    cancel: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    warn!(%e, "connection task failed");
                }
                continue;
            }
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let shared = shared.clone();
        let cancel = cancel.clone();
        let remote = incoming.remote_address();
        connections.spawn(
            async move {
                match incoming.await {
                    Ok(connection) => serve_connection(connection, shared, cancel).await,
                    Err(e) => debug!(%e, "handshake failed"),
                }
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

/// Reads the stream's first frame: a subscription session's goes to
/// [`subscriptions::serve`], an RPC request is answered here and the stream finished.
/// Never panics on peer input.
async fn serve_stream<H: Handler>(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: SocketAddr,
    shared: &Shared<H>,
    cancel: CancellationToken,
) {
    let config = &shared.config;
    let first = tokio::time::timeout(config.read_timeout, async {
        let session_limit = shared
            .sessions
            .as_ref()
            .map(|_| subscriptions::MAX_FIRST_FRAME_BYTES);
        let body = read_first(&mut recv, config.max_request_bytes, session_limit).await?;
        if subscriptions::opens_session(&body) {
            return Ok(First::Session(body));
        }
        if body.len() > config.max_request_bytes {
            return Err(FrameError::TooLarge {
                len: body.len(),
                limit: config.max_request_bytes,
            });
        }
        read_end(&mut recv, body.len()).await?;
        frame::decode_body(&body).map(First::Request)
    })
    .await;
    let request = match first {
        Ok(Ok(First::Session(body))) => {
            let sessions = shared.sessions.as_deref();
            let keys = &config.keys;
            subscriptions::serve(body, send, recv, peer, keys, sessions, cancel).await;
            return;
        }
        Ok(Ok(First::Request(request))) => request,
        Ok(Err(e)) => {
            debug!(%e, "bad request frame");
            if matches!(e, FrameError::TooLarge { .. }) {
                let _ = recv.stop(STOP_REFUSED.into());
            }
            let error = WireError::new(e.code(), e.to_string());
            write_response(&mut send, ResponseFrame::failure(0, error), config).await;
            return;
        }
        Err(_) => {
            let _ = recv.stop(STOP_REFUSED.into());
            let error = WireError::new(
                ErrorCode::MalformedFrame,
                format!(
                    "no complete request frame within {} ms",
                    config.read_timeout.as_millis()
                ),
            );
            write_response(&mut send, ResponseFrame::failure(0, error), config).await;
            return;
        }
    };
    let id = request.id;
    let response = if !config.keys.is_empty() && !config.keys.contains(&request.key) {
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
        // Boxed: this function's state is as large as its largest await, and a
        // subscription session's task keeps it for hours (see `First::Session` above).
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
    write_response(&mut send, response, config).await;
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

async fn write_response(send: &mut SendStream, response: ResponseFrame, config: &RpcServerConfig) {
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
