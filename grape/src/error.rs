//! The grape's error type.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use mainline::errors::{ConcurrencyError, PutMutableError, PutQueryError};
use mainline::Id;

/// Everything that can go wrong in a grape: starting it, and the DHT operations behind the
/// HTTP API.
///
/// Each variant carries what the user needs to act on it, and its message says what to do.
/// [`GrapeError::code`] gives the Grenache-style error string the HTTP API answers with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrapeError {
    /// The announce window is shorter than [`SlotSchedule::MIN_WINDOW`](crate::SlotSchedule::MIN_WINDOW).
    #[error(
        "announce window {window:?} is too short: it must be at least 4 ms (1 ms per slot); \
         keep the default of 256 s outside tests"
    )]
    WindowTooShort {
        /// The window that was asked for.
        window: Duration,
    },

    /// The DHT's UDP socket could not be bound.
    #[error(
        "cannot bind the DHT's UDP socket on {addr}: {source}; \
         if port {port} is in use, pick another with --dp",
        port = addr.port()
    )]
    DhtBind {
        /// The address the DHT tried to bind.
        addr: SocketAddrV4,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The HTTP API's TCP listener could not be bound.
    #[error(
        "cannot bind the HTTP API on {addr}: {source}; \
         if port {port} is in use, pick another with --aph",
        port = addr.port()
    )]
    ApiBind {
        /// The address the API tried to bind.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A bootstrap node is not a `HOST:PORT` that resolves to an IPv4 address.
    #[error(
        "bootstrap node {node:?} does not resolve to an IPv4 address: {reason}; \
         give it as IP:PORT or HOST:PORT with --bn (mainline is IPv4 only)"
    )]
    Bootstrap {
        /// The bootstrap node as given.
        node: String,
        /// Why it was refused.
        reason: String,
    },

    /// No DHT node is known to store at: the grape's routing table is empty.
    #[error(
        "no DHT node is known to store {target} at: this grape is not bootstrapped; \
         check --bn and that the bootstrap grape is running (a lone grape cannot store \
         anything: mainline never stores at itself)"
    )]
    NoNodes {
        /// The infohash or BEP 44 target of the put.
        target: Id,
    },

    /// No DHT node answered a put in time.
    #[error(
        "no DHT node answered the put of {target} in time; \
         check that the other grapes are reachable over UDP"
    )]
    Timeout {
        /// The infohash or BEP 44 target of the put.
        target: Id,
    },

    /// The DHT nodes refused a put with a KRPC error (BEP 5 / BEP 44 error codes).
    #[error("DHT nodes refused the put of {target}: KRPC error {code} {description:?}")]
    Refused {
        /// The infohash or BEP 44 target of the put.
        target: Id,
        /// KRPC error code, e.g. 203 (bad token or hash), 205 (value too big), 206 (bad
        /// signature).
        code: i32,
        /// The error description the nodes sent.
        description: String,
    },

    /// A BEP 44 mutable put conflicts with a newer or concurrent item.
    #[error("mutable put of {target} conflicts: {source}")]
    Conflict {
        /// The BEP 44 target.
        target: Id,
        /// What mainline or the storing nodes detected.
        #[source]
        source: ConcurrencyError,
    },

    /// A BEP 44 item is invalid before it is even sent (size, key, signature).
    #[error("invalid BEP 44 item: {reason}")]
    InvalidItem {
        /// What is wrong with it.
        reason: ItemProblem,
    },
}

/// What is wrong with a BEP 44 item (see [`GrapeError::InvalidItem`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ItemProblem {
    /// The value is over 1000 bytes (BEP 44: "v" must be under 1000 bytes bencoded;
    /// mainline refuses more than 1000 raw bytes).
    #[error("value is {len} bytes, the limit is 1000: store less, or store a hash of it")]
    ValueTooBig {
        /// The value's length in bytes.
        len: usize,
    },
    /// The salt is over 64 bytes (BEP 44).
    #[error("salt is {len} bytes, the limit is 64")]
    SaltTooBig {
        /// The salt's length in bytes.
        len: usize,
    },
    /// The public key is not a valid ed25519 point.
    #[error("public key is not a valid ed25519 key")]
    BadKey,
    /// The signature does not verify over `salt`, `seq` and `v` (BEP 44).
    #[error(
        "signature does not verify: sign the bencoded \"4:salt…3:seqi…e1:v…\" string \
         with the key's private half (BEP 44)"
    )]
    BadSignature,
}

impl GrapeError {
    /// The Grenache-style error string for this error, as the HTTP API answers it.
    ///
    /// Errors that only happen at startup map to `"ERR_GRAPE_GENERIC"`.
    pub fn code(&self) -> &'static str {
        match self {
            GrapeError::NoNodes { .. } => "ERR_GRAPE_NO_NODES",
            GrapeError::Timeout { .. } => "ERR_GRAPE_TIMEOUT",
            GrapeError::Refused { code: 206, .. } => "ERR_GRAPE_PUT_SIG",
            GrapeError::Refused { code: 205, .. } => "ERR_GRAPE_PUT_TOO_BIG",
            GrapeError::Refused { code: 207, .. } => "ERR_GRAPE_PUT_TOO_BIG",
            GrapeError::Refused { .. } => "ERR_GRAPE_PUT",
            GrapeError::Conflict { source, .. } => match source {
                ConcurrencyError::CasFailed => "ERR_GRAPE_PUT_CAS",
                ConcurrencyError::NotMostRecent => "ERR_GRAPE_PUT_SEQ",
                ConcurrencyError::ConflictRisk => "ERR_GRAPE_PUT_CONFLICT",
            },
            GrapeError::InvalidItem { reason } => match reason {
                ItemProblem::ValueTooBig { .. } | ItemProblem::SaltTooBig { .. } => {
                    "ERR_GRAPE_PUT_TOO_BIG"
                }
                ItemProblem::BadKey | ItemProblem::BadSignature => "ERR_GRAPE_PUT_SIG",
            },
            GrapeError::WindowTooShort { .. }
            | GrapeError::DhtBind { .. }
            | GrapeError::ApiBind { .. }
            | GrapeError::Bootstrap { .. } => "ERR_GRAPE_GENERIC",
        }
    }

    pub(crate) fn from_put(target: Id, error: PutQueryError) -> Self {
        match error {
            PutQueryError::NoClosestNodes => GrapeError::NoNodes { target },
            PutQueryError::Timeout => GrapeError::Timeout { target },
            PutQueryError::ErrorResponse(e) => GrapeError::Refused {
                target,
                code: e.code,
                description: e.description,
            },
        }
    }

    pub(crate) fn from_put_mutable(target: Id, error: PutMutableError) -> Self {
        match error {
            PutMutableError::Query(e) => Self::from_put(target, e),
            PutMutableError::Concurrency(source) => GrapeError::Conflict { target, source },
        }
    }
}

impl From<ItemProblem> for GrapeError {
    fn from(reason: ItemProblem) -> Self {
        GrapeError::InvalidItem { reason }
    }
}
