//! Discovery: where workers and brokers are found, through the mainline DHT, and the
//! key names the mesh uses in it (docs/protocol.md §1).
//!
//! A [`Directory`] is a role's way into the DHT: a grape's Grenache HTTP API
//! ([`link::Link`], for a worker or client next to a grape), or a DHT node of its own
//! ([`Directory::embedded`], a client-mode mainline node for a user with nothing else).
//! Both speak only what mainline nodes speak (BEP 5 announces and lookups on the
//! time-slotted infohashes of [`grape::infohash`], BEP 44 items), so the mesh lives on
//! the public DHT, whose nodes know nothing of nano-connect.
//!
//! Three kinds of entries, each under its own key (see [`keys`]):
//!
//! | key | entries (BEP 5 `IP:port`) | who announces |
//! |---|---|---|
//! | `KEY` (for example `nano_rpc`) | QUIC addresses of public workers | the worker (through its grape, or its own node) |
//! | `nano-connect/via-broker/KEY` | UDP addresses of brokers holding registrations of `KEY` | the broker's grape |
//! | `nano-connect/brokers` | UDP addresses of every broker | each grape that runs one |
//!
//! and one kind of BEP 44 item: a worker's signed record (k = its node id, salt = `KEY`,
//! [`crate::protocol::record`]), found by node id alone.

pub mod link;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use grape::{GrapeConfig, GrapeDht};

use crate::protocol::identity::NodeId;
use crate::protocol::record::{Record, WireRecord};
use link::{Link, LinkError};

/// The DHT key names of the mesh (docs/protocol.md §1.3).
pub mod keys {
    /// The key under which every grape that runs a broker announces the broker's port.
    pub const BROKERS: &str = "nano-connect/brokers";

    /// The key under which brokers holding registrations of `service` announce
    /// themselves: `nano-connect/via-broker/` followed by the service key.
    pub fn via_broker(service: &str) -> String {
        format!("nano-connect/via-broker/{service}")
    }
}

/// Longest an embedded node's lookup or get collects answers.
const EMBEDDED_LOOKUP_DEADLINE: Duration = Duration::from_secs(2);

/// How long an embedded node's lookup keeps collecting after its first answer. A grape
/// serving many clients collects longer (150 ms) to hand out a fuller list; a caller's
/// own node needs a worker or two now, and the next lookup (or the cache) brings more.
const EMBEDDED_LOOKUP_SETTLE: Duration = Duration::from_millis(50);

/// Why a DHT operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The grape's HTTP API failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The embedded DHT node failed.
    #[error("DHT: {0}")]
    Dht(#[from] grape::GrapeError),
}

/// A role's way into the DHT.
#[derive(Debug, Clone)]
pub enum Directory {
    /// Through a grape's Grenache HTTP API (`--grape URL`).
    Grape(Link),
    /// Through a DHT node in this process (client mode unless made otherwise).
    Dht(Arc<GrapeDht>),
}

impl Directory {
    /// A client-mode mainline node of this process on any free UDP port, bootstrapped from
    /// `bootstrap` (`HOST:PORT` each; `None`: mainline's public bootstrap routers).
    ///
    /// Errors: a bootstrap node that does not resolve, or no UDP port.
    pub async fn embedded(bootstrap: Option<Vec<String>>) -> Result<Self, DiscoveryError> {
        let config = GrapeConfig {
            dht_port: 0,
            bootstrap,
            client_mode: true,
            lookup_deadline: EMBEDDED_LOOKUP_DEADLINE,
            lookup_settle: EMBEDDED_LOOKUP_SETTLE,
            ..GrapeConfig::default()
        };
        Ok(Self::Dht(Arc::new(GrapeDht::start(&config).await?)))
    }

    /// Announces that `key` is served on UDP `port` of this host (BEP 5 announce_peer on
    /// the slot infohash: through a grape, the grape's IP; through an own node, the IP the
    /// DHT nodes see).
    pub async fn announce(&self, key: &str, port: u16) -> Result<(), DiscoveryError> {
        match self {
            Self::Grape(link) => Ok(link.announce(key, port).await?),
            Self::Dht(dht) => dht
                .announce(key, port)
                .await
                .map(|_| ())
                .map_err(Into::into),
        }
    }

    /// The `IP:port` entries announced for `key` (current and recent slots).
    pub async fn lookup(&self, key: &str) -> Result<Vec<SocketAddr>, DiscoveryError> {
        match self {
            Self::Grape(link) => Ok(link.lookup(key).await?),
            Self::Dht(dht) => Ok(dht
                .lookup(key, EMBEDDED_LOOKUP_DEADLINE)
                .await?
                .into_iter()
                .map(SocketAddr::V4)
                .collect()),
        }
    }

    /// Forgets a cached lookup of `key` (a grape link caches lookups for a few seconds).
    pub fn invalidate(&self, key: &str) {
        if let Self::Grape(link) = self {
            link.invalidate(key);
        }
    }

    /// Puts a worker's signed record as a BEP 44 mutable item.
    pub async fn publish(&self, record: &Record) -> Result<(), DiscoveryError> {
        match self {
            Self::Grape(link) => Ok(link.put_record(&record.wire).await?),
            Self::Dht(dht) => dht
                .put_mutable(record.to_mutable_item(), None)
                .await
                .map(|_| ())
                .map_err(Into::into),
        }
    }

    /// Gets the record `node` published for `service` (BEP 44 get of `k` = the node id,
    /// salt = `service`), unverified: verify it before use.
    pub async fn fetch(
        &self,
        node: &NodeId,
        service: &str,
    ) -> Result<Option<WireRecord>, DiscoveryError> {
        match self {
            Self::Grape(link) => Ok(link.get_record(node.as_bytes(), service).await?),
            Self::Dht(dht) => Ok(dht
                .get_mutable(
                    node.as_bytes(),
                    Some(service.as_bytes()),
                    EMBEDDED_LOOKUP_DEADLINE,
                )
                .await
                .as_ref()
                .and_then(WireRecord::from_mutable_item)),
        }
    }

    /// What to call this directory in logs: the grape's URL or `dht`.
    pub fn describe(&self) -> String {
        match self {
            Self::Grape(link) => link.grape_url().to_string(),
            Self::Dht(dht) => format!("own DHT node on {}", dht.local_addr()),
        }
    }
}
