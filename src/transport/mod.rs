//! The transport under the RPC layer: one UDP socket per process role, built with
//! socket2, and a QUIC endpoint (RFC 9000, quinn) on it.

mod quic;
mod socket;

pub(crate) use quic::SERVER_NAME;
pub use quic::{client_endpoint, server_endpoint, EndpointSocket, QuicConfig, TransportError};
pub use socket::bind_udp;
