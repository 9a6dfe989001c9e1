//! nano-connect: a UDP hole-punching RPC mesh in the Grenache style whose main service
//! is free access to a Nano node's RPC for people who run no node themselves.
//!
//! # Roles
//!
//! - **grape** (crate [`grape`], re-exported here): a BitTorrent mainline DHT node
//!   (BEP 5, BEP 44) with Grenache's HTTP API (`/announce`, `/lookup`, `/put`, `/get`).
//! - **worker**: runs next to a Nano node, announces a service key through its grape, and
//!   answers RPC frames on QUIC streams ([`rpc::RpcServer`]) with a [`service::Handler`]
//!   such as [`nano::NanoRelay`], which forwards allowlisted actions to the node.
//! - **client**: looks the key up and sends RPC frames ([`rpc::RpcClient`]).
//!
//! # Layout
//!
//! - [`frame`]: the wire frames and their codec (pure, no I/O).
//! - [`service`]: the [`service::Handler`] trait a worker serves with.
//! - [`link`]: the Grenache link: announce and lookup through a grape's HTTP API.
//! - [`transport`]: the UDP socket and the QUIC endpoint settings.
//! - [`rpc`]: the RPC server (worker side) and client (caller side) over QUIC.
//! - [`gateway`]: the Nano node RPC dialect on a local HTTP port, carried by the mesh.
//! - [`nano`]: the Nano RPC relay: allowlist policy (pure) and the HTTP forwarder.
//! - [`health`]: a worker announces only while its node answers.
//! - [`limits`]: per-client rate limiting of a worker's handler.
//! - [`metrics`]: Prometheus metrics of a worker and the `/metrics` endpoint.
//! - [`nat`]: NAT traversal: STUN, the broker (rendezvous and relay), hole punching.
//! - [`echo`]: an echo service of chosen answer sizes, for benchmarks.
//! - [`bench`]: the load generator behind `nano-connect bench`.
//! - [`fibonacci`]: the Grenache tutorial's service, for demos and benchmarks.
//! - [`defaults`]: every default value, with the reason for it.
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod bench;
pub mod defaults;
pub mod echo;
pub mod fibonacci;
pub mod frame;
pub mod gateway;
pub mod health;
pub mod limits;
pub mod link;
pub mod metrics;
pub mod nano;
pub mod nat;
pub mod rpc;
pub mod service;
pub mod transport;

pub use grape;
