//! A grape's lookup for web pages ([`LOOKUP_SERVICE`] on its WebTransport face): the
//! signed records of a key's workers that have a web face.
//!
//! A page cannot use the DHT or a broker, so the grape does it for the page with the
//! route a native client uses ([`RpcClient::candidates`]: the key's announces and the
//! brokers that carry it), then asks each worker found for its current record
//! ([`RECORD_SERVICE`] on the worker's native face: the handshake proves the node, and
//! the record must be signed by it). The page checks every record again: the grape is not
//! trusted, and can at worst leave workers out.
//!
//! ```text
//!  page ─ LOOKUP_SERVICE "nano_rpc" ─► grape ─ candidates ─► DHT, brokers
//!                                        └─ RECORD_SERVICE ─► each worker (cached per node)
//!  page ◄─ {"records": [...], "grape": "https://...#sha256=..."} ─┘
//! ```
//!
//! A page cannot dial a worker behind a NAT (browsers cannot punch holes), so the grape
//! also carries requests to the workers it listed that have no public address
//! ([`RELAY_SERVICE`]): it reaches them by the native route (brokers, punching, the
//! broker's relay) and passes the worker's answer back unchanged. Such answers are only
//! as trustworthy as the grape; the page says which answers were relayed.
//!
//! Costs are bounded: answers are reused for [`ANSWER_TTL`] per key, records for
//! [`RECORD_TTL`] per node (never past their `exp`), at most [`MAX_WORKERS_ASKED`]
//! workers are asked per lookup, and one IP address may start
//! [`LOOKUPS_PER_SECOND_PER_IP`] uncached lookups a second and
//! [`RELAYS_PER_SECOND_PER_IP`] relayed requests.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::watch;
use tracing::debug;

use super::{WebListing, WebService};
use crate::defaults::DEFAULT_MAX_REQUEST_BYTES;
use crate::protocol::frame::{ErrorCode, ResponseFrame, WireError};
use crate::protocol::identity::NodeId;
use crate::protocol::record::{WireRecord, MAX_SERVICE_KEY_BYTES, RECORD_SERVICE};
use crate::protocol::web::{
    LookupAnswer, RelayRequest, WebEndpoint, LOOKUP_SERVICE, RELAY_SERVICE,
};
use crate::route::{Candidate, RpcClient};
use crate::worker::presence::unix_ms;
use crate::worker::server::{read_request, write_response};
use crate::worker::RpcServerConfig;

/// How long an answer for a key is reused.
pub const ANSWER_TTL: Duration = Duration::from_secs(5);

/// How long a worker's record is reused (less when its `exp` comes first).
pub const RECORD_TTL: Duration = Duration::from_secs(60);

/// Most workers asked for their record in one lookup.
pub const MAX_WORKERS_ASKED: usize = 16;

/// Uncached lookups one IP address may start per second (burst the same).
pub const LOOKUPS_PER_SECOND_PER_IP: u32 = 10;

/// Requests one IP address may have relayed per second (burst twice as many).
pub const RELAYS_PER_SECOND_PER_IP: u32 = 50;

/// Time a relayed request may take, the worker's node included.
const RELAY_DEADLINE: Duration = Duration::from_secs(10);

/// Bytes a relay request's envelope (node id, key, MessagePack) may add to the body.
const RELAY_ENVELOPE_BYTES: usize = 256;

/// Time one worker has to hand over its record.
const RECORD_DEADLINE: Duration = Duration::from_secs(2);

/// Time a whole lookup may take.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(8);

/// The lookup service of a grape's WebTransport face.
pub struct WebLookup {
    client: RpcClient,
    answers: moka::sync::Cache<String, Arc<Vec<serde_json::Value>>>,
    records: moka::sync::Cache<NodeId, WireRecord>,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    relay_limiter: DefaultKeyedRateLimiter<IpAddr>,
    own: OnceLock<(IpAddr, watch::Receiver<WebListing>)>,
    frames: RpcServerConfig,
}

impl std::fmt::Debug for WebLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebLookup").finish_non_exhaustive()
    }
}

impl WebLookup {
    /// A lookup service that finds workers with `client` (its discovery: the grape's own
    /// DHT node).
    pub fn new(client: RpcClient) -> Self {
        let per_ip = NonZeroU32::new(LOOKUPS_PER_SECOND_PER_IP).unwrap_or(NonZeroU32::MIN);
        Self {
            client,
            answers: moka::sync::Cache::builder()
                .max_capacity(1024)
                .time_to_live(ANSWER_TTL)
                .build(),
            records: moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_live(RECORD_TTL)
                .build(),
            limiter: RateLimiter::keyed(Quota::per_second(per_ip)),
            relay_limiter: RateLimiter::keyed(relay_quota()),
            own: OnceLock::new(),
            frames: RpcServerConfig {
                max_request_bytes: DEFAULT_MAX_REQUEST_BYTES + RELAY_ENVELOPE_BYTES,
                ..RpcServerConfig::default()
            },
        }
    }

    /// Tells the service its own face (the address pages use, and the server's listing),
    /// which every answer carries so that open pages learn of rotations. Set once.
    pub fn set_own(&self, ip: IpAddr, listing: watch::Receiver<WebListing>) {
        let _ = self.own.set((ip, listing));
    }

    fn own_endpoint(&self) -> String {
        let Some((ip, listing)) = self.own.get() else {
            return String::new();
        };
        let listing = listing.borrow();
        WebEndpoint {
            addr: SocketAddr::new(*ip, listing.port),
            sha256: listing
                .sha256
                .iter()
                .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
                .collect(),
        }
        .to_string()
    }

    /// The records of `key`'s workers that list a web face, each verified here.
    ///
    /// Errors: the lookup failed (the DHT is unreachable), as a [`WireError`].
    pub async fn records(
        &self,
        key: &str,
        from: IpAddr,
    ) -> Result<Arc<Vec<serde_json::Value>>, WireError> {
        if let Some(hit) = self.answers.get(key) {
            return Ok(hit);
        }
        if self.limiter.check_key(&from).is_err() {
            return Err(WireError::new(
                ErrorCode::Busy,
                format!("over {LOOKUPS_PER_SECOND_PER_IP} lookups a second; retry in a second"),
            ));
        }
        let candidates = match self.client.candidates(key).await {
            Ok(c) => c,
            Err(crate::route::CallError::NoWorkers { .. }) => Vec::new(),
            Err(e) => {
                return Err(WireError::new(
                    ErrorCode::UpstreamUnreachable,
                    format!("lookup failed: {e}"),
                ))
            }
        };
        let asks = candidates
            .iter()
            .take(MAX_WORKERS_ASKED)
            .map(|c| self.record_of(c, key));
        let found: Vec<serde_json::Value> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        let found = Arc::new(found);
        self.answers.insert(key.to_string(), found.clone());
        Ok(found)
    }

    /// The record of one candidate, if it verifies and lists a web face.
    async fn record_of(&self, candidate: &Candidate, key: &str) -> Option<serde_json::Value> {
        let now = unix_ms();
        if let Some(node) = &candidate.node {
            if let Some(wire) = self.records.get(node) {
                if let Ok(record) = wire.verify(key, Some(node), now) {
                    if listed(&record.body) {
                        return wire.to_json();
                    }
                }
            }
        }
        let answer = match self
            .client
            .request_candidate_as(
                candidate,
                key,
                RECORD_SERVICE,
                key.as_bytes(),
                RECORD_DEADLINE,
            )
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                debug!(worker = %candidate, error = %e, "worker did not give its record");
                return None;
            }
        };
        let wire: WireRecord = match rmp_serde::from_slice(&answer.body) {
            Ok(wire) => wire,
            Err(e) => {
                debug!(node = %answer.node, error = %e, "unreadable record");
                return None;
            }
        };
        match wire.verify(key, Some(&answer.node), now) {
            Ok(record) if listed(&record.body) => {
                self.records.insert(answer.node, wire.clone());
                wire.to_json()
            }
            Ok(_) => None,
            Err(e) => {
                debug!(node = %answer.node, error = %e, "record not believed");
                None
            }
        }
    }

    async fn answer(&self, key: &str, from: IpAddr) -> Result<Vec<u8>, WireError> {
        let records = tokio::time::timeout(LOOKUP_DEADLINE, self.records(key, from))
            .await
            .map_err(|_| {
                WireError::new(
                    ErrorCode::UpstreamTimeout,
                    format!("lookup took over {} ms", LOOKUP_DEADLINE.as_millis()),
                )
            })??;
        let answer = LookupAnswer {
            v: 1,
            key: key.to_string(),
            records: records.to_vec(),
            grape: self.own_endpoint(),
        };
        serde_json::to_vec(&answer).map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
    }
}

impl WebLookup {
    /// Carries one page request to a worker this grape listed that has no public
    /// address, and returns the worker's answer (or its refusal) unchanged.
    async fn relay(&self, id: u64, body: &[u8], from: IpAddr) -> ResponseFrame {
        let refuse =
            |code, message: String| ResponseFrame::failure(id, WireError::new(code, message));
        if self.relay_limiter.check_key(&from).is_err() {
            return refuse(
                ErrorCode::Busy,
                format!(
                    "over {RELAYS_PER_SECOND_PER_IP} relayed requests a second; retry in a second"
                ),
            );
        }
        let request: RelayRequest = match rmp_serde::from_slice(body) {
            Ok(request) => request,
            Err(e) => {
                return refuse(
                    ErrorCode::MalformedFrame,
                    format!("not a relay request: {e}"),
                )
            }
        };
        let Ok(node) = request.node.parse::<NodeId>() else {
            return refuse(
                ErrorCode::InvalidRequest,
                "node is not a node id".to_owned(),
            );
        };
        // Only workers this grape listed for pages, behind a NAT: no open relay.
        let relayable = self.records.get(&node).is_some_and(|wire| {
            wire.verify(&request.key, Some(&node), unix_ms())
                .is_ok_and(|record| behind_nat(&record.body))
        });
        if !relayable {
            return refuse(
                ErrorCode::UnknownService,
                format!(
                    "this grape relays only to workers behind a NAT that its lookup of {:?} listed; look the key up again",
                    request.key
                ),
            );
        }
        let candidates = match self.client.candidates(&request.key).await {
            Ok(c) => c,
            Err(e) => {
                return refuse(
                    ErrorCode::UpstreamUnreachable,
                    format!("lookup failed: {e}"),
                )
            }
        };
        let Some(candidate) = candidates.iter().find(|c| c.node.as_ref() == Some(&node)) else {
            return refuse(
                ErrorCode::UpstreamUnreachable,
                format!("worker {node} is no longer found under {:?}", request.key),
            );
        };
        match self
            .client
            .request_candidate(candidate, &request.key, &request.body, RELAY_DEADLINE)
            .await
        {
            Ok(answer) => ResponseFrame::answer(id, answer.status, answer.body),
            Err(crate::route::CallError::Refused { error, .. }) => {
                ResponseFrame::failure(id, error)
            }
            Err(crate::route::CallError::Timeout { .. }) => refuse(
                ErrorCode::UpstreamTimeout,
                format!(
                    "worker {node} gave this grape no answer within {} ms",
                    RELAY_DEADLINE.as_millis()
                ),
            ),
            Err(e) => refuse(
                ErrorCode::UpstreamUnreachable,
                format!("this grape could not reach worker {node}: {e}"),
            ),
        }
    }
}

/// Whether a record's worker has no public address: pages reach it through a grape.
fn behind_nat(body: &crate::protocol::record::RecordBody) -> bool {
    body.addrs.is_empty() && !body.via.is_empty()
}

/// Whether a lookup answer lists a record: it has a web face, or pages reach it
/// through the grape ([`behind_nat`]).
fn listed(body: &crate::protocol::record::RecordBody) -> bool {
    body.web.is_some() || behind_nat(body)
}

fn relay_quota() -> Quota {
    let per_second = NonZeroU32::new(RELAYS_PER_SECOND_PER_IP).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(2 * RELAYS_PER_SECOND_PER_IP).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

impl WebService for WebLookup {
    async fn serve_stream(
        &self,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        peer: SocketAddr,
    ) {
        let config = &self.frames;
        let request = match tokio::time::timeout(
            config.read_timeout,
            read_request(recv, config.max_request_bytes),
        )
        .await
        {
            Ok(Ok(request)) => request,
            Ok(Err(e)) => {
                let error = WireError::new(e.code(), e.to_string());
                write_response(send, ResponseFrame::failure(0, error), config).await;
                return;
            }
            Err(_) => {
                let error = WireError::new(ErrorCode::MalformedFrame, "no request frame in time");
                write_response(send, ResponseFrame::failure(0, error), config).await;
                return;
            }
        };
        let id = request.id;
        let response = if request.key == RELAY_SERVICE {
            self.relay(id, &request.body, peer.ip()).await
        } else if request.key != LOOKUP_SERVICE {
            ResponseFrame::failure(
                id,
                WireError::new(
                    ErrorCode::UnknownService,
                    format!("a grape answers {LOOKUP_SERVICE:?} and {RELAY_SERVICE:?} only"),
                ),
            )
        } else {
            match std::str::from_utf8(&request.body) {
                Ok(key) if !key.is_empty() && key.len() <= MAX_SERVICE_KEY_BYTES => {
                    match self.answer(key, peer.ip()).await {
                        Ok(body) => ResponseFrame::answer(id, 200, body),
                        Err(error) => ResponseFrame::failure(id, error),
                    }
                }
                _ => ResponseFrame::failure(
                    id,
                    WireError::new(
                        ErrorCode::InvalidRequest,
                        "the body must be a service key of 1 to 64 bytes of UTF-8",
                    ),
                ),
            }
        };
        write_response(send, response, config).await;
    }
}

impl<S: WebService> WebService for Arc<S> {
    fn serve_stream<'a>(
        &'a self,
        send: &'a mut quinn::SendStream,
        recv: &'a mut quinn::RecvStream,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        S::serve_stream(self, send, recv, peer)
    }
}
