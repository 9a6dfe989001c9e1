//! The transport under the RPC layer: one UDP socket per process role, built with
//! socket2, and a QUIC endpoint (RFC 9000, quinn) on it.

pub mod admission;
pub mod nat_socket;
mod quic;
pub mod tls;
mod udp;

pub use quic::{client_endpoint, server_endpoint, EndpointSocket, QuicConfig, TransportError};
pub use udp::bind_udp;
