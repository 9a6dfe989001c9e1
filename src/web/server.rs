//! A WebTransport endpoint (W3C WebTransport over HTTP/3, RFC 9220) on a UDP port of its
//! own, built on `wtransport` and quinn, that rotates its browser certificates.
//!
//! - Sessions are admitted like native connections ([`Admission`]): at most
//!   `max_sessions` at once and `max_sessions_per_ip` from one IP, refused before the
//!   handshake.
//! - A session must ask for [`WEB_PATH`]; any other path gets HTTP 404.
//! - Each bidirectional stream goes to the [`WebService`] (one request, one answer).
//! - The certificate served changes when the ring rotates ([`CertRing::advance`]); open
//!   sessions keep theirs. [`WebServer::listing`] tells records the port and hashes.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use wtransport::tls::{Certificate, CertificateChain, Identity, PrivateKey};

use super::cert::{BrowserCert, CertError, CertPolicy, CertRing};
use super::WebListing;
use crate::defaults::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP};
use crate::protocol::web::{WebEndpoint, WEB_PATH};
use crate::transport::admission::Admission;
use crate::transport::{bind_udp, QuicConfig};
use crate::worker::presence::unix_ms;

/// Settings of a [`WebServer`].
#[derive(Debug, Clone)]
pub struct WebServerConfig {
    /// UDP address to bind (port 0 = any free port).
    pub bind: SocketAddr,
    /// Certificate lifetime and rotation period.
    pub policy: CertPolicy,
    /// Certificates to start from (a grape's stored ring); default a fresh ring.
    pub ring: Option<CertRing>,
    /// Where the ring is kept across restarts and rewritten at each rotation (a grape's,
    /// whose hashes pages carry in bootstrap strings). `None`: not kept.
    pub ring_file: Option<PathBuf>,
    /// Sessions open at once (handshakes included). Default 1024.
    pub max_sessions: usize,
    /// Sessions from one IP address at once. Default 64.
    pub max_sessions_per_ip: usize,
    /// Keep-alive, idle timeout and streams per session.
    pub quic: QuicConfig,
}

impl Default for WebServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            policy: CertPolicy::default(),
            ring: None,
            ring_file: None,
            max_sessions: DEFAULT_MAX_CONNECTIONS,
            max_sessions_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            quic: QuicConfig::default(),
        }
    }
}

/// Why a [`WebServer`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// The UDP port could not be bound.
    #[error("cannot bind UDP {addr} for WebTransport: {source} (pick another port, or 0 for any)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The certificates could not be made or read.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The certificate file could not be written.
    #[error("cannot keep the WebTransport certificates in {path}: {source}")]
    RingFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS or QUIC set-up failed (a bug or a broken certificate).
    #[error("WebTransport set-up failed: {0}")]
    Setup(String),
}

/// What serves the streams of a session: one request frame in, one response frame out,
/// then the stream is finished. It must never panic on peer input.
pub trait WebService: Send + Sync + 'static {
    /// Serves one bidirectional stream of a session from `peer`.
    fn serve_stream<'a>(
        &'a self,
        send: &'a mut quinn::SendStream,
        recv: &'a mut quinn::RecvStream,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'a;
}

/// A running WebTransport endpoint. Stop it with [`WebServer::shutdown`].
pub struct WebServer {
    addr: SocketAddr,
    listing: watch::Receiver<WebListing>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    endpoint: Arc<wtransport::Endpoint<wtransport::endpoint::endpoint_side::Server>>,
}

impl std::fmt::Debug for WebServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebServer")
            .field("addr", &self.addr)
            .field("listing", &*self.listing.borrow())
            .finish_non_exhaustive()
    }
}

impl WebServer {
    /// Binds `config.bind` and serves `service` on it.
    ///
    /// Errors: [`WebError::Bind`], [`WebError::Cert`], [`WebError::RingFile`],
    /// [`WebError::Setup`].
    pub fn bind<S: WebService>(config: WebServerConfig, service: S) -> Result<Self, WebError> {
        let now = unix_ms();
        let mut ring = match (&config.ring, &config.ring_file) {
            (Some(ring), _) => ring.clone(),
            (None, Some(path)) => load_ring(path).unwrap_or(CertRing::new(&config.policy, now)?),
            (None, None) => CertRing::new(&config.policy, now)?,
        };
        ring.advance(&config.policy, now)?;
        if let Some(path) = &config.ring_file {
            store_ring(path, &ring)?;
        }
        let socket = bind_udp(config.bind).map_err(|source| WebError::Bind {
            addr: config.bind,
            source,
        })?;
        let addr = socket.local_addr().map_err(|source| WebError::Bind {
            addr: config.bind,
            source,
        })?;
        let server_config = server_config(
            wtransport::ServerConfig::builder().with_bind_socket(socket),
            &ring.current,
            &config.quic,
        )?;
        let endpoint = Arc::new(
            wtransport::Endpoint::server(server_config)
                .map_err(|e| WebError::Setup(e.to_string()))?,
        );
        let (listing_tx, listing) = watch::channel(WebListing {
            port: addr.port(),
            sha256: ring.hashes_hex(),
        });
        let cancel = CancellationToken::new();
        info!(%addr, sha256 = ?ring.hashes_hex(), "WebTransport face serving");
        let task = tokio::spawn(run(
            endpoint.clone(),
            config,
            ring,
            listing_tx,
            Arc::new(service),
            cancel.clone(),
        ));
        Ok(Self {
            addr,
            listing,
            cancel,
            task,
            endpoint,
        })
    }

    /// The UDP address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port and the hashes served now and next; changes at each rotation.
    pub fn listing(&self) -> watch::Receiver<WebListing> {
        self.listing.clone()
    }

    /// This endpoint as a page would be given it, at `addr` (the address callers use,
    /// for a server bound to 0.0.0.0), with the current hashes.
    pub fn endpoint_at(&self, addr: SocketAddr) -> WebEndpoint {
        let sha256 = self
            .listing
            .borrow()
            .sha256
            .iter()
            .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect();
        WebEndpoint {
            addr: SocketAddr::new(addr.ip(), self.addr.port()),
            sha256,
        }
    }

    /// Stops accepting, closes every session and waits up to `grace` for peers to learn
    /// of it.
    pub async fn shutdown(self, grace: Duration) {
        self.cancel.cancel();
        let _ = self.task.await;
        self.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }
}

fn identity(cert: &BrowserCert) -> Result<Identity, WebError> {
    let certificate =
        Certificate::from_der(cert.cert_der.clone()).map_err(|e| WebError::Setup(e.to_string()))?;
    Ok(Identity::new(
        CertificateChain::single(certificate),
        PrivateKey::from_der_pkcs8(cert.key_der.clone()),
    ))
}

fn server_config(
    builder: wtransport::config::ServerConfigBuilder<wtransport::config::states::WantsIdentity>,
    cert: &BrowserCert,
    quic: &QuicConfig,
) -> Result<wtransport::ServerConfig, WebError> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(quic.keep_alive)
        .max_concurrent_bidi_streams(quic.max_concurrent_streams.into())
        .initial_rtt(quic.initial_rtt)
        .max_idle_timeout(Some(quic.idle_timeout.try_into().map_err(
            |e: quinn::VarIntBoundsExceeded| WebError::Setup(e.to_string()),
        )?));
    Ok(builder
        .with_custom_transport(identity(cert)?, transport)
        .build())
}

fn load_ring(path: &Path) -> Option<CertRing> {
    let text = std::fs::read_to_string(path).ok()?;
    match CertRing::from_json(&text) {
        Ok(ring) => Some(ring),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "stored certificates unreadable: making new ones");
            None
        }
    }
}

fn store_ring(path: &Path, ring: &CertRing) -> Result<(), WebError> {
    let fail = |source| WebError::RingFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    // A temporary file of this process beside the target, renamed over it: readers see
    // the old ring or the new one, never half of one.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(fail)?;
        file.write_all(ring.to_json().as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, path).map_err(fail)
}

async fn run<S: WebService>(
    endpoint: Arc<wtransport::Endpoint<wtransport::endpoint::endpoint_side::Server>>,
    config: WebServerConfig,
    mut ring: CertRing,
    listing: watch::Sender<WebListing>,
    service: Arc<S>,
    cancel: CancellationToken,
) {
    let mut sessions = JoinSet::new();
    let mut admission = Admission::new(config.max_sessions, config.max_sessions_per_ip);
    loop {
        let due = ring.rotation_due_ms(&config.policy);
        let wait = Duration::from_millis(due.saturating_sub(unix_ms()));
        let incoming = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                match done {
                    Ok(ip) => admission.release(ip),
                    Err(e) => warn!(%e, "WebTransport session task failed"),
                }
                continue;
            }
            _ = tokio::time::sleep(wait) => {
                rotate(&endpoint, &config, &mut ring, &listing);
                continue;
            }
            incoming = endpoint.accept() => incoming,
        };
        let remote = incoming.remote_address();
        let ip = remote.ip();
        if !admission.admit(ip) {
            debug!(%remote, open = admission.open(), "WebTransport session refused: over the limits");
            incoming.refuse();
            continue;
        }
        let service = service.clone();
        let cancel = cancel.clone();
        sessions.spawn(
            async move {
                serve_session(incoming, service, cancel).await;
                ip
            }
            .instrument(tracing::debug_span!("web", %remote)),
        );
    }
    sessions.shutdown().await;
}

/// The ring's next certificate takes over: new sessions get it, records learn the hashes.
fn rotate(
    endpoint: &wtransport::Endpoint<wtransport::endpoint::endpoint_side::Server>,
    config: &WebServerConfig,
    ring: &mut CertRing,
    listing: &watch::Sender<WebListing>,
) {
    let now = unix_ms();
    match ring.advance(&config.policy, now) {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            warn!(error = %e, "cannot make the next WebTransport certificate; retrying later");
            return;
        }
    }
    let bind = endpoint
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let reloaded = server_config(
        wtransport::ServerConfig::builder().with_bind_address(bind),
        &ring.current,
        &config.quic,
    )
    .and_then(|c| {
        endpoint
            .reload_config(c, false)
            .map_err(|e| WebError::Setup(e.to_string()))
    });
    if let Err(e) = reloaded {
        warn!(error = %e, "cannot serve the next WebTransport certificate");
        return;
    }
    if let Some(path) = &config.ring_file {
        if let Err(e) = store_ring(path, ring) {
            warn!(error = %e, "rotated certificates not stored");
        }
    }
    info!(sha256 = ?ring.hashes_hex(), "WebTransport certificate rotated");
    listing.send_modify(|l| l.sha256 = ring.hashes_hex());
}

async fn serve_session<S: WebService>(
    incoming: wtransport::endpoint::IncomingSession,
    service: Arc<S>,
    cancel: CancellationToken,
) {
    let request = tokio::select! {
        _ = cancel.cancelled() => return,
        request = incoming => match request {
            Ok(request) => request,
            Err(e) => {
                debug!(error = %e, "WebTransport handshake failed");
                return;
            }
        },
    };
    if request.path() != WEB_PATH {
        debug!(
            path = request.path(),
            "WebTransport session for an unknown path"
        );
        request.not_found().await;
        return;
    }
    let connection = match request.accept().await {
        Ok(connection) => connection,
        Err(e) => {
            debug!(error = %e, "WebTransport session not accepted");
            return;
        }
    };
    let peer = connection.remote_address();
    debug!("WebTransport session open");
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
                let service = service.clone();
                streams.spawn(async move {
                    service
                        .serve_stream(send.quic_stream_mut(), recv.quic_stream_mut(), peer)
                        .await;
                });
            }
            Err(e) => {
                debug!(reason = %e, "WebTransport session closed");
                break;
            }
        }
    }
    streams.shutdown().await;
}
