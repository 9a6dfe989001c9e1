//! The wire, pure: codecs and rules that take values and return values, with no socket
//! and no clock. Everything above (transport, worker, route, broker) is built on these.
//!
//! - [`frame`]: RPC request and response frames on QUIC streams (docs/protocol.md §3).
//! - [`broker`]: the non-QUIC datagrams that share a socket with QUIC: broker messages,
//!   relay frames, punches (§5).
//! - [`identity`]: node ids (Ed25519 public keys) and node keys.
//! - [`stun`]: STUN Binding request and response (RFC 8489), on bytes.
//! - [`punch`]: the punch schedule and the birthday method's ports.
//! - [`record`]: worker records, signed BEP 44 items that say how to reach a worker.
//! - [`web`]: WebTransport endpoints with certificate hashes, and bootstrap strings.
//! - [`subscription`]: subscription sessions' frames on a long-lived stream (§8).

pub mod broker;
pub mod frame;
pub mod identity;
pub mod punch;
pub mod record;
pub mod stun;
pub mod subscription;
pub mod web;
