//! Measures issue 3's NAT matrix: for each router kind (home, bare) and each cell (worker
//! side A × client side B: none, eim-apdf, symmetric) it runs `nano-connect call` N times
//! on the namespace lab of `tests/support/natlab.rs` (docs/nat-lab.md) and prints the
//! paths taken and the median time from starting `call` to the answer.
//!
//! Needs root, iproute2 and nftables, and the `nano-connect` binary of the same profile:
//!
//! ```text
//! cargo build --release && cargo run --release --example nat_matrix -- --runs 5
//! ```
//!
//! Flags: `--runs N` (default 5), `--router home|bare|both` (default both),
//! `--service stub|fibonacci` (default stub: a Nano node stand-in behind each worker).

#[allow(dead_code)]
#[path = "../tests/support/matrix.rs"]
mod matrix;
#[allow(dead_code)]
#[path = "../tests/support/nano_stub.rs"]
mod nano_stub;
#[allow(dead_code)]
#[path = "../tests/support/natlab.rs"]
mod natlab;
#[allow(dead_code)]
#[path = "../tests/support/scratch.rs"]
mod scratch;

use std::collections::BTreeMap;

use matrix::{expected_paths, table, CellResult, Finding, MatrixRun, Service};
use natlab::{NatKind, RouterKind};

/// The runs of one cell.
#[derive(Default)]
struct Cell {
    /// Paths of the answered runs (`?` when none was reported).
    paths: Vec<String>,
    /// Wall ms of the answered runs.
    wall_ms: Vec<f64>,
    /// `elapsed_ms` that `call -v` reported, for the answered runs that had one.
    reported_ms: Vec<f64>,
    /// Runs that did not answer.
    failed: u32,
}

fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

impl Cell {
    fn add(&mut self, result: &CellResult, service: Service) {
        if result.answered(service) {
            self.paths
                .push(result.path.clone().unwrap_or_else(|| "?".into()));
            self.wall_ms.push(result.wall_ms);
            if let Some(ms) = result.reported_ms {
                self.reported_ms.push(ms);
            }
        } else {
            self.failed += 1;
        }
    }

    /// `punched×5 55.1 (52.0)`: paths with counts, median wall ms (median reported ms).
    fn render(&self) -> String {
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for path in &self.paths {
            *counts.entry(path).or_default() += 1;
        }
        let mut parts: Vec<String> = counts
            .iter()
            .map(|(path, n)| format!("{path}×{n}"))
            .collect();
        if self.failed > 0 {
            parts.push(format!("FAILED×{}", self.failed));
        }
        let wall = median(&self.wall_ms).map_or("-".into(), |ms| format!("{ms:.1}"));
        let reported = median(&self.reported_ms).map_or("-".into(), |ms| format!("{ms:.1}"));
        format!("{} {wall} ({reported})", parts.join(","))
    }
}

fn main() {
    let mut runs = 5u32;
    let mut routers = vec![RouterKind::Home, RouterKind::Bare];
    let mut service = Service::NanoStub;
    let mut findings = vec![Finding::Broker, Finding::Dht];
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match (flag.as_str(), value.as_str()) {
            ("--runs", n) => runs = n.parse().expect("--runs takes a count, such as 5"),
            ("--router", "home") => routers = vec![RouterKind::Home],
            ("--router", "bare") => routers = vec![RouterKind::Bare],
            ("--router", "both") => {}
            ("--service", "stub") => service = Service::NanoStub,
            ("--service", "fibonacci") => service = Service::Fibonacci,
            ("--finding", "broker") => findings = vec![Finding::Broker],
            ("--finding", "dht") => findings = vec![Finding::Dht],
            ("--finding", "both") => {}
            _ => {
                eprintln!(
                    "nat_matrix: unknown flag {flag} {value}; use --runs N, \
                     --router home|bare|both, --service stub|fibonacci, \
                     --finding broker|dht|both"
                );
                std::process::exit(2);
            }
        }
    }

    let mut unexpected = 0;
    for (router, finding) in routers
        .iter()
        .flat_map(|r| findings.iter().map(move |f| (*r, *f)))
    {
        let run = MatrixRun::start(router, service, finding);
        let mut cells: BTreeMap<(usize, usize), Cell> = BTreeMap::new();
        for _ in 0..runs {
            for (i, a) in NatKind::ALL.into_iter().enumerate() {
                for (j, b) in NatKind::ALL.into_iter().enumerate() {
                    let result = run.call(a, b);
                    let allowed = expected_paths(a, b, router);
                    if !result.answered(service)
                        || !result.path.as_deref().is_some_and(|p| allowed.contains(&p))
                    {
                        unexpected += 1;
                        eprintln!(
                            "{} routers ({}), worker {} × client {}: path {:?}, exit {:?}: {}",
                            router.label(),
                            finding.label(),
                            a.label(),
                            b.label(),
                            result.path,
                            result.timed.status.code(),
                            result.timed.stderr.trim()
                        );
                    }
                    cells.entry((i, j)).or_default().add(&result, service);
                }
            }
        }
        let index = |kind: NatKind| NatKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        println!(
            "{}",
            table(
                &format!(
                    "{} routers, found by {}, {runs} runs per cell: paths×count, median ms \
                     from starting call to the answer (median elapsed_ms call reported)",
                    router.label(),
                    finding.label()
                ),
                |a, b| cells[&(index(a), index(b))].render(),
            )
        );
    }
    if unexpected > 0 {
        eprintln!("nat_matrix: {unexpected} runs failed or took a path the issue does not allow");
        std::process::exit(1);
    }
}
