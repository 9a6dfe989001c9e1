//! Why a request got no answer, and the one mapping of each reason to a short code and
//! an exit code that every face uses (`call`'s exit status and `{"code": ...}` lines,
//! the gateway's `x-nano-connect-error` header, `bench`'s error counts).
//!
//! | code | exit | when |
//! |---|---|---|
//! | a worker's wire code (`action_not_allowed`, `invalid_request`, `busy`, ...) | 3 | the worker refused |
//! | `upstream_unreachable`, `upstream_timeout` | 7 | the worker's node did not answer |
//! | `no_worker` | 5 | nobody announces the key (or none of the trusted nodes) |
//! | `timeout` | 6 | no answer within the caller's deadline |
//! | `unreachable` | 7 | the DHT, the grape, or every worker found could not be reached |
//! | `relay_closed` | 7 | the broker closed the relay circuit mid-request |
//! | `disagreement`, `no_quorum` | 8 | `--quorum`: no strict majority, or too few workers |
//! | `frame` | 1 | the request could not be framed or the answer not read |
//! | `usage` | 2 | the client has no way to find workers (no directory, no broker) |

use std::time::Duration;

use crate::discovery::DiscoveryError;
use crate::protocol::frame::{ErrorCode, FrameError, WireError};
use crate::transport::TransportError;

/// Exit codes of the command-line faces (`call`, `watch`), listed in `call --help`.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Any failure not listed below (bad configuration, port in use, ...).
    pub const FAILURE: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// The worker refused the request (action not allowed, invalid request, ...).
    pub const REFUSED: u8 = 3;
    /// The Nano node answered with an error (`{"error": ...}` or a non-2xx status).
    pub const NODE_ERROR: u8 = 4;
    /// No worker announces the service key.
    pub const NO_WORKER: u8 = 5;
    /// No answer within the deadline.
    pub const TIMEOUT: u8 = 6;
    /// The DHT, grape or every worker found was unreachable.
    pub const UNREACHABLE: u8 = 7;
    /// `--quorum`: the workers asked did not agree (or too few announce the key).
    pub const NO_QUORUM: u8 = 8;
}

/// Why a request got no service answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The client's own endpoint could not be made.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The lookup failed (grape or DHT unreachable).
    #[error("lookup failed: {0}")]
    Discovery(#[from] DiscoveryError),
    /// A request by key on a client that has no way to find workers.
    #[error(
        "this client has nothing to look {key:?} up with (give --grape, --bootstrap or --broker)"
    )]
    NoDiscovery {
        /// The key asked for.
        key: String,
    },
    /// Nobody announced the key (or none of the workers found may be used).
    #[error("no worker announces {key:?}{}", .detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_else(|| " (is a worker running with --announce KEY on this network?)".into()))]
    NoWorkers {
        /// The key asked for.
        key: String,
        /// What was found and set aside, if anything (untrusted nodes, ...).
        detail: Option<String>,
    },
    /// Every worker tried failed before the request was answered.
    #[error("no worker of {key:?} could be reached: {}", describe(.tried))]
    Unreachable {
        /// The key asked for.
        key: String,
        /// Each worker tried (node id or address), with its failure.
        tried: Vec<(String, String)>,
    },
    /// The worker refused or failed the request; `error.code` says why.
    #[error("worker {worker} refused: {} ({})", .error.message, .error.code)]
    Refused {
        /// The worker (node id and address).
        worker: String,
        /// Its reason.
        error: WireError,
    },
    /// No answer within the request deadline.
    #[error("no answer within {} ms{}", .after.as_millis(), .detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Timeout {
        /// The deadline that passed.
        after: Duration,
        /// What was going on (which worker was waited for).
        detail: Option<String>,
    },
    /// The broker closed the relay circuit the request travelled on.
    #[error("{message}")]
    RelayClosed {
        /// The broker's words.
        message: String,
    },
    /// The request could not be framed (too large) or the answer could not be read.
    #[error("frame error: {0}")]
    Frame(#[from] FrameError),
}

fn describe(tried: &[(String, String)]) -> String {
    tried
        .iter()
        .map(|(a, e)| format!("{a}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl CallError {
    /// The short code (see the module doc).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused { error, .. } => error.code.as_str(),
            Self::NoWorkers { .. } => "no_worker",
            Self::Timeout { .. } => "timeout",
            Self::Discovery(_) | Self::Unreachable { .. } => "unreachable",
            Self::RelayClosed { .. } => "relay_closed",
            Self::NoDiscovery { .. } => "usage",
            Self::Frame(_) => "frame",
            Self::Transport(_) => "failure",
        }
    }

    /// The exit code (see the module doc).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused { error, .. } => match error.code {
                ErrorCode::UpstreamUnreachable | ErrorCode::UpstreamTimeout => exit::UNREACHABLE,
                _ => exit::REFUSED,
            },
            Self::NoWorkers { .. } => exit::NO_WORKER,
            Self::Timeout { .. } => exit::TIMEOUT,
            Self::Discovery(_) | Self::Unreachable { .. } | Self::RelayClosed { .. } => {
                exit::UNREACHABLE
            }
            Self::NoDiscovery { .. } => exit::USAGE,
            Self::Frame(_) | Self::Transport(_) => exit::FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_one_code_and_one_exit_code() {
        let cases = [
            (
                CallError::NoWorkers {
                    key: "k".into(),
                    detail: None,
                },
                "no_worker",
                exit::NO_WORKER,
            ),
            (
                CallError::Timeout {
                    after: Duration::from_secs(1),
                    detail: None,
                },
                "timeout",
                exit::TIMEOUT,
            ),
            (
                CallError::Unreachable {
                    key: "k".into(),
                    tried: vec![],
                },
                "unreachable",
                exit::UNREACHABLE,
            ),
            (
                CallError::Refused {
                    worker: "w".into(),
                    error: WireError::new(ErrorCode::ActionNotAllowed, "no"),
                },
                "action_not_allowed",
                exit::REFUSED,
            ),
            (
                CallError::Refused {
                    worker: "w".into(),
                    error: WireError::new(ErrorCode::UpstreamTimeout, "slow"),
                },
                "upstream_timeout",
                exit::UNREACHABLE,
            ),
            (
                CallError::RelayClosed {
                    message: "closed".into(),
                },
                "relay_closed",
                exit::UNREACHABLE,
            ),
        ];
        for (error, code, exit) in cases {
            assert_eq!((error.code(), error.exit_code()), (code, exit), "{error}");
        }
    }
}
