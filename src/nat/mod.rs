//! NAT traversal: reflexive address discovery (STUN, RFC 8489), the broker's rendezvous
//! and relay, hole punching on the QUIC socket, and the mapping check.
//!
//! # Layout
//!
//! - [`stun`]: Binding request, response and responder on bytes (pure).
//! - [`broker_proto`]: the non-QUIC datagrams on the shared socket (pure codec).
//! - [`rendezvous`]: the broker's state machine (pure, sans-IO).
//! - [`punch`]: the punch schedule and the birthday method's ports (pure).
//! - [`socket`]: the UDP socket shared by quinn and NAT traversal.
//! - [`broker`]: the broker service a grape hosts (I/O driver of [`rendezvous`]).
//! - [`peer`]: the worker's agent, the client's connect, and the mapping check.
//!
//! The wire format is specified in `docs/protocol.md`, section 5.

pub mod broker;
pub mod broker_proto;
pub mod peer;
pub mod punch;
pub mod rendezvous;
pub mod socket;
pub mod stun;
