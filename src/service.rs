//! What a worker serves: the [`Handler`] trait and the values it takes and gives.
//!
//! A worker's RPC server decodes each stream's [`RequestFrame`](crate::protocol::frame::RequestFrame)
//! into a [`Request`], hands it to its handler, and encodes the [`Reply`] into a
//! [`ResponseFrame`](crate::protocol::frame::ResponseFrame). Handlers never see bytes of the wire
//! format, and the server never sees what the payload means.

use std::future::Future;
use std::net::SocketAddr;

use crate::protocol::frame::{ErrorCode, WireError};

/// One decoded request, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The service key the caller asked for (for example `nano_rpc`).
    pub key: String,
    /// The payload bytes (for `nano_rpc`, the Nano RPC JSON body).
    pub body: Vec<u8>,
    /// The caller's address as this worker sees it (its QUIC path's remote address).
    pub peer: SocketAddr,
}

/// A handler's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The service answered: its status (HTTP status for `nano_rpc`) and body, passed
    /// through unchanged.
    Answer {
        /// Service status; 200 for a plain success.
        status: u16,
        /// Answer bytes.
        body: Vec<u8>,
    },
    /// The worker refused or could not get an answer.
    Failure(WireError),
}

impl Reply {
    /// A 200 answer with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::Answer {
            status: 200,
            body: body.into(),
        }
    }

    /// A failure with `code` and a one-line `message`.
    pub fn failure(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Failure(WireError::new(code, message))
    }
}

/// Serves requests for one or more service keys.
///
/// Implementations must not panic on any payload: whatever came from the network is
/// answered, with a [`Reply::Failure`] when it makes no sense.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Called concurrently, once per stream.
    fn handle(&self, request: Request) -> impl Future<Output = Reply> + Send;
}

/// A shared handler serves as itself (a worker serving several endpoints shares one).
impl<H: Handler> Handler for std::sync::Arc<H> {
    fn handle(&self, request: Request) -> impl Future<Output = Reply> + Send {
        (**self).handle(request)
    }
}
