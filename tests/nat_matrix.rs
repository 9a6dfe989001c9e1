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
//! `netcheck` is checked on each kind of side too.
//!
//! Each cell records the path `call -v` reported and the time from starting `call` to
//! its answer; the table is printed (see it with `--nocapture`). Cells of this binary
//! run one at a time (`natlab::serial`). Needs root, iproute2 and nftables.

mod support;

use std::time::Duration;

use support::matrix::{
    expected_paths, start_grape, table, CellResult, Finding, MatrixRun, Service, GRAPE_DP,
};
use support::natlab::{serial, Lab, NatKind, RouterKind};

/// Runs all 9 cells of one router kind, prints the table, then asserts every cell.
fn run_matrix(router: RouterKind, service: Service, finding: Finding) {
    let _serial = serial();
    let run = MatrixRun::start(router, service, finding);
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
                "NAT matrix, {} routers, found by {}: path, ms from starting call to the \
                 answer (call's own elapsed_ms)",
                router.label(),
                finding.label()
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
        "{} of 9 cells failed ({} routers, found by {}):\n{}",
        failures.len(),
        router.label(),
        finding.label(),
        failures.join("\n\n")
    );
}

#[test]
fn every_cell_answers_behind_home_routers_relaying_only_symmetric_to_symmetric() {
    run_matrix(RouterKind::Home, Service::NanoStub, Finding::Broker);
}

#[test]
fn every_cell_answers_behind_bare_routers_that_accept_wan_input() {
    run_matrix(RouterKind::Bare, Service::Fibonacci, Finding::Broker);
}

/// No broker is named anywhere: the workers find the grapes' brokers in the DHT and the
/// clients find the workers by DHT lookup alone, through DHT nodes of their own.
#[test]
fn every_cell_answers_through_the_dht_alone_behind_home_routers() {
    run_matrix(RouterKind::Home, Service::NanoStub, Finding::Dht);
}

#[test]
fn every_cell_answers_through_the_dht_alone_behind_bare_routers() {
    run_matrix(RouterKind::Bare, Service::Fibonacci, Finding::Dht);
}

/// `netcheck` from each kind of side names the side's public address and its mapping
/// (RFC 4787 §4.1), asking grape 1's broker and, through it, a second one.
#[test]
fn netcheck_tells_each_side_its_reflexive_address_and_mapping() {
    let _serial = serial();
    let lab = Lab::new();
    let (g1, g2) = (lab.public_host("g1"), lab.public_host("g2"));
    let _grape1 = start_grape(&g1, "none");
    let _grape2 = start_grape(&g2, &format!("{}:{GRAPE_DP}", g1.ip));
    let broker = format!("{}:{GRAPE_DP}", g1.ip);
    for (i, nat) in NatKind::ALL.into_iter().enumerate() {
        let side = lab.side(&format!("n{i}"), nat, RouterKind::Home);
        let run = side.host.run(
            &["netcheck", "--broker", &broker, "--json"],
            Duration::from_secs(20),
        );
        assert!(run.status.success(), "{} side: {run:?}", nat.label());
        let report: serde_json::Value = serde_json::from_str(run.stdout.trim())
            .unwrap_or_else(|e| panic!("{} side: not JSON ({e}): {run:?}", nat.label()));
        let reflexive = report["reflexive"].as_str().unwrap_or_default();
        assert!(
            reflexive.starts_with(&format!("{}:", side.public_ip())),
            "{} side: reflexive {reflexive}, public address {}",
            nat.label(),
            side.public_ip()
        );
        let mapping = match nat {
            NatKind::None | NatKind::EimApdf => "endpoint-independent",
            NatKind::Symmetric => "endpoint-dependent",
        };
        assert_eq!(report["mapping"], mapping, "{} side: {report}", nat.label());
        assert_eq!(
            report["public"],
            nat == NatKind::None,
            "{} side: {report}",
            nat.label()
        );
    }
}
