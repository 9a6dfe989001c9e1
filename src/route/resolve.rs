//! From a service key to the workers a request may go to (docs/protocol.md §1.3, §6).
//!
//! A lookup asks the DHT two things at once: `KEY` (the QUIC addresses of public
//! workers) and `nano-connect/via-broker/KEY` (the brokers that hold registrations of
//! workers behind NATs). Each broker is then asked for its workers' signed records
//! (`List`), which are believed only when they verify ([`WireRecord::verify`]). The
//! result is one [`Candidate`] per worker: a node id where it is known (a record), and
//! the ways to reach it (its own addresses, its brokers). A public worker found by its
//! address alone proves its node id in the handshake.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tracing::debug;

use crate::discovery::{keys, Directory, DiscoveryError};
use crate::protocol::broker::{padded, BrokerMessage};
use crate::protocol::identity::NodeId;
use crate::protocol::record::{Record, WireRecord};
use crate::traversal::{BrokerError, Mux};

/// Pages of a broker's list a client reads at most (about 4 records a page).
const MAX_LIST_PAGES: u16 = 16;

/// Where a client looks for workers.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// Nowhere: only requests to a known address work.
    None,
    /// A DHT, through a grape or a node of its own.
    Directory(Directory),
    /// These brokers, asked directly (`--broker`), without the DHT.
    Brokers(Vec<SocketAddr>),
}

/// Where a candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A lookup, now.
    Lookup,
    /// The on-disk cache of workers that answered before.
    Cache,
    /// A record fetched by node id (BEP 44).
    Record,
}

/// One worker a request may go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its node id, when known before the handshake.
    pub node: Option<NodeId>,
    /// Addresses that take QUIC directly (a public worker, or one on this LAN).
    pub addrs: Vec<SocketAddr>,
    /// Brokers it is registered with.
    pub brokers: Vec<SocketAddr>,
    /// Where it came from.
    pub origin: Origin,
}

impl fmt::Display for Candidate {
    /// `NODEID` when known, else its first address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.node, self.addrs.first(), self.brokers.first()) {
            (Some(node), _, _) => write!(f, "{node}"),
            (None, Some(addr), _) => write!(f, "{addr}"),
            (None, None, Some(broker)) => write!(f, "a worker at broker {broker}"),
            (None, None, None) => f.write_str("(nowhere)"),
        }
    }
}

impl Candidate {
    /// A candidate from a verified record: its addresses and brokers.
    pub fn from_record(record: &Record, origin: Origin) -> Self {
        Self {
            node: Some(record.node),
            addrs: record.body.addrs.clone(),
            brokers: record.body.via.iter().map(|v| v.broker).collect(),
            origin,
        }
    }

    /// Merges what `other` (the same node) knows into this one.
    fn merge(&mut self, other: Candidate) {
        for a in other.addrs {
            if !self.addrs.contains(&a) {
                self.addrs.push(a);
            }
        }
        for b in other.brokers {
            if !self.brokers.contains(&b) {
                self.brokers.push(b);
            }
        }
    }
}

/// Merges candidates of the same node (and drops address-only candidates whose address
/// a known node lists), keeping the first one's place.
pub fn merge(candidates: Vec<Candidate>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::with_capacity(candidates.len());
    let mut by_node: HashMap<NodeId, usize> = HashMap::new();
    for c in candidates {
        match c.node {
            Some(node) => match by_node.get(&node) {
                Some(&at) => out[at].merge(c),
                None => {
                    by_node.insert(node, out.len());
                    out.push(c);
                }
            },
            None => out.push(c),
        }
    }
    let known: Vec<SocketAddr> = out
        .iter()
        .filter(|c| c.node.is_some())
        .flat_map(|c| c.addrs.iter().copied())
        .collect();
    out.retain(|c| {
        c.node.is_some() || !c.addrs.iter().all(|a| known.contains(a)) || c.addrs.is_empty()
    });
    out
}

/// Asks `broker` for the records of `key`'s workers (every page, at most
/// [`MAX_LIST_PAGES`]), from `mux`'s socket. Unverified: verify each.
pub async fn list(
    mux: &Mux,
    broker: SocketAddr,
    key: &str,
    timeout: Duration,
) -> Result<Vec<WireRecord>, BrokerError> {
    let mut records = Vec::new();
    let mut skip: u16 = 0;
    for _ in 0..MAX_LIST_PAGES {
        let tx: u64 = rand::random();
        let request = padded(BrokerMessage::List {
            tx,
            key: key.to_string(),
            skip,
            pad: Vec::new(),
        });
        let (answer, _) = mux.ask(broker, &request, tx, timeout).await?;
        let BrokerMessage::Listed {
            records: page,
            total,
            ..
        } = answer
        else {
            return Err(match answer {
                BrokerMessage::Refused { code, message, .. } => {
                    BrokerError::Refused { code, message }
                }
                other => BrokerError::NoPath(format!("unexpected answer {other:?}")),
            });
        };
        let got = u16::try_from(page.len()).unwrap_or(u16::MAX);
        records.extend(page);
        skip = skip.saturating_add(got);
        if got == 0 || skip >= total {
            break;
        }
    }
    Ok(records)
}

/// How long a lookup of one index waits for the other once it has found something: an
/// empty lookup ends only when every DHT node asked has answered or timed out (seconds
/// when one is dead), and the other index's entries are enough to go on.
const OTHER_INDEX_GRACE: Duration = Duration::from_millis(100);

/// Runs both lookups; once one has entries, waits [`OTHER_INDEX_GRACE`] more for the
/// other (`None` when it did not end by then). The direct index may fail the whole
/// lookup; the brokers' index may not.
async fn first_then_settle<A, B, T>(
    direct: A,
    brokers: B,
) -> (
    Option<Result<Vec<T>, DiscoveryError>>,
    Option<Result<Vec<T>, DiscoveryError>>,
)
where
    A: std::future::Future<Output = Result<Vec<T>, DiscoveryError>>,
    B: std::future::Future<Output = Result<Vec<T>, DiscoveryError>>,
{
    tokio::pin!(direct, brokers);
    let found = |r: &Result<Vec<T>, DiscoveryError>| r.as_ref().is_ok_and(|v| !v.is_empty());
    tokio::select! {
        d = &mut direct => {
            if found(&d) {
                let b = tokio::time::timeout(OTHER_INDEX_GRACE, brokers).await.ok();
                (Some(d), b)
            } else {
                (Some(d), Some(brokers.await))
            }
        }
        b = &mut brokers => {
            if found(&b) {
                let d = tokio::time::timeout(OTHER_INDEX_GRACE, direct).await.ok();
                (d, Some(b))
            } else {
                (Some(direct.await), Some(b))
            }
        }
    }
}

/// Looks `key` up: public workers by address, and every broker's verified records.
/// Records that do not verify are skipped (logged): a lying broker or grape loses only
/// its own entries. `unix_ms` is the wall clock (record expiry).
pub async fn lookup(
    discovery: &Discovery,
    mux: &Mux,
    key: &str,
    broker_timeout: Duration,
    unix_ms: u64,
) -> Result<Vec<Candidate>, DiscoveryError> {
    let (direct, brokers) = match discovery {
        Discovery::None => (Vec::new(), Vec::new()),
        Discovery::Brokers(brokers) => (Vec::new(), brokers.clone()),
        Discovery::Directory(directory) => {
            let via = keys::via_broker(key);
            let (direct, brokers) =
                first_then_settle(directory.lookup(key), directory.lookup(&via)).await;
            let brokers = brokers.map(|b| {
                b.unwrap_or_else(|e| {
                    debug!(error = %e, "lookup of brokers failed");
                    Vec::new()
                })
            });
            let direct = match direct {
                Some(direct) => direct?,
                None => Vec::new(),
            };
            (direct, brokers.unwrap_or_default())
        }
    };
    let lists = futures::future::join_all(brokers.iter().map(|&broker| async move {
        mux.socket().trust_broker(broker);
        (broker, list(mux, broker, key, broker_timeout).await)
    }))
    .await;
    let mut candidates: Vec<Candidate> = Vec::new();
    for (broker, listed) in lists {
        match listed {
            Ok(records) => {
                for wire in records {
                    match wire.verify(key, None, unix_ms) {
                        Ok(record) => {
                            let mut c = Candidate::from_record(&record, Origin::Lookup);
                            // It was listed here, so this broker carries it, whatever
                            // address the record gives the broker.
                            if !c.brokers.contains(&broker) {
                                c.brokers.insert(0, broker);
                            }
                            candidates.push(c);
                        }
                        Err(e) => debug!(%broker, error = %e, "a listed record is not believed"),
                    }
                }
            }
            Err(e) => debug!(%broker, error = %e, "broker did not list its workers"),
        }
    }
    candidates.extend(direct.into_iter().map(|addr| Candidate {
        node: None,
        addrs: vec![addr],
        brokers: Vec::new(),
        origin: Origin::Lookup,
    }));
    Ok(merge(candidates))
}

/// The record `node` published for `key` in the DHT (BEP 44), if it verifies.
pub async fn named(
    directory: &Directory,
    node: &NodeId,
    key: &str,
    unix_ms: u64,
) -> Option<Record> {
    match directory.fetch(node, key).await {
        Ok(Some(wire)) => match wire.verify(key, Some(node), unix_ms) {
            Ok(record) => Some(record),
            Err(e) => {
                debug!(%node, error = %e, "the node's record in the DHT is not believed");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            debug!(%node, error = %e, "the node's record could not be fetched");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::identity::NodeKey;

    fn node(seed: u8) -> NodeId {
        NodeKey::from_seed([seed; 32]).node_id()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_candidate_per_node_and_addresses_of_known_nodes_fold_in() {
        let a = Candidate {
            node: Some(node(1)),
            addrs: vec![addr("203.0.113.5:4433")],
            brokers: vec![addr("203.0.113.11:30001")],
            origin: Origin::Lookup,
        };
        let a_again = Candidate {
            node: Some(node(1)),
            addrs: vec![],
            brokers: vec![addr("203.0.113.12:30001")],
            origin: Origin::Lookup,
        };
        let bare_a = Candidate {
            node: None,
            addrs: vec![addr("203.0.113.5:4433")],
            brokers: vec![],
            origin: Origin::Lookup,
        };
        let bare_b = Candidate {
            node: None,
            addrs: vec![addr("203.0.113.6:4433")],
            brokers: vec![],
            origin: Origin::Lookup,
        };
        let merged = merge(vec![a, bare_a, a_again, bare_b.clone()]);
        assert_eq!(merged.len(), 2, "{merged:?}");
        assert_eq!(merged[0].brokers.len(), 2);
        assert_eq!(merged[1], bare_b);
    }
}
