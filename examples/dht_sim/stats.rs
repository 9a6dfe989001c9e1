//! What the lookups of a run found, and how to summarise it: the share of live workers
//! each lookup returned, how fair the sample was across workers, how long dead workers
//! lingered, and lookup times.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

/// Workers a client wants from one lookup: `call --quorum` goes up to 15 and a request
/// may fail over twice more, so 20 leaves a margin.
pub const ENOUGH: usize = 20;

/// The `q`-quantile (0..=1) of `values` by nearest rank; `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Jain's fairness index of `values`: 1 when all are equal, 1/n when one has everything.
pub fn jain(values: &[f64]) -> Option<f64> {
    let sum: f64 = values.iter().sum();
    let squares: f64 = values.iter().map(|v| v * v).sum();
    (squares > 0.0).then(|| sum * sum / (values.len() as f64 * squares))
}

/// Everything recorded about the lookups of one phase.
#[derive(Debug, Default)]
pub struct LookupStats {
    /// Lookup times, ms.
    pub took_ms: Vec<f64>,
    /// Per lookup: returned live workers / live visible workers.
    pub live_share: Vec<f64>,
    /// Per lookup: distinct addresses returned.
    pub returned: Vec<f64>,
    /// Per lookup: addresses of workers that had left, as a share of those returned.
    pub stale_share: Vec<f64>,
    /// Lookups that returned at least `min(ENOUGH, live)` live workers.
    pub enough: u64,
    /// Lookups that returned no live worker while some were live.
    pub empty: u64,
    /// Per worker port: (lookups it was live and visible for, lookups that returned it,
    /// the share of the client's picks it would get: sum over lookups of 1/returned).
    pub per_worker: HashMap<u16, (u64, u64, f64)>,
    /// Per dead worker port: the longest it was still returned after it left, seconds.
    pub linger_s: HashMap<u16, f64>,
    /// Dead workers that were never returned after they left.
    pub dead_gone: u64,
    /// Per lookup: slot infohashes queried.
    pub slots_asked: Vec<f64>,
    /// Lookups by why they stopped (`Enough`, `Settled`, ...).
    pub ends: std::collections::BTreeMap<String, u64>,
}

impl LookupStats {
    /// Records one lookup: started with `live` visible live workers, took `took`,
    /// returned `found` ports, of which `dead` (port, seconds since it left) had left.
    pub fn record(&mut self, live: &[u16], took: Duration, found: &[u16], dead: &[(u16, f64)]) {
        self.took_ms.push(took.as_secs_f64() * 1e3);
        let found_live = found.iter().filter(|p| live.contains(p)).count();
        if !live.is_empty() {
            self.live_share.push(found_live as f64 / live.len() as f64);
            if found_live >= ENOUGH.min(live.len()) {
                self.enough += 1;
            }
            if found_live == 0 {
                self.empty += 1;
            }
        }
        self.returned.push(found.len() as f64);
        if !found.is_empty() {
            self.stale_share
                .push(dead.len() as f64 / found.len() as f64);
        }
        for port in live {
            self.per_worker.entry(*port).or_default().0 += 1;
        }
        let pick = if found.is_empty() {
            0.0
        } else {
            1.0 / found.len() as f64
        };
        for port in found {
            if live.contains(port) {
                let e = self.per_worker.entry(*port).or_default();
                e.1 += 1;
                e.2 += pick;
            }
        }
        for (port, since) in dead {
            let e = self.linger_s.entry(*port).or_insert(0.0);
            *e = e.max(*since);
        }
    }

    /// The summary as JSON (times in ms and s, shares 0..=1).
    pub fn summary(&self) -> Value {
        let n = self.took_ms.len();
        // Fairness: each worker's rate (lookups that returned it / lookups it was live
        // for), over the workers live long enough to expect 20 appearances at the mean
        // rate, so that a worker that lived for a few lookups does not count as unfair.
        // A rate measured over n lookups varies by sampling alone (binomial: variance
        // p(1-p)/n); `fair_jain_sampling` is the index that noise alone would give.
        let all_rates: Vec<f64> = self
            .per_worker
            .values()
            .filter(|(eligible, _, _)| *eligible > 0)
            .map(|(eligible, hits, _)| *hits as f64 / *eligible as f64)
            .collect();
        let p = mean(&all_rates).unwrap_or(0.0);
        let min_eligible = if p > 0.0 {
            (20.0 / p).ceil().max(5.0)
        } else {
            5.0
        };
        let fair: Vec<&(u64, u64, f64)> = self
            .per_worker
            .values()
            .filter(|(eligible, _, _)| *eligible as f64 >= min_eligible)
            .collect();
        let rates: Vec<f64> = fair
            .iter()
            .map(|(eligible, hits, _)| *hits as f64 / *eligible as f64)
            .collect();
        let picks: Vec<f64> = fair
            .iter()
            .map(|(eligible, _, pick)| pick / *eligible as f64)
            .collect();
        let sampling_cv2 = mean(
            &fair
                .iter()
                .map(|(eligible, _, _)| (1.0 - p) / (*eligible as f64 * p.max(1e-9)))
                .collect::<Vec<_>>(),
        );
        let never = rates.iter().filter(|r| **r == 0.0).count();
        let linger: Vec<f64> = self.linger_s.values().copied().collect();
        json!({
            "lookups": n,
            "took_ms_p50": quantile(&self.took_ms, 0.5),
            "took_ms_p99": quantile(&self.took_ms, 0.99),
            "took_ms_max": quantile(&self.took_ms, 1.0),
            "live_share_mean": mean(&self.live_share),
            "live_share_p10": quantile(&self.live_share, 0.1),
            "returned_mean": mean(&self.returned),
            "returned_p10": quantile(&self.returned, 0.1),
            "enough_share": (n > 0).then(|| self.enough as f64 / n as f64),
            "empty": self.empty,
            "stale_share_mean": mean(&self.stale_share),
            "fair_workers": rates.len(),
            "fair_rate_mean": mean(&rates),
            "fair_rate_min": quantile(&rates, 0.0),
            "fair_rate_max": quantile(&rates, 1.0),
            "fair_jain": jain(&rates),
            "fair_jain_sampling": sampling_cv2.map(|cv2| 1.0 / (1.0 + cv2)),
            "fair_min_lookups": min_eligible,
            "pick_jain": jain(&picks),
            "fair_never_returned": never,
            "dead_returned_after_leaving": linger.len(),
            "dead_never_returned": self.dead_gone,
            "linger_s_p50": quantile(&linger, 0.5),
            "linger_s_max": quantile(&linger, 1.0),
            "slots_asked_mean": mean(&self.slots_asked),
            "ends": self.ends,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn jain_index() {
        assert_eq!(jain(&[1.0, 1.0, 1.0]), Some(1.0));
        assert_eq!(jain(&[1.0, 0.0, 0.0, 0.0]), Some(0.25));
        assert_eq!(jain(&[0.0]), None);
    }
}
