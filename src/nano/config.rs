//! The worker's configuration file (TOML) and the handler stack it describes.
//!
//! Every field is optional; a flag on the command line overrides the file, and the file
//! overrides the defaults. An example with every field and its default is
//! `examples/worker.toml`; unknown fields are an error, so that a typo is not silently a
//! default.
//!
//! ```toml
//! [node]
//! url = "http://127.0.0.1:7076"        # the Nano node's RPC
//! timeout_ms = 10000                   # per request to the node
//! max_answer_bytes = 4194304           # larger answers are dropped (internal error)
//! work_server = "http://127.0.0.1:7000" # work_generate goes here (and is allowed)
//!
//! [policy]
//! allow = ["process", "block_confirm"] # opt-ins beyond the read-only allowlist
//! max_count = 1000                     # cap on "count"
//! max_array_len = 500                  # cap on array lengths (accounts, hashes)
//! max_offset = 10000                   # cap on "offset" (larger is refused)
//!
//! [limits]
//! max_request_bytes = 65536            # largest request frame
//! max_concurrent_streams = 100         # requests in flight per QUIC connection
//! rate_per_second = 20                 # per client IP; absent: no rate limit
//! burst = 40                           # requests at once (default: 2 x rate)
//!
//! [cache]
//! max_entries = 10000                  # 0: no response cache
//!
//! [metrics]
//! listen = "127.0.0.1:9100"            # Prometheus /metrics; absent: none
//! ```
//!
//! The handler a worker runs is [`NanoService`]: metrics outermost (every reply counted),
//! then the rate limit (a refused client costs nothing more), then the policy check and
//! the cache, then the relay to the node (or to the work server for `work_generate`). The
//! request's JSON is parsed once, by the policy in `Cached`; the layers after it take the
//! [`CheckedRequest`](super::CheckedRequest):
//!
//! ```text
//!         Request                     Request                    CheckedRequest
//! Metered ───────▶ RateLimited ───────▶ Cached ───────────▶ WorkRouted ─┬─▶ NanoRelay (node)
//!                                   (Policy::check)                     └─▶ NanoRelay (work server)
//! ```

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::cache::Cached;
use super::policy::AllowError;
use super::relay::{NanoRelay, NanoRelayConfig, NanoRelayError};
use super::work::{WorkRouted, WORK_ACTION};
use crate::limits::{RateLimit, RateLimited};
use crate::metrics::{Metered, WorkerMetrics};

/// The whole file. Every section and field may be left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerFile {
    /// `[node]`: how to reach the node and the work server.
    pub node: NodeSection,
    /// `[policy]`: what is let through.
    pub policy: PolicySection,
    /// `[limits]`: sizes, streams and rates.
    pub limits: LimitsSection,
    /// `[cache]`: the response cache.
    pub cache: CacheSection,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsSection,
}

/// `[node]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// The node's RPC URL, `http://host:port`.
    pub url: Option<String>,
    /// Deadline of one request to the node, in ms.
    pub timeout_ms: Option<u64>,
    /// Largest node answer taken, in bytes.
    pub max_answer_bytes: Option<usize>,
    /// A work server's RPC URL; when set, `work_generate` is allowed and goes there.
    pub work_server: Option<String>,
}

/// `[policy]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySection {
    /// Opt-in actions (`process`, `work_generate`, `block_confirm`).
    pub allow: Vec<String>,
    /// Cap on a request's `count`.
    pub max_count: Option<u64>,
    /// Cap on the length of a request's arrays.
    pub max_array_len: Option<usize>,
    /// Cap on a request's `offset`, in entries skipped.
    pub max_offset: Option<u64>,
}

/// `[limits]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest request frame, in bytes.
    pub max_request_bytes: Option<usize>,
    /// Concurrent streams (requests in flight) per QUIC connection.
    pub max_concurrent_streams: Option<u32>,
    /// Requests per second per client IP.
    pub rate_per_second: Option<u32>,
    /// Requests a client may make at once.
    pub burst: Option<u32>,
}

/// `[cache]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    /// Most answers kept; 0 turns the cache off.
    pub max_entries: Option<u64>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of the `/metrics` endpoint.
    pub listen: Option<SocketAddr>,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped fields.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An opt-in that does not exist.
    #[error(transparent)]
    Allow(#[from] AllowError),
    /// A node or work server URL that cannot be used.
    #[error(transparent)]
    Relay(#[from] NanoRelayError),
    /// A zero where a positive number is needed.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

impl WorkerFile {
    /// Parses `text` (named `path` in errors).
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: e.to_string().trim().replace('\n', " "),
        })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }
}

/// What a worker's Nano handler stack is built from, defaults and overrides applied.
#[derive(Debug, Clone)]
pub struct NanoServiceConfig {
    /// The node's relay settings, policy included.
    pub relay: NanoRelayConfig,
    /// The work server's URL, if `work_generate` goes to one.
    pub work_server: Option<String>,
    /// Per-client rate limit (`None`: none).
    pub rate_limit: Option<RateLimit>,
    /// Cached answers at most (0: no cache). Default
    /// [`DEFAULT_CACHE_ENTRIES`](super::cache::DEFAULT_CACHE_ENTRIES).
    pub cache_entries: u64,
}

impl Default for NanoServiceConfig {
    fn default() -> Self {
        Self {
            relay: NanoRelayConfig::default(),
            work_server: None,
            rate_limit: None,
            cache_entries: super::cache::DEFAULT_CACHE_ENTRIES,
        }
    }
}

impl NanoServiceConfig {
    /// The settings of `file` over the defaults; `allow` adds opt-ins (from flags).
    pub fn from_file(file: &WorkerFile) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        let relay = &mut config.relay;
        if let Some(url) = &file.node.url {
            relay.node_url = url.clone();
        }
        if let Some(ms) = file.node.timeout_ms {
            relay.timeout = Duration::from_millis(ms);
        }
        if let Some(bytes) = file.node.max_answer_bytes {
            relay.max_answer_bytes = bytes;
        }
        for action in &file.policy.allow {
            relay.policy.allow(action)?;
        }
        if let Some(count) = file.policy.max_count {
            relay.policy.set_max_count(count);
        }
        if let Some(len) = file.policy.max_array_len {
            relay.policy.set_max_array_len(len);
        }
        if let Some(offset) = file.policy.max_offset {
            relay.policy.set_max_offset(offset);
        }
        config.work_server = file.node.work_server.clone();
        config.rate_limit = rate_limit(file.limits.rate_per_second, file.limits.burst)?;
        if let Some(entries) = file.cache.max_entries {
            config.cache_entries = entries;
        }
        Ok(config)
    }
}

/// A [`RateLimit`] of `rate` per second with `burst` (default twice the rate); `None`
/// for no rate.
pub fn rate_limit(rate: Option<u32>, burst: Option<u32>) -> Result<Option<RateLimit>, ConfigError> {
    let Some(rate) = rate else {
        return Ok(None);
    };
    let per_second = NonZeroU32::new(rate).ok_or(ConfigError::Zero("rate_per_second"))?;
    let burst = match burst {
        Some(b) => NonZeroU32::new(b).ok_or(ConfigError::Zero("burst"))?,
        None => per_second.saturating_mul(NonZeroU32::MIN.saturating_add(1)),
    };
    Ok(Some(RateLimit { per_second, burst }))
}

/// The handler stack of a Nano worker (see the module documentation).
pub type NanoService = Metered<RateLimited<Cached<WorkRouted>>>;

/// Builds the stack from `config`, counting into `metrics`.
pub fn build(
    config: NanoServiceConfig,
    metrics: Arc<WorkerMetrics>,
) -> Result<NanoService, ConfigError> {
    // One check for the whole stack (in `Cached`): with a work server, work_generate is
    // allowed and routed there.
    let mut policy = config.relay.policy.clone();
    let work = match &config.work_server {
        Some(url) => {
            policy.allow(WORK_ACTION)?;
            Some(NanoRelay::new(NanoRelayConfig {
                node_url: url.clone(),
                policy: policy.clone(),
                ..config.relay.clone()
            })?)
        }
        None => None,
    };
    let node = NanoRelay::new(config.relay)?;
    let routed = WorkRouted::new(node, work);
    let cached = Cached::new(routed, policy, config.cache_entries, Some(metrics.clone()));
    Ok(Metered::new(
        RateLimited::new(cached, config.rate_limit),
        metrics,
    ))
}

impl NanoService {
    /// The relay to the node (for its start-up and health probes).
    pub fn node(&self) -> &NanoRelay {
        self.inner().inner().inner().node()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nano::Policy;

    #[test]
    fn the_example_file_parses_and_applies() {
        let text = include_str!("../../examples/worker.toml");
        let file = WorkerFile::parse(text, "examples/worker.toml").expect("example parses");
        let config = NanoServiceConfig::from_file(&file).expect("example applies");
        assert_eq!(config.relay.node_url, "http://127.0.0.1:7076");
        assert!(config.relay.policy.is_allowed("process"));
        assert_eq!(config.relay.policy.max_count(), 1000);
        assert!(config.rate_limit.is_some());
    }

    /// The example says each field's default in the comment above it ("Default N."):
    /// those must be the defaults the code applies.
    #[test]
    fn the_example_file_states_the_real_defaults() {
        use crate::defaults::{DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_REQUEST_BYTES};
        use crate::nano::{DEFAULT_MAX_ANSWER_BYTES, DEFAULT_MAX_COUNT, DEFAULT_NODE_TIMEOUT};
        let text = include_str!("../../examples/worker.toml");
        let stated = |field: &str| -> u64 {
            let lines: Vec<&str> = text.lines().collect();
            let at = lines
                .iter()
                .position(|l| {
                    l.trim_start_matches("# ")
                        .starts_with(&format!("{field} ="))
                })
                .unwrap_or_else(|| panic!("{field} is not in the example"));
            let comment = lines[..at]
                .iter()
                .rev()
                .take_while(|l| l.starts_with('#'))
                .find_map(|l| l.split("Default ").nth(1))
                .unwrap_or_else(|| panic!("no \"Default\" above {field}"));
            comment
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{field}: no number in {comment:?}"))
        };
        assert_eq!(
            stated("max_concurrent_streams"),
            u64::from(DEFAULT_MAX_CONCURRENT_STREAMS)
        );
        assert_eq!(
            stated("max_request_bytes"),
            DEFAULT_MAX_REQUEST_BYTES as u64
        );
        assert_eq!(stated("max_count"), DEFAULT_MAX_COUNT);
        assert_eq!(stated("max_offset"), crate::nano::DEFAULT_MAX_OFFSET);
        assert_eq!(
            stated("max_array_len"),
            crate::nano::DEFAULT_MAX_ARRAY_LEN as u64
        );
        assert_eq!(
            stated("timeout_ms"),
            DEFAULT_NODE_TIMEOUT.as_millis() as u64
        );
        assert_eq!(stated("max_answer_bytes"), DEFAULT_MAX_ANSWER_BYTES as u64);
        assert_eq!(
            stated("max_entries"),
            super::super::cache::DEFAULT_CACHE_ENTRIES
        );
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let file = WorkerFile::parse("", "x").expect("empty parses");
        let config = NanoServiceConfig::from_file(&file).expect("defaults");
        assert_eq!(config.relay.policy, Policy::read_only());
        assert_eq!(config.rate_limit, None);
        assert_eq!(
            config.cache_entries,
            super::super::cache::DEFAULT_CACHE_ENTRIES
        );
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(WorkerFile::parse("[node]\nurll = \"x\"", "f").is_err());
        assert!(WorkerFile::parse("[nodes]\n", "f").is_err());
        assert!(WorkerFile::parse("[node]\ntimeout_ms = \"ten\"", "f").is_err());
        let file = WorkerFile::parse("[policy]\nallow = [\"wallet_create\"]", "f").unwrap();
        assert!(NanoServiceConfig::from_file(&file).is_err());
        assert!(rate_limit(Some(0), None).is_err());
    }

    #[test]
    fn burst_defaults_to_twice_the_rate() {
        let limit = rate_limit(Some(5), None).unwrap().unwrap();
        assert_eq!((limit.per_second.get(), limit.burst.get()), (5, 10));
    }
}
