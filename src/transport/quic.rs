//! QUIC endpoint settings (RFC 9000, quinn) and the TLS 1.3 set-up under them.
//!
//! # Identity
//!
//! Workers are anonymous volunteers found through an unauthenticated DHT, so there is no
//! name a client could check a certificate against. Each worker makes a fresh
//! self-signed certificate at start, and a client accepts any certificate while still
//! checking the TLS 1.3 handshake signatures made with it. The session is thus private
//! and tamper-proof against anyone on the path, but a worker's *identity* is not
//! authenticated: a lying worker is countered by asking several (quorum), not by TLS.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ClientConfig, Endpoint, EndpointConfig, IdleTimeout, ServerConfig, TransportConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::defaults::{
    ALPN, DEFAULT_IDLE_TIMEOUT, DEFAULT_INITIAL_RTT, DEFAULT_KEEP_ALIVE,
    DEFAULT_MAX_CONCURRENT_STREAMS,
};

/// The server name a client puts in its TLS ClientHello (workers have no DNS name).
pub(crate) const SERVER_NAME: &str = "nano-connect";

/// QUIC transport settings shared by workers and callers.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// Interval of QUIC PING frames on an idle connection, keeping NAT mappings open;
    /// `None` sends none. Default 15 s.
    pub keep_alive: Option<Duration>,
    /// Idle timeout (RFC 9000 §10.1) after which a silent connection is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// First RTT estimate before any measurement (RFC 9002 §6.2.2). Default 100 ms.
    pub initial_rtt: Duration,
    /// Bidirectional streams, and so RPC requests, a peer may have open at once on one
    /// connection. Default 100.
    pub max_concurrent_streams: u32,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            keep_alive: Some(DEFAULT_KEEP_ALIVE),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            initial_rtt: DEFAULT_INITIAL_RTT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
        }
    }
}

/// Why an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source} (pick another port, or 0 for any)")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// TLS or QUIC configuration failed (a bug, not a user error).
    #[error("QUIC/TLS set-up failed: {0}")]
    Setup(String),
}

impl QuicConfig {
    fn transport(&self) -> Result<TransportConfig, TransportError> {
        let mut t = TransportConfig::default();
        t.keep_alive_interval(self.keep_alive);
        t.max_idle_timeout(Some(
            IdleTimeout::try_from(self.idle_timeout)
                .map_err(|e| TransportError::Setup(format!("idle timeout: {e}")))?,
        ));
        t.initial_rtt(self.initial_rtt);
        t.max_concurrent_bidi_streams(self.max_concurrent_streams.into());
        // RPC runs on bidirectional streams only.
        t.max_concurrent_uni_streams(0u8.into());
        Ok(t)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn endpoint_config() -> EndpointConfig {
    let mut config = EndpointConfig::default();
    // Keep the QUIC bit set (RFC 9287 greasing off) so that non-QUIC datagrams on the same
    // socket (NAT traversal) can be told apart by their first byte.
    config.grease_quic_bit(false);
    config
}

/// Where an endpoint runs: a plain UDP socket, or a wrapper such as the NAT-traversal
/// socket that shares the port with other traffic.
pub enum EndpointSocket {
    /// A plain UDP socket (non-blocking).
    Plain(UdpSocket),
    /// A socket wrapper handed to quinn as is.
    Abstract(Arc<dyn quinn::AsyncUdpSocket>),
}

fn endpoint_on(
    socket: impl Into<EndpointSocket>,
    server: Option<ServerConfig>,
) -> Result<Endpoint, TransportError> {
    let runtime = Arc::new(quinn::TokioRuntime);
    match socket.into() {
        EndpointSocket::Plain(socket) => {
            let addr = socket
                .local_addr()
                .map_err(|e| TransportError::Setup(e.to_string()))?;
            Endpoint::new(endpoint_config(), server, socket, runtime)
                .map_err(|source| TransportError::Bind { addr, source })
        }
        EndpointSocket::Abstract(socket) => {
            let addr = socket
                .local_addr()
                .map_err(|e| TransportError::Setup(e.to_string()))?;
            Endpoint::new_with_abstract_socket(endpoint_config(), server, socket, runtime)
                .map_err(|source| TransportError::Bind { addr, source })
        }
    }
}

impl From<UdpSocket> for EndpointSocket {
    fn from(socket: UdpSocket) -> Self {
        Self::Plain(socket)
    }
}

impl From<Arc<dyn quinn::AsyncUdpSocket>> for EndpointSocket {
    fn from(socket: Arc<dyn quinn::AsyncUdpSocket>) -> Self {
        Self::Abstract(socket)
    }
}

/// A worker's endpoint on `socket`: accepts connections with a fresh self-signed
/// certificate and ALPN `nano-connect/1`; can dial out too.
pub fn server_endpoint(
    socket: impl Into<EndpointSocket>,
    config: &QuicConfig,
) -> Result<Endpoint, TransportError> {
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| TransportError::Setup(format!("certificate: {e}")))?;
    let key = PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key.into())
        .map_err(|e| TransportError::Setup(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TransportError::Setup(e.to_string()))?;
    let mut server = ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(config.transport()?));
    let mut endpoint = endpoint_on(socket, Some(server))?;
    endpoint.set_default_client_config(client_config(config)?);
    Ok(endpoint)
}

/// A caller's endpoint on `socket`: dials workers, accepting their self-signed
/// certificates (see the module doc for what that does and does not protect).
pub fn client_endpoint(
    socket: impl Into<EndpointSocket>,
    config: &QuicConfig,
) -> Result<Endpoint, TransportError> {
    let mut endpoint = endpoint_on(socket, None)?;
    endpoint.set_default_client_config(client_config(config)?);
    Ok(endpoint)
}

fn client_config(config: &QuicConfig) -> Result<ClientConfig, TransportError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TransportError::Setup(e.to_string()))?;
    let mut client = ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(config.transport()?));
    Ok(client)
}

/// Accepts any server certificate but verifies the handshake signatures made with it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
