//! The grape's guard on its DHT port: a mainline [`RequestFilter`] that applies the
//! per-source [`SourceQuota`] to what other nodes ask it to store (BEP 5 `announce_peer`,
//! BEP 44 `put`), and a per-source request rate to everything.
//!
//! mainline 8.0.1 hands the filter the request but does not export the type of its
//! variants, so the kind and target of a store are read from the request's `Debug` form
//! (`Put(PutRequest { .., put_request_type: AnnouncePeer(AnnouncePeerRequestArguments {
//! info_hash: Id(<40 hex>) ..`). [`store_target`] does that and nothing else; a test
//! checks it against real requests arriving over UDP, so a mainline upgrade that changes
//! the form fails the tests instead of silently opening the door.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use mainline::{RequestFilter, RequestSpecific};

use crate::quota::{QuotaLimits, SourceQuota};

/// Requests per second one source may send to a grape's DHT port, sustained. A grape
/// that relays many clients' lookups to this one sends a few hundred; a flood, thousands.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 500;

/// Requests one source may send at once above the sustained rate.
pub const DEFAULT_REQUEST_BURST: u32 = 2_000;

/// Which kind of store a request is, and its target (infohash or BEP 44 target), read
/// from the request's `Debug` form; `None` for every request that stores nothing.
pub fn store_target(debug: &str) -> Option<(&'static str, [u8; 20])> {
    let rest = debug.strip_prefix("Put(")?;
    let kind_at = rest.find("put_request_type: ")? + "put_request_type: ".len();
    let rest = &rest[kind_at..];
    let kind = ["AnnouncePeer", "PutImmutable", "PutMutable"]
        .into_iter()
        .find(|k| rest.starts_with(k))?;
    let id_at = rest.find("Id(")? + 3;
    let hex = rest.get(id_at..id_at + 40)?;
    let mut target = [0u8; 20];
    hex::decode_to_slice(hex, &mut target).ok()?;
    Some((kind, target))
}

/// The port a BEP 5 `announce_peer` stores, read from the request's `Debug` form
/// (`port: N, implied_port: Some(true)|Some(false)|None`): the sender's port when
/// `implied_port` is set, else `port`; the sender's port too when the form cannot be read
/// (so that a changed form still counts each sender's port as one entry).
pub fn announced_port(debug: &str, from_port: u16) -> u64 {
    if debug.contains("implied_port: Some(true)") {
        return u64::from(from_port);
    }
    debug
        .find("port: ")
        .and_then(|at| {
            let digits: String = debug[at + 6..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse::<u16>().ok()
        })
        .map_or(u64::from(from_port), u64::from)
}

/// The filter mainline runs on every request; clones share their state.
#[derive(Clone)]
pub struct SourceFilter {
    quota: Arc<Mutex<SourceQuota>>,
    rate: Arc<DefaultKeyedRateLimiter<Ipv4Addr>>,
    started: Instant,
    refused: Arc<AtomicU64>,
    seen: Arc<AtomicU64>,
}

impl std::fmt::Debug for SourceFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceFilter")
            .field("refused", &self.refused())
            .finish_non_exhaustive()
    }
}

impl SourceFilter {
    /// A filter with `limits` for stores and [`DEFAULT_REQUESTS_PER_SECOND`] /
    /// [`DEFAULT_REQUEST_BURST`] for requests.
    pub fn new(limits: QuotaLimits) -> Self {
        let per_second = NonZeroU32::new(DEFAULT_REQUESTS_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(DEFAULT_REQUEST_BURST).unwrap_or(NonZeroU32::MIN);
        Self {
            quota: Arc::new(Mutex::new(SourceQuota::new(limits))),
            rate: Arc::new(RateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            )),
            started: Instant::now(),
            refused: Arc::new(AtomicU64::new(0)),
            seen: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Requests refused so far (over the rate or the store quota).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn refuse(&self) -> bool {
        self.refused.fetch_add(1, Ordering::Relaxed);
        false
    }
}

impl RequestFilter for SourceFilter {
    fn allow_request(&self, request: &RequestSpecific, from: SocketAddrV4) -> bool {
        let ip = *from.ip();
        if self.seen.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.rate.retain_recent();
        }
        if self.rate.check_key(&ip).is_err() {
            return self.refuse();
        }
        let debug = format!("{:?}", request.request_type);
        let Some((kind, target)) = store_target(&debug) else {
            return true;
        };
        let mut quota = match self.quota.lock() {
            Ok(quota) => quota,
            Err(poisoned) => poisoned.into_inner(),
        };
        let entry = match kind {
            "AnnouncePeer" => announced_port(&debug, from.port()),
            _ => 0,
        };
        match quota.admit(ip.into(), target, entry, self.started.elapsed()) {
            Ok(()) => true,
            Err(why) => {
                tracing::debug!(%from, kind, %why, "store refused");
                drop(quota);
                self.refuse()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_targets_are_read_from_the_debug_form() {
        let hex = "a9993e364706816aba3e25717850c26c9cd0d89d";
        let announce = format!(
            "Put(PutRequest {{ token: [1, 2], put_request_type: AnnouncePeer(\
             AnnouncePeerRequestArguments {{ info_hash: Id({hex}), port: 80, implied_port: None }}) }})"
        );
        let (kind, target) = store_target(&announce).unwrap();
        assert_eq!(kind, "AnnouncePeer");
        assert_eq!(hex::encode(target), hex);
        let get = format!("GetPeers(GetPeersRequestArguments {{ info_hash: Id({hex}) }})");
        assert_eq!(store_target(&get), None);
        assert_eq!(store_target("Ping"), None);
        assert_eq!(store_target("Put(garbage"), None);
        assert_eq!(announced_port(&announce, 6881), 80);
        let implied = announce.replace("implied_port: None", "implied_port: Some(true)");
        assert_eq!(announced_port(&implied, 6881), 6881);
    }
}
