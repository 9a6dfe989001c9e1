//! A measured phase of a scenario: the kernel's counters and the DHT nodes' request
//! counts before and after, and what one operation of the phase cost.

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::load::{LoadSnapshot, Role, KINDS, KIND_NAMES};
use crate::net::{Counters, Delta};
use crate::swarm::Network;

/// A measured phase: kernel counters and the DHT nodes' request counts.
pub struct Phase {
    started: Instant,
    counters: Counters,
}

/// What a phase cost.
pub struct PhaseResult {
    pub secs: f64,
    pub delta: Delta,
    /// Per node that ever lived (index as in [`Network::ever`]).
    pub loads: Vec<LoadSnapshot>,
}

impl PhaseResult {
    /// Requests from `role` by kind, over all nodes.
    pub fn by_kind(&self, role: Role) -> [u64; KINDS] {
        let mut out = [0; KINDS];
        for l in &self.loads {
            for (k, slot) in out.iter_mut().enumerate() {
                *slot += l.by_kind_role[k][role as usize];
            }
        }
        out
    }
}

impl Phase {
    pub fn start(network: &Network) -> Phase {
        for node in network.ever() {
            node.load.take();
        }
        Phase {
            started: Instant::now(),
            counters: Counters::read(),
        }
    }

    pub fn finish(self, network: &Network) -> PhaseResult {
        let delta = Counters::read().since(&self.counters);
        let loads = network.ever().iter().map(|n| n.load.take()).collect();
        PhaseResult {
            secs: self.started.elapsed().as_secs_f64(),
            delta,
            loads,
        }
    }
}

/// Per-operation cost of a phase, background subtracted, as JSON.
pub fn cost(result: &PhaseResult, baseline: &PhaseResult, ops: u64, role: Role) -> Value {
    let net = result
        .delta
        .minus(&baseline.delta, result.secs / baseline.secs.max(1e-3));
    let per = |x: u64| (ops > 0).then(|| x as f64 / ops as f64);
    let kinds = result.by_kind(role);
    let mut requests = serde_json::Map::new();
    for (k, name) in KIND_NAMES.iter().enumerate() {
        if kinds[k] > 0 {
            requests.insert((*name).to_owned(), json!(per(kinds[k])));
        }
    }
    json!({
        "ops": ops,
        "secs": result.secs,
        "datagrams": per(net.datagrams),
        "ip_bytes": per(net.ip_bytes),
        "requests_received_by_dht": requests,
        "rcvbuf_errors": result.delta.rcvbuf_errors,
    })
}
