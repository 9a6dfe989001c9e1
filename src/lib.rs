//! nano-connect: a UDP hole-punching RPC mesh in the Grenache style whose main service
//! is free access to a Nano node's RPC for people who run no node themselves.
//!
//! # Roles
//!
//! - **grape** (crate [`grape`], re-exported here): a BitTorrent mainline DHT node
//!   (BEP 5, BEP 44) with Grenache's HTTP API (`/announce`, `/lookup`, `/put`, `/get`),
//!   and next to it the [`broker`] (STUN, rendezvous, relay) for peers behind NATs.
//! - **worker** ([`worker`]): runs next to a Nano node, announces a service key, and
//!   answers RPC frames on QUIC streams with a [`service::Handler`] such as
//!   [`nano::NanoRelay`], which forwards allowlisted actions to the node.
//! - **client** ([`route`]): looks the key up and sends RPC frames to a worker.
//!
//! # Layout, bottom to top
//!
//! - [`protocol`]: the wire, pure: frames, broker datagrams, STUN, punch schedule.
//! - [`transport`]: the one UDP socket per role and the QUIC endpoints on it.
//! - [`traversal`]: NAT traversal both peers share: exchanges with a broker, the mapping
//!   check, the birthday method.
//! - [`discovery`]: announce and lookup in the DHT (through a grape's HTTP API).
//! - [`worker`], [`route`], [`broker`]: the three roles, side by side.
//! - [`service`], [`subscription`], [`nano`], [`echo`], [`fibonacci`]: what a worker
//!   serves: RPC handlers, and subscription sessions (the node's confirmations).
//! - [`limits`], [`metrics`]: rate limits and Prometheus metrics.
//! - [`gateway`], [`bench`]: faces on top (with the CLI in `src/cli/`).
//! - [`web`]: the WebTransport face for browsers (workers' RPC, grapes' lookups) and its
//!   certificates; the page's side is `web/nano-connect.js`.
//! - [`defaults`]: every default value, with the reason for it.
//! - `fuzzing` (hidden): the entry points of the fuzz targets in `fuzz/`, shared with
//!   the corpus replay test (`docs/fuzzing.md`).
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod bench;
pub mod broker;
pub mod defaults;
pub mod discovery;
pub mod echo;
pub mod fibonacci;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod limits;
pub mod metrics;
pub mod nano;
pub mod protocol;
pub mod route;
pub mod service;
pub mod subscription;
pub mod transport;
pub mod traversal;
pub mod web;
pub mod worker;

pub use grape;
