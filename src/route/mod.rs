//! The client route: from a service key to a worker's answer.

mod client;
pub mod quorum;
pub mod reach;

pub use client::{Answer, CallError, RequestOptions, RpcClient, RpcClientConfig};
