//! Issue 3's NAT matrix: a worker behind NAT A (none, endpoint-independent mapping with
//! address-and-port-dependent filtering, symmetric) × a client behind NAT B, on the lab
//! of `support::natlab` (docs/nat-lab.md). Every cell must deliver a call's answer:
//!
//! - behind home routers (unsolicited WAN input dropped) by a direct or punched path in
//!   the 8 cells where at most one side is symmetric, and relayed through grape 1's broker
//!   where both are; the workers relay to a Nano node stand-in in their namespace;
//! - behind bare Linux routers (WAN input accepted, so early punches can poison
//!   conntrack) by any path; the workers serve fibonacci.
//!
//! Each cell records the path `call -v` reported and the time from starting `call` to
//! its answer; the table is printed (see it with `--nocapture`). Cells of this binary
//! run one at a time (`natlab::serial`). Needs root, iproute2 and nftables.

mod support;

use support::matrix::{expected_paths, table, CellResult, MatrixRun, Service};
use support::natlab::{serial, NatKind, RouterKind};

/// Runs all 9 cells of one router kind, prints the table, then asserts every cell.
fn run_matrix(router: RouterKind, service: Service) {
    let _serial = serial();
    let run = MatrixRun::start(router, service);
    let mut results: Vec<CellResult> = Vec::new();
    for a in NatKind::ALL {
        for b in NatKind::ALL {
            results.push(run.call(a, b));
        }
    }
    let find = |a: NatKind, b: NatKind| {
        results
            .iter()
            .find(|r| r.a == a && r.b == b)
            .expect("every cell ran")
    };
    println!(
        "{}",
        table(
            &format!(
                "NAT matrix, {} routers: path, ms from starting call to the answer \
                 (call's own elapsed_ms)",
                router.label()
            ),
            |a, b| {
                let r = find(a, b);
                let path = match (&r.path, r.answered(service)) {
                    (Some(path), true) => path.clone(),
                    (_, false) => format!("FAILED({:?})", r.timed.status.code()),
                    (None, true) => "no path".to_string(),
                };
                let reported = r
                    .reported_ms
                    .map_or_else(|| "-".to_string(), |ms| format!("{ms:.1}"));
                format!("{path} {:.1} ({reported})", r.wall_ms)
            }
        )
    );

    let mut failures = Vec::new();
    for r in &results {
        let allowed = expected_paths(r.a, r.b, router);
        let ok = r.answered(service)
            && r.path
                .as_deref()
                .is_some_and(|path| allowed.contains(&path));
        if !ok {
            failures.push(format!(
                "worker {} × client {}: wanted an answer by {allowed:?}, got path {:?}, \
                 exit {:?}\nstdout: {}\nstderr: {}\nworker router conntrack:\n{}\
                 client router conntrack:\n{}",
                r.a.label(),
                r.b.label(),
                r.path,
                r.timed.status.code(),
                r.timed.stdout.trim(),
                r.timed.stderr.trim(),
                run.worker_side(r.a).conntrack(),
                run.client_side(r.b).conntrack(),
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 9 cells failed ({} routers):\n{}",
        failures.len(),
        router.label(),
        failures.join("\n\n")
    );
}

#[test]
fn every_cell_answers_behind_home_routers_relaying_only_symmetric_to_symmetric() {
    run_matrix(RouterKind::Home, Service::NanoStub);
}

#[test]
fn every_cell_answers_behind_bare_routers_that_accept_wan_input() {
    run_matrix(RouterKind::Bare, Service::Fibonacci);
}
