//! The worker: serves a key over QUIC next to its service.

pub mod health;
pub mod presence;
mod server;

pub use server::{RpcServer, RpcServerConfig, ServerError};

/// QUIC application error code a side closes with on a normal shutdown.
pub(crate) const CLOSE_NORMAL: u32 = 0;
/// QUIC application error code for STOP_SENDING on a stream whose request was refused
/// before it was read whole (too large).
pub(crate) const STOP_REFUSED: u32 = 1;
