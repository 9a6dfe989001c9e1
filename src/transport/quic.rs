//! QUIC endpoint settings (RFC 9000, quinn) and the TLS 1.3 set-up under them.
//!
//! # Identity
//!
//! A worker's endpoint proves its node key in every handshake (TLS 1.3 raw public keys,
//! RFC 7250, see [`super::tls`]); a caller's endpoint checks the key against the node id
//! it dials ([`super::tls::server_name`]) or, dialing an address alone, learns it
//! ([`super::tls::peer_node_id`]). Callers stay anonymous.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ClientConfig, Endpoint, EndpointConfig, IdleTimeout, ServerConfig, TransportConfig};

use super::tls;
use crate::defaults::{
    ALPN, DEFAULT_IDLE_TIMEOUT, DEFAULT_INITIAL_RTT, DEFAULT_KEEP_ALIVE,
    DEFAULT_MAX_CONCURRENT_STREAMS,
};
use crate::protocol::identity::NodeKey;

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

/// A worker's endpoint on `socket`: accepts connections, proving `key` in each TLS 1.3
/// handshake (raw public key, ALPN `nano-connect/1`); can dial out too.
///
/// Errors: [`TransportError::Setup`] (TLS refused the key: a bug), [`TransportError::Bind`].
pub fn server_endpoint(
    socket: impl Into<EndpointSocket>,
    config: &QuicConfig,
    key: &NodeKey,
) -> Result<Endpoint, TransportError> {
    let tls = tls::server_config(key, ALPN).map_err(|e| TransportError::Setup(e.to_string()))?;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TransportError::Setup(e.to_string()))?;
    let mut server = ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(config.transport()?));
    let mut endpoint = endpoint_on(socket, Some(server))?;
    endpoint.set_default_client_config(client_config(config)?);
    Ok(endpoint)
}

/// A caller's endpoint on `socket`: dials workers and checks the node key each proves
/// (see the module doc).
pub fn client_endpoint(
    socket: impl Into<EndpointSocket>,
    config: &QuicConfig,
) -> Result<Endpoint, TransportError> {
    let mut endpoint = endpoint_on(socket, None)?;
    endpoint.set_default_client_config(client_config(config)?);
    Ok(endpoint)
}

fn client_config(config: &QuicConfig) -> Result<ClientConfig, TransportError> {
    let tls = tls::client_config(ALPN).map_err(|e| TransportError::Setup(e.to_string()))?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TransportError::Setup(e.to_string()))?;
    let mut client = ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(config.transport()?));
    Ok(client)
}
