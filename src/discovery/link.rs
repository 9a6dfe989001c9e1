//! The Grenache link: announce and lookup through a grape's HTTP API.
//!
//! It speaks what grenache-nodejs-link speaks: `POST {grape}/{type}` with the JSON body
//! `{"rid": ..., "data": ...}`; the grape answers HTTP 200 with the result as JSON, or
//! with a JSON string starting `ERR_` (for example `"ERR_GRAPE_LOOKUP"`) on error.
//!
//! - `announce`: data `["key", port]`, tells the grape that a service listens on `port`
//!   of the grape's own host. Announcements expire (see the grape's announce window), so
//!   a worker re-announces on a jittered schedule ([`announce_delay`], [`Link::spawn_announcer`]).
//! - `lookup`: data `"key"`, answers `["ip:port", ...]`. Lookups are cached briefly, as
//!   grenache-nodejs-link does, and the cache entry can be dropped when an address fails.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::defaults::{DEFAULT_GRAPE_HTTP_TIMEOUT, DEFAULT_LOOKUP_CACHE_TTL};
use crate::protocol::record::WireRecord;

/// Why a grape request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The grape's HTTP API could not be reached or timed out.
    #[error("grape at {url} is unreachable: {reason} (is `nano-connect grape` running there? set it with --grape)")]
    Unreachable {
        /// The grape's base URL.
        url: String,
        /// The HTTP client's reason.
        reason: String,
    },
    /// The grape answered with a Grenache error code such as `ERR_GRAPE_LOOKUP`.
    #[error("grape answered {code}")]
    Grape {
        /// The code, as the grape sent it.
        code: String,
    },
    /// The grape answered something that is not the expected shape.
    #[error("grape answered an unexpected {what}: {detail}")]
    BadAnswer {
        /// What was expected.
        what: &'static str,
        /// What came.
        detail: String,
    },
}

/// A client of one grape's HTTP API.
#[derive(Debug, Clone)]
pub struct Link {
    grape: String,
    http: reqwest::Client,
    /// Recent lookups by key; `None` when caching is off.
    cache: Option<moka::sync::Cache<String, Vec<SocketAddr>>>,
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    rid: String,
    data: &'a T,
}

impl Link {
    /// A link to the grape at `grape_url` (for example `http://127.0.0.1:30001`), with
    /// lookups cached for [`DEFAULT_LOOKUP_CACHE_TTL`] (5 s).
    pub fn new(grape_url: &str) -> Self {
        Self::with_cache_ttl(grape_url, DEFAULT_LOOKUP_CACHE_TTL)
    }

    /// As [`Link::new`], with lookups cached for `cache_ttl` (zero disables the cache).
    pub fn with_cache_ttl(grape_url: &str, cache_ttl: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(DEFAULT_GRAPE_HTTP_TIMEOUT)
            .build()
            .unwrap_or_default();
        let cache = (!cache_ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(1024)
                .time_to_live(cache_ttl)
                .build()
        });
        Self {
            grape: grape_url.trim_end_matches('/').to_string(),
            http,
            cache,
        }
    }

    /// The grape's base URL.
    pub fn grape_url(&self) -> &str {
        &self.grape
    }

    async fn request<T: Serialize>(&self, kind: &str, data: &T) -> Result<Value, LinkError> {
        let url = format!("{}/{kind}", self.grape);
        let unreachable = |e: reqwest::Error| LinkError::Unreachable {
            url: self.grape.clone(),
            reason: e.without_url().to_string(),
        };
        let answer: Value = self
            .http
            .post(&url)
            .json(&Envelope {
                rid: request_id(),
                data,
            })
            .send()
            .await
            .map_err(unreachable)?
            .json()
            .await
            .map_err(unreachable)?;
        match answer {
            Value::String(code) if code.starts_with("ERR_") => Err(LinkError::Grape { code }),
            other => Ok(other),
        }
    }

    /// Announces that service `key` listens on `port` of the grape's host.
    ///
    /// Errors: the grape is unreachable or refuses (`ERR_GRAPE_ANNOUNCE`,
    /// `ERR_GRAPE_SERVICE_PORT`).
    pub async fn announce(&self, key: &str, port: u16) -> Result<(), LinkError> {
        self.request("announce", &(key, port)).await.map(|_| ())
    }

    /// The addresses announced for `key`, from the cache when fresh.
    ///
    /// An empty list is a valid answer (nobody announced). Errors: unreachable grape,
    /// a Grenache error code, or entries that are not `ip:port`.
    pub async fn lookup(&self, key: &str) -> Result<Vec<SocketAddr>, LinkError> {
        if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(key)) {
            return Ok(hit);
        }
        let answer = self.request("lookup", &key).await?;
        let Value::Array(entries) = answer else {
            return Err(LinkError::BadAnswer {
                what: "lookup answer",
                detail: answer.to_string(),
            });
        };
        let mut addrs = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry.as_str().and_then(|s| s.parse::<SocketAddr>().ok()) {
                Some(addr) => addrs.push(addr),
                None => warn!(%entry, "grape returned an entry that is not ip:port; skipped"),
            }
        }
        addrs.sort();
        addrs.dedup();
        if let (Some(cache), false) = (&self.cache, addrs.is_empty()) {
            cache.insert(key.to_string(), addrs.clone());
        }
        Ok(addrs)
    }

    /// Puts a worker's signed record through the grape (`/put` with `k`, `sig`, `seq`,
    /// `salt`, BEP 44): the grape checks the signature and stores it in the DHT, and
    /// cannot alter it (it holds no key).
    ///
    /// Errors: unreachable grape, or its `ERR_GRAPE_PUT*` code.
    pub async fn put_record(&self, record: &WireRecord) -> Result<(), LinkError> {
        let data = record.to_json().ok_or_else(|| LinkError::BadAnswer {
            what: "record",
            detail: "the record body is not UTF-8 text".into(),
        })?;
        self.request("put", &data).await.map(|_| ())
    }

    /// Gets the BEP 44 item of node key `k` with salt `salt` through the grape (`/get`
    /// with `k` and `salt`), unverified: the caller checks it ([`WireRecord::verify`]),
    /// since the grape is not trusted. `None` when the DHT has none.
    ///
    /// Errors: unreachable grape, its error code, or an answer that is not an item.
    pub async fn get_record(
        &self,
        k: &[u8; 32],
        salt: &str,
    ) -> Result<Option<WireRecord>, LinkError> {
        let data = serde_json::json!({ "k": hex::encode(k), "salt": salt });
        let answer = self.request("get", &data).await?;
        if answer.is_null() {
            return Ok(None);
        }
        let bad = |detail: &str| LinkError::BadAnswer {
            what: "get answer",
            detail: detail.to_string(),
        };
        let field = |name: &str| answer.get(name).ok_or_else(|| bad(name));
        let hex_field = |name: &str| -> Result<Vec<u8>, LinkError> {
            let text = field(name)?.as_str().ok_or_else(|| bad(name))?;
            hex::decode(text).map_err(|_| bad(name))
        };
        let k: [u8; 32] = hex_field("k")?.try_into().map_err(|_| bad("k"))?;
        let sig: [u8; 64] = hex_field("sig")?.try_into().map_err(|_| bad("sig"))?;
        Ok(Some(WireRecord {
            k,
            salt: field("salt")?
                .as_str()
                .ok_or_else(|| bad("salt"))?
                .to_string(),
            seq: field("seq")?.as_i64().ok_or_else(|| bad("seq"))?,
            v: field("v")?
                .as_str()
                .ok_or_else(|| bad("v"))?
                .as_bytes()
                .to_vec(),
            sig,
        }))
    }

    /// Forgets the cached lookup of `key`, so that the next lookup asks the grape.
    pub fn invalidate(&self, key: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(key);
        }
    }

    /// Announces `key` on `port` now and then again after every [`announce_delay`] of
    /// `interval`, until `cancel` fires. A failed announce is retried after at most 1 s,
    /// so a worker that started before its grape appears soon after the grape does.
    ///
    /// `on_announce` is called after each attempt with its result (for logs and tests).
    pub fn spawn_announcer(
        &self,
        key: String,
        port: u16,
        interval: Duration,
        cancel: CancellationToken,
        on_announce: impl Fn(&Result<(), LinkError>) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let link = self.clone();
        tokio::spawn(async move {
            loop {
                let result = link.announce(&key, port).await;
                on_announce(&result);
                let delay = match &result {
                    Ok(()) => {
                        debug!(%key, port, "announced");
                        announce_delay(interval, rand::random::<f64>())
                    }
                    Err(e) => {
                        warn!(%key, port, error = %e, "announce failed; retrying");
                        announce_delay(interval, rand::random::<f64>()).min(Duration::from_secs(1))
                    }
                };
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        })
    }
}

/// The pause before the next announce: `interval` with ±50 % jitter, as
/// grenache-nodejs-link does (synchronized re-announces flooded the DHT).
///
/// `unit` is a uniform random number in `[0, 1)`; the result lies in
/// `[interval / 2, interval * 3 / 2)`.
pub fn announce_delay(interval: Duration, unit: f64) -> Duration {
    interval.mul_f64(0.5 + unit.clamp(0.0, 1.0))
}

fn request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_delay_stays_within_half_and_one_and_a_half_intervals() {
        let i = Duration::from_secs(120);
        assert_eq!(announce_delay(i, 0.0), Duration::from_secs(60));
        assert_eq!(announce_delay(i, 0.5), Duration::from_secs(120));
        assert!(announce_delay(i, 0.999_999) < Duration::from_secs(180));
        assert_eq!(announce_delay(i, 7.0), Duration::from_secs(180));
    }
}
