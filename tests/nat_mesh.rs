//! The mesh across the NAT lab with nothing but the DHT: no process is told a broker.
//! Two public grapes (each runs a broker); workers and clients run DHT nodes of their own
//! bootstrapped from the grapes (`--bootstrap G1,G2`). Topologies beyond the matrix:
//!
//! - a client and a worker behind one home router (same LAN);
//! - a worker behind two NATs: a home router behind a carrier-grade NAT (RFC 6598);
//! - `--quorum 3` met by three workers behind three different NATs;
//! - the gateway behind NAT B serving npm's `nano-node-rpc`, unchanged, through a worker
//!   behind NAT A.
//!
//! Needs root, iproute2 and nftables (and Node.js with npm for the gateway test).

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::matrix::{start_grape, start_stub, GRAPE_DP};
use support::natlab::{serial, Background, Host, Lab, NatKind, NsProcess, RouterKind, Timed};
use support::npm;

const KEY: &str = "nano_rpc";

/// The lab with its two public grapes.
struct World {
    bootstrap: String,
    _grapes: Vec<NsProcess>,
    lab: Lab,
}

impl World {
    fn new() -> World {
        let lab = Lab::new();
        let (g1, g2) = (lab.public_host("g1"), lab.public_host("g2"));
        let grape1 = start_grape(&g1, "none");
        let grape2 = start_grape(&g2, &format!("{}:{GRAPE_DP}", g1.ip));
        World {
            bootstrap: format!("{}:{GRAPE_DP},{}:{GRAPE_DP}", g1.ip, g2.ip),
            _grapes: vec![grape1, grape2],
            lab,
        }
    }

    /// A worker on `host` relaying to a stand-in node of its own; waits for its presence
    /// (`public`/`brokered`) and returns it with its stand-in and node id.
    fn worker(&self, host: &Host) -> (NsProcess, Background, String) {
        let (url, stub) = start_stub(host);
        let ip = host.ip.to_string();
        let mut worker = host.spawn(&[
            "worker",
            "--announce",
            KEY,
            "--bootstrap",
            &self.bootstrap,
            "--nano-rpc",
            &url,
            "--bind",
            &ip,
        ]);
        let presence = worker.wait_event("presence", Duration::from_secs(20));
        assert!(presence["mode"].is_string(), "{presence}");
        let node = worker.listening["node_id"]
            .as_str()
            .expect("node_id")
            .to_string();
        (worker, stub, node)
    }

    /// `call --bootstrap G1,G2 ARGS -v` from `host`, retried while no worker is found yet
    /// (exit 5: the announces spread), for at most 20 s.
    fn call(&self, host: &Host, args: &[&str]) -> Timed {
        let mut all = vec![
            "call",
            "--bootstrap",
            &self.bootstrap,
            "--service",
            KEY,
            "--timeout",
            "15000",
            "-v",
        ];
        all.extend_from_slice(args);
        let started = Instant::now();
        loop {
            let timed = host.run(&all, Duration::from_secs(30));
            if timed.status.code() == Some(5) && started.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            return timed;
        }
    }
}

fn answered_block_count(timed: &Timed) -> bool {
    timed.status.success()
        && serde_json::from_str::<Value>(timed.stdout.trim()).is_ok_and(|v| v["count"] == "3")
}

#[test]
fn a_client_on_the_workers_lan_reaches_it_directly() {
    let _serial = serial();
    let world = World::new();
    let home = world.lab.side("h", NatKind::EimApdf, RouterKind::Home);
    let (_worker, _stub, node) = world.worker(&home.host);
    let laptop = world.lab.host_behind(&home, "laptop");
    let timed = world.call(&laptop, &["block_count"]);
    assert!(answered_block_count(&timed), "{timed:?}");
    assert_eq!(timed.report("path").as_deref(), Some("direct"), "{timed:?}");
    assert_eq!(timed.report("node"), Some(node));
    assert!(
        timed
            .report("worker")
            .is_some_and(|w| w.starts_with(&format!("{}:", home.host.ip))),
        "reached at its LAN address: {timed:?}"
    );
}

#[test]
fn a_worker_behind_a_home_router_behind_a_carrier_grade_nat_is_reached() {
    let _serial = serial();
    let world = World::new();
    let cgn = world.lab.cgn("cgn", NatKind::EimApdf);
    let home = world
        .lab
        .side_behind_cgn(&cgn, "w", NatKind::EimApdf, RouterKind::Home);
    let mut worker_run = world.worker(&home.host);
    let registered = worker_run
        .0
        .wait_event("registered", Duration::from_secs(20));
    // The broker sees the carrier's public address, not the home router's 100.64/10 one.
    let reflexive = registered["reflexive"].as_str().unwrap_or_default();
    assert!(
        reflexive.starts_with(&format!("{}:", cgn.router.wan_ip)),
        "reflexive {reflexive}, carrier NAT {}",
        cgn.router.wan_ip
    );
    assert_eq!(home.public_ip(), cgn.router.wan_ip);
    for (i, client_nat) in [NatKind::None, NatKind::EimApdf].into_iter().enumerate() {
        let client = world
            .lab
            .side(&format!("c{i}"), client_nat, RouterKind::Home);
        let timed = world.call(&client.host, &["block_count"]);
        assert!(answered_block_count(&timed), "{timed:?}");
        assert_eq!(
            timed.report("path").as_deref(),
            Some("punched"),
            "client {}: {timed:?}",
            client_nat.label()
        );
        assert_eq!(timed.report("node").as_deref(), Some(worker_run.2.as_str()));
    }
}

#[test]
fn quorum_three_is_met_by_three_workers_behind_three_nats() {
    let _serial = serial();
    let world = World::new();
    let mut workers = Vec::new();
    let mut nodes = Vec::new();
    for (i, nat) in [NatKind::EimApdf, NatKind::EimApdf, NatKind::Symmetric]
        .into_iter()
        .enumerate()
    {
        let side = world.lab.side(&format!("w{i}"), nat, RouterKind::Home);
        let (worker, stub, node) = world.worker(&side.host);
        nodes.push(node);
        workers.push((side, worker, stub));
    }
    let client = world.lab.side("c", NatKind::EimApdf, RouterKind::Home);
    // Wait until the client's lookups see all three (each registers on its own).
    let started = Instant::now();
    let timed = loop {
        let timed = world.call(&client.host, &["--quorum", "3", "block_count"]);
        if timed.status.code() == Some(8) && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        break timed;
    };
    assert!(answered_block_count(&timed), "{timed:?}");
    assert!(
        nodes.contains(&timed.report("node").unwrap_or_default()),
        "{timed:?}"
    );
}

#[test]
fn the_gateway_behind_nat_b_serves_nano_node_rpc_through_a_worker_behind_nat_a() {
    npm::ensure_installed("js-nano", "nano-node-rpc");
    let _serial = serial();
    let world = World::new();
    let a = world.lab.side("a", NatKind::EimApdf, RouterKind::Home);
    let (_worker, _stub, node) = world.worker(&a.host);
    let b = world.lab.side("b", NatKind::EimApdf, RouterKind::Home);
    let gateway = b.host.spawn(&[
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--bootstrap",
        &world.bootstrap,
        "--trust",
        &node,
    ]);
    let url = format!("http://{}", gateway.field("addr"));
    let account = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";
    let client = npm::js_dir("js-nano").join("client.js");
    // The worker may still be spreading: the library's first call may see "no worker".
    let started = Instant::now();
    let result: Value = loop {
        let output = b
            .host
            .command("node")
            .arg(&client)
            .args([&url, account])
            .output()
            .expect("node must be installed to run this test (apt-get install nodejs)");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "client.js failed: {stdout}");
        let result: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
        let waiting = result["block_count"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no worker"));
        if waiting && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        break result;
    };
    assert_eq!(result["block_count"]["count"], "3", "{result}");
    assert!(result["account_balance"]["balance"].is_string(), "{result}");
    let refused = result["ledger"]["error"].as_str().unwrap_or_default();
    assert!(refused.contains("action_not_allowed"), "{result}");
}
