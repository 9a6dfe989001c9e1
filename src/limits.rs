//! Per-client rate limiting for a worker: [`RateLimited`] wraps any [`Handler`] and
//! refuses a client (by the IP address its QUIC path comes from, [`Request::peer`]) that
//! asks more often than its quota, with [`ErrorCode::Busy`] and a message that says when
//! to retry.
//!
//! The quota is a GCRA token bucket ([`governor`]): `burst` requests at once, refilled at
//! `per_second`. Keys are IP addresses, not `ip:port`, so that opening more connections
//! does not buy more requests. A refused request never reaches the inner handler.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::protocol::frame::ErrorCode;
use crate::service::{Handler, Reply, Request};

/// A client's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second per client IP.
    pub per_second: NonZeroU32,
    /// Requests a client may make at once after a quiet spell.
    pub burst: NonZeroU32,
}

/// How many checks between sweeps of the per-IP state of clients that went quiet.
const SWEEP_EVERY: u64 = 4096;

/// A [`Handler`] that refuses clients over their [`RateLimit`] with
/// [`ErrorCode::Busy`] (`"rate limit of N requests/s per client exceeded; retry after M
/// ms"`) and passes every other request to the inner handler.
#[derive(Debug)]
pub struct RateLimited<H> {
    inner: H,
    limit: Option<(RateLimit, DefaultKeyedRateLimiter<IpAddr>)>,
    checks: AtomicU64,
}

impl<H> RateLimited<H> {
    /// Wraps `inner` with `limit` (`None`: no limit, every request passes).
    pub fn new(inner: H, limit: Option<RateLimit>) -> Self {
        let limit = limit.map(|limit| {
            let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
            (limit, RateLimiter::keyed(quota))
        });
        Self {
            inner,
            limit,
            checks: AtomicU64::new(0),
        }
    }

    /// The inner handler.
    pub fn inner(&self) -> &H {
        &self.inner
    }

    /// `Ok` when `ip` may make a request now, else how long until it may.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some((_, limiter)) = &self.limit else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }
}

impl<H: Handler> Handler for RateLimited<H> {
    async fn handle(&self, request: Request) -> Reply {
        match self.check(request.peer.ip()) {
            Ok(()) => self.inner.handle(request).await,
            Err(wait) => {
                // Round up: "retry after 0 ms" would invite an immediate retry.
                let ms = wait.as_millis().max(1);
                let rate = self.limit.as_ref().map_or(0, |(l, _)| l.per_second.get());
                tracing::debug!(peer = %request.peer, retry_ms = ms as u64, "rate limited");
                Reply::failure(
                    ErrorCode::Busy,
                    format!(
                        "rate limit of {rate} requests/s per client exceeded; retry after {ms} ms"
                    ),
                )
            }
        }
    }
}
