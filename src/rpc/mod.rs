//! RPC over QUIC: one bidirectional stream per request (RFC 9000 §2), one
//! [`RequestFrame`](crate::frame::RequestFrame) up and one
//! [`ResponseFrame`](crate::frame::ResponseFrame) down.
//!
//! - [`RpcServer`]: the worker side; accepts connections and answers each stream with a
//!   [`Handler`](crate::service::Handler).
//! - [`RpcClient`]: the caller side; looks workers up through a grape, keeps one
//!   connection per worker, fails over to the next worker when one is dead.
//! - [`quorum`]: ask N workers and believe only a majority's identical answer.

mod client;
pub mod quorum;
mod server;

pub use client::{Answer, CallError, RequestOptions, RpcClient, RpcClientConfig};
pub use server::{RpcServer, RpcServerConfig, ServerError};

/// QUIC application error code a side closes with on a normal shutdown.
pub(crate) const CLOSE_NORMAL: u32 = 0;
/// QUIC application error code for STOP_SENDING on a stream whose request was refused
/// before it was read whole (too large).
pub(crate) const STOP_REFUSED: u32 = 1;
