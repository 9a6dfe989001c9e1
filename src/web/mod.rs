//! The WebTransport face: how a browser reaches workers and grapes with no server of its
//! own (docs/protocol.md §9).
//!
//! ```text
//!  page ── WebTransport (HTTP/3, certificate by hash) ──► grape: LOOKUP_SERVICE ──► records
//!   │                                                        (DHT + brokers, verified)
//!   └──── WebTransport, hash from the worker's signed record ──► worker: RPC frames
//! ```
//!
//! Browsers cannot open raw UDP or QUIC with a self-signed certificate, but they can open
//! a WebTransport session to a host whose certificate they know by SHA-256 (W3C
//! WebTransport `serverCertificateHashes`). So every worker and grape that serves pages
//! runs a [`WebServer`] on a UDP port of its own, with a [`cert::CertRing`] of browser
//! certificates; a worker lists that port and the hashes in its signed record, so that
//! the page knows which certificate is the worker's: a host at the address that is not
//! the worker fails the handshake.
//!
//! Each bidirectional stream of a session carries one request frame and one response
//! frame, exactly as a native QUIC stream does (docs/protocol.md §3), and a worker's
//! streams go through the same code as its native ones ([`crate::worker`]): one policy,
//! one set of limits, one set of metrics.
//!
//! - [`cert`]: browser certificates and their rotation (pure).
//! - [`server`]: the WebTransport endpoint and its sessions.
//! - [`lookup`]: a grape's lookup for pages: records of the workers that have a web face.

pub mod cert;
pub mod lookup;
pub mod server;

pub use server::{WebError, WebServer, WebServerConfig, WebService};

/// What a running [`WebServer`] tells the records that list it: its UDP port and the
/// certificate hashes (hex) it serves now and next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebListing {
    /// The UDP port of the WebTransport endpoint.
    pub port: u16,
    /// SHA-256 of the certificates, current first, as 64 lowercase hex digits each.
    pub sha256: Vec<String>,
}
