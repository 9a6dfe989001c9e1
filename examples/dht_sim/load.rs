//! What each simulated DHT node is asked: a mainline `RequestFilter` that lets every
//! request through and counts it by kind, by the role of the sender, and by target.
//!
//! mainline 8.0.1 exports `RequestSpecific` but not the enum of its request kinds, so
//! the kind and the target are read from the request's `Debug` text (`GetPeers(...
//! info_hash: Id(<40 hex>) ...`). That costs about a microsecond per request, which is
//! small next to the ~30 µs a datagram costs the kernel here.
//!
//! The role of a sender comes from its port: the simulation binds DHT nodes, worker
//! nodes and client nodes in separate port ranges ([`Role::of_port`]).

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mainline::{RequestFilter, RequestSpecific};

/// First port of the DHT nodes' range (server mode, the simulated public DHT).
pub const DHT_PORT_BASE: u16 = 10_000;
/// First port of the workers' nodes (client mode; each worker announces its node's port).
pub const WORKER_PORT_BASE: u16 = 30_000;
/// First port of the clients' nodes (client mode).
pub const CLIENT_PORT_BASE: u16 = 50_000;
/// One past the last port of the clients' range.
pub const CLIENT_PORT_END: u16 = 52_000;

/// Who sent a request, by its source port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Another DHT node (routing-table upkeep, or a node's own queries).
    Dht = 0,
    /// A worker's node: bootstrap, announces, BEP 44 puts.
    Worker = 1,
    /// A client's node: bootstrap, lookups, BEP 44 gets.
    Client = 2,
    /// A port outside the ranges (should not happen).
    Other = 3,
}

/// Number of [`Role`]s.
pub const ROLES: usize = 4;

impl Role {
    /// The role of a port of the simulation's ranges.
    pub fn of_port(port: u16) -> Role {
        match port {
            p if (DHT_PORT_BASE..WORKER_PORT_BASE).contains(&p) => Role::Dht,
            p if (WORKER_PORT_BASE..CLIENT_PORT_BASE).contains(&p) => Role::Worker,
            p if (CLIENT_PORT_BASE..CLIENT_PORT_END).contains(&p) => Role::Client,
            _ => Role::Other,
        }
    }
}

/// A KRPC request kind (BEP 5 and BEP 44), as the filter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `ping`; mainline sends one with every query request of an iterative query.
    Ping = 0,
    /// `find_node` (bootstrap and table refresh).
    FindNode = 1,
    /// `get_peers` (BEP 5): lookups, and the first half of every announce.
    GetPeers = 2,
    /// `announce_peer` (BEP 5).
    Announce = 3,
    /// `get` (BEP 44), also the first half of every BEP 44 put.
    GetValue = 4,
    /// `put` of a mutable or immutable item (BEP 44).
    PutValue = 5,
}

/// Number of [`Kind`]s.
pub const KINDS: usize = 6;

/// The names of the kinds, in index order, for reports.
pub const KIND_NAMES: [&str; KINDS] = [
    "ping",
    "find_node",
    "get_peers",
    "announce_peer",
    "get",
    "put",
];

/// Reads a request's kind and target from its `Debug` text (see the module doc).
pub fn classify(request: &RequestSpecific) -> (Kind, Option<[u8; 20]>) {
    let text = format!("{:?}", request.request_type);
    let kind = if text.starts_with("Ping") {
        Kind::Ping
    } else if text.starts_with("FindNode") {
        Kind::FindNode
    } else if text.starts_with("GetPeers") {
        Kind::GetPeers
    } else if text.starts_with("GetValue") {
        Kind::GetValue
    } else if text.contains("AnnouncePeer(") {
        Kind::Announce
    } else {
        Kind::PutValue
    };
    let target = match kind {
        Kind::Ping | Kind::FindNode => None,
        _ => first_id(&text),
    };
    (kind, target)
}

/// The first `Id(<40 hex>)` of a `Debug` text.
fn first_id(text: &str) -> Option<[u8; 20]> {
    let start = text.find("Id(")? + 3;
    let hex_text = text.get(start..start + 40)?;
    let mut out = [0u8; 20];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

/// The requests one DHT node received since the last [`NodeLoad::take`].
#[derive(Debug, Default)]
pub struct NodeLoad {
    by_kind_role: [[AtomicU64; ROLES]; KINDS],
    by_target: Mutex<HashMap<[u8; 20], [u64; KINDS]>>,
}

/// A snapshot of a [`NodeLoad`].
#[derive(Debug, Clone, Default)]
pub struct LoadSnapshot {
    /// Requests by kind (index of [`Kind`]) and sender role (index of [`Role`]).
    pub by_kind_role: [[u64; ROLES]; KINDS],
    /// Requests that named a target (get_peers, announce_peer, get, put), by target.
    pub by_target: HashMap<[u8; 20], [u64; KINDS]>,
}

impl LoadSnapshot {
    /// All requests received.
    pub fn total(&self) -> u64 {
        self.by_kind_role.iter().flatten().sum()
    }
}

impl NodeLoad {
    fn record(&self, request: &RequestSpecific, from: SocketAddrV4) {
        let (kind, target) = classify(request);
        let role = Role::of_port(from.port());
        self.by_kind_role[kind as usize][role as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(target) = target {
            let mut map = match self.by_target.lock() {
                Ok(map) => map,
                Err(poisoned) => poisoned.into_inner(),
            };
            map.entry(target).or_default()[kind as usize] += 1;
        }
    }

    /// The counts so far, and resets them to zero.
    pub fn take(&self) -> LoadSnapshot {
        let mut snap = LoadSnapshot::default();
        for (k, row) in self.by_kind_role.iter().enumerate() {
            for (r, cell) in row.iter().enumerate() {
                snap.by_kind_role[k][r] = cell.swap(0, Ordering::Relaxed);
            }
        }
        let mut map = match self.by_target.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        snap.by_target = std::mem::take(&mut *map);
        snap
    }
}

/// The filter given to each simulated DHT node: counts into the node's [`NodeLoad`],
/// refuses nothing.
#[derive(Debug, Clone)]
pub struct CountingFilter(pub Arc<NodeLoad>);

impl RequestFilter for CountingFilter {
    fn allow_request(&self, request: &RequestSpecific, from: SocketAddrV4) -> bool {
        self.0.record(request, from);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_map_to_roles() {
        assert_eq!(Role::of_port(DHT_PORT_BASE), Role::Dht);
        assert_eq!(Role::of_port(WORKER_PORT_BASE + 5), Role::Worker);
        assert_eq!(Role::of_port(CLIENT_PORT_BASE), Role::Client);
        assert_eq!(Role::of_port(80), Role::Other);
    }

    #[test]
    fn first_id_reads_hex() {
        let id = "ab".repeat(20);
        let text = format!("GetPeers(GetPeersRequestArguments {{ info_hash: Id({id}) }})");
        assert_eq!(first_id(&text), Some([0xab; 20]));
        assert_eq!(first_id("Ping"), None);
        assert_eq!(first_id("Id(12)"), None);
    }
}
