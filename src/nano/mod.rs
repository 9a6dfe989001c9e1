//! The Nano RPC relay: what a worker next to a Nano node lets callers ask of it.
//!
//! A Nano node's RPC is an HTTP POST of one JSON object with an `action` (the action
//! reference is <https://docs.nano.org/commands/rpc-protocol/>). A worker that offers it to
//! strangers must not offer all of it: nano-node's own "control" switch leaves
//! `wallet_export`, `sign`, `key_expand`, `peers`, `bootstrap`, `stats_clear` and more
//! open, so the relay keeps its own allowlist (`docs/protocol.md` §4).
//!
//! ```text
//!  caller ── QUIC stream ──▶ worker ──▶ Policy::check ──▶ NanoRelay ── POST / ──▶ node
//!                                         │ refused                      (HTTP, local)
//!                                         ▼
//!                              Reply::Failure(invalid_request | action_not_allowed)
//! ```
//!
//! # Rules
//!
//! - **Allowlist.** Only [`actions::READ_ONLY_ACTIONS`] by default; an operator may add
//!   `process`, `work_generate` and `block_confirm` ([`actions::OPT_IN_ACTIONS`]) one by one
//!   with [`Policy::allow`]. Every other action, and any unknown one, is refused with
//!   `action_not_allowed` and never reaches the node.
//! - **Arguments.** `process` never with `force`; `count` capped (default
//!   [`DEFAULT_MAX_COUNT`]), and added where the node would read its absence as "all";
//!   `offset` capped (default [`DEFAULT_MAX_OFFSET`]); arrays, and the objects the node
//!   iterates like arrays, capped (default [`DEFAULT_MAX_ARRAY_LEN`]);
//!   `account_filter` removed; repeated keys refused, since the node and the relay would
//!   read different values. [`policy`] gives the details and reasons.
//! - **Path `/` only, no caller headers.** nano-node skips its control check for POSTs to
//!   paths under `/api/v2`, so the relay posts to `/` whatever path its configured URL
//!   has, with `content-type: application/json` and nothing of the caller's but the body.
//! - **Answers pass through.** The node's HTTP status and body reach the caller
//!   unchanged: nano-node's errors are HTTP 200 with `{"error": "..."}`, RsNano's
//!   refusals of malformed requests are HTTP 422 with plain text. Failures of the relay
//!   itself (no node, no answer in time, an answer too large) are wire errors
//!   ([`crate::protocol::frame::ErrorCode`]), never made-up node answers.
//!
//! # Layout
//!
//! - [`actions`]: the action lists, each with its source (pure data).
//! - [`policy`]: [`Policy`], the checks on a request body (pure, no I/O), which give a
//!   [`CheckedRequest`] ([`checked`]): the request read once, for every later layer.
//! - [`relay`]: [`NanoRelay`], the [`Handler`](crate::service::Handler) that posts to the
//!   node, over kept-alive HTTP/1.1 connections (`pool`).
//! - [`cache`]: [`cache::Cached`], the response cache keyed on action and parameters.
//! - [`config`]: the worker's TOML configuration file.
//! - [`work`]: [`work::WorkRouted`], `work_generate` to a separate work server.
//! - [`retry`]: which requests a caller may retry on another worker (read-only ones).
//! - [`ws`]: the worker's client of the node's websocket (its `confirmation` topic).
//! - [`confirmations`]: [`confirmations::Confirmations`], the fan-out of the node's
//!   confirmations to subscription sessions, filtered by account, within limits.

pub mod actions;
pub mod cache;
pub mod checked;
pub mod config;
pub mod confirmations;
pub mod policy;
mod pool;
pub mod relay;
pub mod retry;
pub mod work;
pub mod ws;

pub use checked::{CheckedRequest, LedgerKey, UNCACHED_FIELD};
pub use policy::{
    AllowError, Policy, Refusal, DEFAULT_MAX_ARRAY_LEN, DEFAULT_MAX_COUNT, DEFAULT_MAX_OFFSET,
};
pub use relay::{
    NanoRelay, NanoRelayConfig, NanoRelayError, NodeVersion, ProbeError, DEFAULT_MAX_ANSWER_BYTES,
    DEFAULT_NODE_TIMEOUT,
};
