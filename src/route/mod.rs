//! The client route: from a service key to a worker's answer, the same way for every
//! face (`call`, `gateway`, `bench`, the library).
//!
//! ```text
//!  RpcClient::request(key, body)
//!    ├─ an open connection to a worker of key ─────────────────────────────┐
//!    ├─ else resolve: DHT lookup of KEY (public workers) and               │
//!    │       nano-connect/via-broker/KEY (brokers) → List → signed records │
//!    │       (+ the disk cache's workers, tried while the lookup runs)     │
//!    └─ reach: own addresses, else broker → punch | birthday | relay ──────┤
//!                                      handshake proves the node id ◄──────┘
//!                                      one stream: request frame → answer
//! ```
//!
//! - [`resolve`]: lookups and records into [`Candidate`]s.
//! - [`reach`]: direct dials and connects through brokers.
//! - [`client`](RpcClient): requests with failover, trust, the cache.
//! - [`quorum`]: ask N distinct nodes, believe a strict majority.
//! - [`subscribe`]: follow accounts' confirmations through one or N workers, moving to
//!   another worker when one goes away.
//! - [`cache`]: workers that answered recently, on disk.
//! - [`error`]: why a request failed, with its one code and exit code.

pub mod cache;
mod client;
pub mod error;
pub mod quorum;
pub mod reach;
pub mod resolve;
pub mod subscribe;

pub use client::{Answer, RequestOptions, RpcClient, RpcClientConfig, SessionStream};
pub use error::CallError;
pub use reach::PathKind;
pub use resolve::{Candidate, Discovery};
