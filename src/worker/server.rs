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
use crate::transport::admission::Admission;
use crate::transport::{bind_udp, server_endpoint, QuicConfig, TransportError};
use tokio::sync::watch;

use super::{CLOSE_NORMAL, STOP_REFUSED};

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
    /// [`RECORD_SERVICE`] (a grape asks it for browsers, docs/protocol.md §8). `None`:
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
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared { config, handler });
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

/// What every connection of a server shares: its settings and the service.
pub(crate) struct Shared<H> {
    pub(crate) config: RpcServerConfig,
    pub(crate) handler: H,
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
            Ok((mut send, mut recv)) => {
                let shared = shared.clone();
                let peer = connection.remote_address();
                streams
                    .spawn(async move { serve_stream(&mut send, &mut recv, peer, &shared).await });
            }
            Err(e) => {
                debug!(reason = %e, "connection closed");
                break;
            }
        }
    }
    streams.shutdown().await;
}

/// Reads one request, answers it, finishes the stream. Never panics on peer input.
/// Native QUIC streams and WebTransport streams (`src/web/`) both come here, so that
/// both faces meet one policy, one set of limits and one set of metrics.
pub(crate) async fn serve_stream<H: Handler>(
    send: &mut SendStream,
    recv: &mut RecvStream,
    peer: SocketAddr,
    shared: &Shared<H>,
) {
    let config = &shared.config;
    let request = match tokio::time::timeout(
        config.read_timeout,
        read_request(recv, config.max_request_bytes),
    )
    .await
    {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            debug!(%e, "bad request frame");
            if matches!(e, FrameError::TooLarge { .. }) {
                let _ = recv.stop(STOP_REFUSED.into());
            }
            let error = WireError::new(e.code(), e.to_string());
            write_response(send, ResponseFrame::failure(0, error), config).await;
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
            write_response(send, ResponseFrame::failure(0, error), config).await;
            return;
        }
    };
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
        let reply = shared
            .handler
            .handle(Request {
                key: request.key,
                body: request.body,
                peer,
            })
            .await;
        match reply {
            Reply::Answer { status, body } => ResponseFrame::answer(id, status, body),
            Reply::Failure(error) => ResponseFrame::failure(id, error),
        }
    };
    write_response(send, response, config).await;
}

/// A worker's RPC service on its WebTransport face: the streams go through
/// [`serve_stream`] exactly as native ones do.
pub(crate) struct WebRpc<H> {
    shared: Arc<Shared<H>>,
}

impl<H: Handler> WebRpc<H> {
    pub(crate) fn new(config: RpcServerConfig, handler: H) -> Self {
        Self {
            shared: Arc::new(Shared { config, handler }),
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
        serve_stream(send, recv, peer, &self.shared)
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

/// Reads the one request frame of a stream, at most `limit` bytes after the prefix.
pub(crate) async fn read_request(
    recv: &mut RecvStream,
    limit: usize,
) -> Result<RequestFrame, FrameError> {
    let mut prefix = [0u8; frame::LENGTH_PREFIX_LEN];
    if let Err(e) = recv.read_exact(&mut prefix).await {
        return Err(match e {
            quinn::ReadExactError::FinishedEarly(got) => FrameError::Truncated {
                expected: frame::LENGTH_PREFIX_LEN,
                got,
            },
            quinn::ReadExactError::ReadError(e) => FrameError::Malformed(e.to_string()),
        });
    }
    let len = frame::body_len(prefix, limit)?;
    // Read to the end of the stream: a caller sends exactly one frame and finishes.
    let body = match recv.read_to_end(len).await {
        Ok(body) => body,
        Err(quinn::ReadToEndError::TooLong) => {
            return Err(FrameError::Malformed(format!(
                "more than the {len} bytes the length prefix announced"
            )))
        }
        Err(quinn::ReadToEndError::Read(e)) => return Err(FrameError::Malformed(e.to_string())),
    };
    if body.len() < len {
        return Err(FrameError::Truncated {
            expected: len,
            got: body.len(),
        });
    }
    frame::decode_body(&body)
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
