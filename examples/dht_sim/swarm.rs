//! The simulated population: DHT nodes (server mode, the stand-in for the public DHT),
//! workers (a client-mode node each, announcing one service key through
//! [`grape::GrapeDht`]) and clients (a client-mode node each, looking the key up), with
//! what the measurements need to know about who is alive.
//!
//! Every node is a real mainline 8.0.1 node with its own OS thread and UDP socket on
//! 127.0.0.1; ports come from fixed ranges per role ([`crate::load`]) so that a request's
//! sender tells its role.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use grape::{GrapeDht, SlotSchedule};
use mainline::{Dht, Id, ServerSettings};
use rand::seq::IndexedRandom;
use tokio::time::Instant;

use crate::load::{
    CountingFilter, NodeLoad, CLIENT_PORT_BASE, CLIENT_PORT_END, DHT_PORT_BASE, WORKER_PORT_BASE,
};

/// Bootstrap nodes given to a node that joins the normal way ([`Network::add_joiner`]).
const BOOTSTRAP_FANOUT: usize = 4;

/// Nodes introduced into a new node's routing table: its closest live DHT nodes, and
/// random others (see [`crate::seed`]).
const SEED_NEAR: usize = 20;
const SEED_RANDOM: usize = 30;

/// Introductions sent between two short pauses, so that receive buffers keep up.
const SEED_BURST: usize = 500;

/// Locks a mutex, ignoring poisoning (a panicked task must not stop the report).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// One DHT node of the simulated network.
pub struct DhtNode {
    /// Its node id.
    pub id: Id,
    /// Its UDP address.
    pub addr: SocketAddrV4,
    /// The node; dropping it stops the node's thread and closes its socket.
    dht: Option<Dht>,
}

/// A node that once was part of the DHT, kept for the load report after it left.
#[derive(Clone)]
pub struct NodeRecord {
    /// Its node id.
    pub id: Id,
    /// What it was asked.
    pub load: Arc<NodeLoad>,
}

/// The simulated DHT: live nodes, every node that ever lived, port allocation, and the
/// sockets of the live nodes (for introductions).
pub struct Network {
    /// Give each DHT node its own address in its own /6 ([`crate::net::dht_node_ip`]);
    /// otherwise all share 127.0.0.1.
    spread_ips: bool,
    live: Mutex<Vec<DhtNode>>,
    ever: Mutex<Vec<NodeRecord>>,
    sockets: Mutex<HashMap<SocketAddrV4, RawFd>>,
    next_dht_port: AtomicU16,
    next_worker_port: AtomicU16,
    next_client_port: AtomicU16,
    /// Introductions sent (each is one `find_node` and its answer).
    pub introductions: AtomicU64,
}

/// Why a node could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// The port range of a role is used up.
    #[error("no ports left for {0} nodes (the run is too large)")]
    NoPorts(&'static str),
    /// mainline could not bind or start the node.
    #[error("starting a mainline node on port {port}: {source}")]
    Start {
        /// The port.
        port: u16,
        /// What mainline said.
        source: std::io::Error,
    },
    /// The blocking task that built the node died.
    #[error("the task that built a node failed: {0}")]
    Join(String),
}

fn take_port(next: &AtomicU16, end: u16, role: &'static str) -> Result<u16, SwarmError> {
    let port = next.fetch_add(1, Ordering::Relaxed);
    if port >= end {
        return Err(SwarmError::NoPorts(role));
    }
    Ok(port)
}

async fn build(builder: mainline::DhtBuilder, port: u16) -> Result<Dht, SwarmError> {
    tokio::task::spawn_blocking(move || builder.build())
        .await
        .map_err(|e| SwarmError::Join(e.to_string()))?
        .map_err(|source| SwarmError::Start { port, source })
}

fn xor(a: &Id, b: &Id) -> [u8; 20] {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// A new node's introductions: its `near` closest nodes of `live` and `random` others,
/// without itself.
fn pick(
    live: &[(Id, SocketAddrV4)],
    id: &Id,
    near: usize,
    random: usize,
) -> Vec<(Id, SocketAddrV4)> {
    let mut others: Vec<&(Id, SocketAddrV4)> = live.iter().filter(|(i, _)| i != id).collect();
    others.sort_by_key(|(i, _)| xor(i, id));
    let mut chosen: Vec<(Id, SocketAddrV4)> = others.iter().take(near).map(|n| **n).collect();
    let rest: Vec<&&(Id, SocketAddrV4)> = others.iter().skip(near).collect();
    chosen.extend(rest.choose_multiple(&mut rand::rng(), random).map(|n| ***n));
    chosen
}

impl Network {
    /// An empty network; `spread_ips`: see [`crate::net::dht_node_ip`] (needs the
    /// namespace's address ranges).
    pub fn new(spread_ips: bool) -> Network {
        Network {
            spread_ips,
            live: Mutex::new(Vec::new()),
            ever: Mutex::new(Vec::new()),
            sockets: Mutex::new(HashMap::new()),
            next_dht_port: AtomicU16::new(DHT_PORT_BASE),
            next_worker_port: AtomicU16::new(WORKER_PORT_BASE),
            next_client_port: AtomicU16::new(CLIENT_PORT_BASE),
            introductions: AtomicU64::new(0),
        }
    }

    /// Up to [`BOOTSTRAP_FANOUT`] random live DHT nodes.
    pub fn bootstrap_sample(&self) -> Vec<SocketAddrV4> {
        let live = lock(&self.live);
        live.choose_multiple(&mut rand::rng(), BOOTSTRAP_FANOUT)
            .map(|n| n.addr)
            .collect()
    }

    fn live_pairs(&self) -> Vec<(Id, SocketAddrV4)> {
        lock(&self.live).iter().map(|n| (n.id, n.addr)).collect()
    }

    /// Scans this process's UDP sockets again (after nodes were added).
    pub fn rescan_sockets(&self) {
        *lock(&self.sockets) = crate::seed::udp_sockets();
    }

    /// Sends the introductions `(from_id, from_addr) → to`, pausing between bursts.
    async fn send_introductions(&self, pairs: &[((Id, SocketAddrV4), SocketAddrV4)]) {
        for chunk in pairs.chunks(SEED_BURST) {
            {
                let sockets = lock(&self.sockets);
                for ((id, from), to) in chunk {
                    if crate::seed::introduce(&sockets, id, *from, *to) {
                        self.introductions.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a server-mode DHT node without bootstrap nodes (so that it records the
    /// nodes that introduce themselves, see [`crate::seed`]) and adds it to the live set.
    /// It knows nobody yet: see [`Self::seed_all`] and [`Self::join_dht_node`].
    /// Returns its id and address.
    pub async fn add_dht_node(&self) -> Result<(Id, SocketAddrV4), SwarmError> {
        self.add_dht_node_with(None).await
    }

    /// [`Self::add_dht_node`], or with `bootstrap` nodes (then it does not record the
    /// nodes that introduce themselves, as mainline nodes that bootstrap normally).
    async fn add_dht_node_with(
        &self,
        bootstrap: Option<&[SocketAddrV4]>,
    ) -> Result<(Id, SocketAddrV4), SwarmError> {
        let port = take_port(&self.next_dht_port, WORKER_PORT_BASE, "DHT")?;
        let load = Arc::new(NodeLoad::default());
        let mut builder = Dht::builder();
        match bootstrap {
            Some(nodes) => builder.bootstrap(nodes),
            None => builder.no_bootstrap(),
        };
        builder
            .server_mode()
            .server_settings(ServerSettings {
                filter: Box::new(CountingFilter(Arc::clone(&load))),
                ..ServerSettings::default()
            })
            .port(port);
        if self.spread_ips {
            // A public-looking address with a BEP 42 node id derived from it, as a public
            // node has; mainline then counts it as "secure" and its /6 as a subnet.
            let ip = crate::net::dht_node_ip(u32::from(port - DHT_PORT_BASE));
            builder.bind_address(ip).public_ip(ip);
        } else {
            builder.bind_address(Ipv4Addr::LOCALHOST);
        }
        let dht = build(builder, port).await?;
        let info = dht.clone().as_async().info().await;
        let node = DhtNode {
            id: *info.id(),
            addr: info.local_addr(),
            dht: Some(dht),
        };
        let out = (node.id, node.addr);
        lock(&self.ever).push(NodeRecord { id: node.id, load });
        lock(&self.live).push(node);
        Ok(out)
    }

    /// Introduces every live DHT node to its closest live nodes and to random others,
    /// as they would know each other after hours on the public DHT.
    pub async fn seed_all(&self) {
        self.rescan_sockets();
        let live = self.live_pairs();
        let mut pairs = Vec::with_capacity(live.len() * (SEED_NEAR + SEED_RANDOM));
        for (id, addr) in &live {
            for from in pick(&live, id, SEED_NEAR, SEED_RANDOM) {
                pairs.push((from, *addr));
            }
        }
        self.send_introductions(&pairs).await;
    }

    /// A DHT node joining the running network (churn): starts it, lets it know its
    /// closest live nodes and random others, and introduces it to its closest nodes and
    /// random others (what its bootstrap and the nodes that hear from it would do).
    /// Returns its port.
    pub async fn join_dht_node(&self) -> Result<u16, SwarmError> {
        let (id, addr) = self.add_dht_node().await?;
        self.rescan_sockets();
        let live = self.live_pairs();
        let mut pairs = Vec::new();
        for from in pick(&live, &id, SEED_NEAR, SEED_RANDOM) {
            pairs.push((from, addr));
            pairs.push(((id, addr), from.1));
        }
        self.send_introductions(&pairs).await;
        Ok(addr.port())
    }

    /// Stops a random live DHT node (its socket closes within mainline's 50 ms poll).
    /// Returns whether there was one to stop.
    pub fn remove_random_dht_node(&self) -> bool {
        let mut live = lock(&self.live);
        if live.len() <= SEED_NEAR {
            return false;
        }
        let i = rand::random_range(0..live.len());
        let mut node = live.swap_remove(i);
        drop(node.dht.take());
        true
    }

    /// Handles of the live DHT nodes (cheap clones), for refresh rounds and reports.
    pub fn live_handles(&self) -> Vec<mainline::async_dht::AsyncDht> {
        lock(&self.live)
            .iter()
            .filter_map(|n| n.dht.clone().map(Dht::as_async))
            .collect()
    }

    /// Number of live DHT nodes.
    pub fn live_count(&self) -> usize {
        lock(&self.live).len()
    }

    /// Ids of the live DHT nodes.
    pub fn live_ids(&self) -> Vec<Id> {
        lock(&self.live).iter().map(|n| n.id).collect()
    }

    /// Every node that ever lived, with its load.
    pub fn ever(&self) -> Vec<NodeRecord> {
        lock(&self.ever).clone()
    }

    /// Starts a worker's or client's node: client mode (it answers nothing and nobody
    /// stores it in a routing table), without bootstrap nodes, and introduces its
    /// closest live DHT nodes and random others into its routing table; it never sends a
    /// `find_node` itself. Wrapped in a [`GrapeDht`].
    pub async fn add_peer(
        &self,
        worker: bool,
        schedule: SlotSchedule,
        settle: Duration,
        want: usize,
    ) -> Result<Arc<GrapeDht>, SwarmError> {
        let port = if worker {
            take_port(&self.next_worker_port, CLIENT_PORT_BASE, "worker")?
        } else {
            take_port(&self.next_client_port, CLIENT_PORT_END, "client")?
        };
        let mut builder = Dht::builder();
        builder
            .bind_address(Ipv4Addr::LOCALHOST)
            .port(port)
            .no_bootstrap();
        let dht = build(builder, port).await?;
        let grape = GrapeDht::from_mainline(dht, schedule, settle)
            .await
            .with_lookup_want(want);
        let id = *grape.inner().info().await.id();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let pairs: Vec<_> = pick(&self.live_pairs(), &id, SEED_NEAR, SEED_RANDOM)
            .into_iter()
            .map(|from| (from, addr))
            .collect();
        self.send_introductions(&pairs).await;
        Ok(Arc::new(grape))
    }

    /// A server-mode DHT node that joins the normal way: [`BOOTSTRAP_FANOUT`] random live
    /// nodes as bootstrap nodes, then mainline's own bootstrap (a `find_node` of its id,
    /// which the nodes asked record). It stays in the network.
    pub async fn add_joiner(&self) -> Result<mainline::async_dht::AsyncDht, SwarmError> {
        let bootstrap = self.bootstrap_sample();
        let (_, addr) = self.add_dht_node_with(Some(&bootstrap)).await?;
        lock(&self.live)
            .iter()
            .find(|n| n.addr == addr)
            .and_then(|n| n.dht.clone().map(Dht::as_async))
            .ok_or(SwarmError::Join("the joined node is gone".to_owned()))
    }

    /// Stops every DHT node.
    pub fn shutdown(&self) {
        let mut live = lock(&self.live);
        for node in live.iter_mut() {
            drop(node.dht.take());
        }
        live.clear();
    }
}

/// What the measurements know of one worker (keyed by the port it announces).
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerState {
    /// When its first announce was stored.
    pub first_ok: Option<Instant>,
    /// When its latest announce was stored.
    pub last_ok: Option<Instant>,
    /// When it left (stopped announcing and closed its node).
    pub died: Option<Instant>,
}

/// The book of workers: who is alive, who is visible, who died when.
#[derive(Debug, Default)]
pub struct Book {
    /// Every worker that ever ran, by announced port.
    pub workers: HashMap<u16, WorkerState>,
}

impl Book {
    /// Ports of workers alive at `at` whose first announce was stored before `at`: the
    /// workers a lookup started at `at` should find.
    pub fn live_visible(&self, at: Instant) -> Vec<u16> {
        self.workers
            .iter()
            .filter(|(_, w)| w.died.is_none() && w.first_ok.is_some_and(|t| t <= at))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Number of workers alive now.
    pub fn alive(&self) -> usize {
        self.workers.values().filter(|w| w.died.is_none()).count()
    }
}
