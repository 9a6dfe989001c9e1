//! The NAT matrix of issue 3 on the lab of [`natlab`](super::natlab): a worker side A ×
//! a client side B, each of [`NatKind::ALL`], behind home or bare routers.
//!
//! [`MatrixRun::start`] builds one lab per router kind: two public grapes (each hosts a
//! broker), the three A sides each with a worker announcing its own key
//! (`lab_a_<kind>`), and the three B sides. A cell ([`MatrixRun::call`]) runs
//! `nano-connect call --service KEY -v` from side B and reads the path it reports on
//! stderr. Grapes and workers are shared by the cells of a run; every call is a new
//! process, so a new client socket and mapping.
//!
//! Two ways to find the worker ([`Finding`]):
//!
//! - [`Finding::Broker`]: the worker is told grape 1's broker (`--broker`) and the call
//!   asks that broker (`call --broker`);
//! - [`Finding::Dht`]: nobody is told a broker. Worker and client each run their own DHT
//!   node bootstrapped from the two public grapes (`--bootstrap G1,G2`); the worker finds
//!   the brokers in the DHT, checks its NAT and registers (or announces itself when
//!   public), and the client finds it by a DHT lookup alone.
//!
//! Command line used (the contract of the mesh): `grape --dp 20001 --aph 30001 --bn
//! HOST:PORT|none --bind IP --public-ip IP` (broker on UDP 30001), `worker --announce
//! KEY (--broker HOST:20001 | --bootstrap G1,G2) (--nano-rpc URL | --service fibonacci)
//! --bind IP`, which prints `listening`, `presence` and (behind a NAT) `registered`, and
//! `call (--broker HOST:20001 | --bootstrap G1,G2) --service KEY --timeout MS -v ...`,
//! which prints the answer on stdout and `nano-connect: path=direct|punched|relayed
//! worker=IP:PORT node=ID elapsed_ms=N.N` on stderr.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::nano_stub::{Mode, NanoStub};
use super::natlab::{Background, Host, Lab, NatKind, NsProcess, RouterKind, Side, Timed};

/// DHT port of both grapes (each has its own namespace and address).
pub const GRAPE_DP: u16 = 20001;
/// HTTP API port of both grapes.
pub const GRAPE_APH: u16 = 30001;

/// Milliseconds `call` is given (`--timeout`): enough for a punch schedule and the relay
/// fallback after it.
pub const CALL_TIMEOUT_MS: u64 = 15_000;

/// How the client finds the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// Both are told grape 1's broker.
    Broker,
    /// Both find everything through the DHT (own nodes bootstrapped from the grapes).
    Dht,
}

impl Finding {
    /// `broker` or `dht`.
    pub fn label(self) -> &'static str {
        match self {
            Finding::Broker => "broker",
            Finding::Dht => "dht",
        }
    }
}

/// What the workers of a run serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The Nano RPC relay, to a Nano node stand-in ([`NanoStub`]) inside the worker's
    /// namespace; cells call `block_count`.
    NanoStub,
    /// `--service fibonacci`; cells call `{"length":10}`.
    Fibonacci,
}

/// The paths a cell may take: home routers must punch (or dial directly) wherever at
/// most one side is symmetric and relay where both are; behind bare routers, conntrack
/// poisoning may defeat a punch, so any path that answers will do.
pub fn expected_paths(a: NatKind, b: NatKind, router: RouterKind) -> &'static [&'static str] {
    match router {
        RouterKind::Home if a == NatKind::Symmetric && b == NatKind::Symmetric => &["relayed"],
        RouterKind::Home => &["direct", "punched"],
        RouterKind::Bare => &["direct", "punched", "relayed"],
    }
}

/// The outcome of one call in one cell.
#[derive(Debug)]
pub struct CellResult {
    /// Worker side's NAT.
    pub a: NatKind,
    /// Client side's NAT.
    pub b: NatKind,
    /// The path `call -v` reported (`direct`, `punched`, `relayed`), if it reported one.
    pub path: Option<String>,
    /// From spawning `call` to its exit with the answer (ms), process start-up included.
    pub wall_ms: f64,
    /// `elapsed_ms` as `call -v` reported it (ms), if it did.
    pub reported_ms: Option<f64>,
    /// Calls that found no worker yet (exit 5) before this one, while the announcement
    /// spread.
    pub retries: u32,
    /// The whole run, for messages.
    pub timed: Timed,
}

impl CellResult {
    /// Whether the call exited 0 with the answer `service` gives.
    pub fn answered(&self, service: Service) -> bool {
        if !self.timed.status.success() {
            return false;
        }
        let Ok(value) = serde_json::from_str::<Value>(self.timed.stdout.trim()) else {
            return false;
        };
        match service {
            Service::NanoStub => value["count"] == "3",
            Service::Fibonacci => value == serde_json::json!([0, 1, 1, 2, 3, 5, 8, 13, 21, 34]),
        }
    }
}

/// One A side with its worker (and stub node).
struct WorkerSide {
    side: Side,
    key: String,
    _worker: NsProcess,
    _stub: Option<Background>,
}

/// A lab with grapes, workers and client sides for one router kind.
pub struct MatrixRun {
    /// The router kind of every NATed side in this run.
    pub router: RouterKind,
    /// What the workers serve.
    pub service: Service,
    /// How calls find the workers.
    pub finding: Finding,
    /// `IP:PORT` of grape 1's DHT node, given to workers and calls as `--broker`.
    pub broker: String,
    /// `G1:PORT,G2:PORT`, the grapes' DHT nodes, for `--bootstrap`.
    pub bootstrap: String,
    workers: Vec<WorkerSide>,
    clients: Vec<Side>,
    _grapes: Vec<NsProcess>,
    // Dropped last: its drop kills anything left and removes the namespaces.
    _lab: Lab,
}

impl MatrixRun {
    /// Builds the lab and starts grapes and workers; waits (20 s each) for every worker's
    /// `presence` event (and, behind a NAT, `registered`).
    pub fn start(router: RouterKind, service: Service, finding: Finding) -> MatrixRun {
        let lab = Lab::new();
        let g1 = lab.public_host("g1");
        let g2 = lab.public_host("g2");
        let grape1 = start_grape(&g1, "none");
        let grape2 = start_grape(&g2, &format!("{}:{GRAPE_DP}", g1.ip));
        let broker = format!("{}:{GRAPE_DP}", g1.ip);
        let bootstrap = format!("{}:{GRAPE_DP},{}:{GRAPE_DP}", g1.ip, g2.ip);

        let mut workers = Vec::new();
        for (i, nat) in NatKind::ALL.into_iter().enumerate() {
            let side = lab.side(&format!("a{i}"), nat, router);
            let key = format!("lab_a_{}", nat.label());
            let (service_args, stub) = match service {
                Service::NanoStub => {
                    let (url, stub) = start_stub(&side.host);
                    (vec!["--nano-rpc".to_string(), url], Some(stub))
                }
                Service::Fibonacci => (vec!["--service".into(), "fibonacci".into()], None),
            };
            let ip = side.host.ip.to_string();
            let mut args = vec!["worker", "--announce", &key, "--bind", &ip];
            match finding {
                Finding::Broker => args.extend(["--broker", &broker, "--bootstrap", &bootstrap]),
                Finding::Dht => args.extend(["--bootstrap", &bootstrap]),
            }
            args.extend(service_args.iter().map(String::as_str));
            let mut worker = side.host.spawn(&args);
            let presence = worker.wait_event("presence", Duration::from_secs(20));
            let expected = if nat == NatKind::None {
                "public"
            } else {
                "brokered"
            };
            assert_eq!(
                presence["mode"],
                expected,
                "{} side: {presence}",
                nat.label()
            );
            if nat != NatKind::None {
                let registered = worker.wait_event("registered", Duration::from_secs(20));
                assert!(
                    registered["reflexive"].as_str().is_some(),
                    "registered event without reflexive address: {registered}"
                );
            }
            workers.push(WorkerSide {
                side,
                key,
                _worker: worker,
                _stub: stub,
            });
        }
        let clients = NatKind::ALL
            .into_iter()
            .enumerate()
            .map(|(i, nat)| lab.side(&format!("b{i}"), nat, router))
            .collect();
        MatrixRun {
            router,
            service,
            finding,
            broker,
            bootstrap,
            workers,
            clients,
            _grapes: vec![grape1, grape2],
            _lab: lab,
        }
    }

    /// The A side of kind `a` (for messages: its router's conntrack table).
    pub fn worker_side(&self, a: NatKind) -> &Side {
        &self.workers[index(a)].side
    }

    /// The B side of kind `b`.
    pub fn client_side(&self, b: NatKind) -> &Side {
        &self.clients[index(b)]
    }

    /// Runs one call from B side `b` to the worker behind A side `a`. A call that finds
    /// no worker (exit 5: the announcement is still spreading) is retried every 100 ms for
    /// at most 15 s; the timing is the answered call's.
    pub fn call(&self, a: NatKind, b: NatKind) -> CellResult {
        let worker = &self.workers[index(a)];
        let client = self.client_side(b);
        let timeout = CALL_TIMEOUT_MS.to_string();
        let mut args = vec!["call"];
        match self.finding {
            Finding::Broker => args.extend(["--broker", self.broker.as_str()]),
            Finding::Dht => args.extend(["--bootstrap", self.bootstrap.as_str()]),
        }
        args.extend(["--service", &worker.key, "--timeout", &timeout, "-v"]);
        match self.service {
            Service::NanoStub => args.push("block_count"),
            Service::Fibonacci => args.extend(["--json", r#"{"length":10}"#]),
        }
        let started = Instant::now();
        let mut retries = 0;
        loop {
            let timed = client
                .host
                .run(&args, Duration::from_millis(CALL_TIMEOUT_MS + 10_000));
            if timed.status.code() == Some(5) && started.elapsed() < Duration::from_secs(15) {
                retries += 1;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            return CellResult {
                a,
                b,
                path: timed.report("path"),
                wall_ms: timed.elapsed.as_secs_f64() * 1000.0,
                reported_ms: timed.report("elapsed_ms").and_then(|ms| ms.parse().ok()),
                retries,
                timed,
            };
        }
    }
}

fn index(kind: NatKind) -> usize {
    NatKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("a NAT kind")
}

/// Starts a grape on `host` with its DHT, API and public address on the host's address,
/// bootstrapped from `bootstrap` (`HOST:PORT` or `none`); waits for `listening`.
pub fn start_grape(host: &Host, bootstrap: &str) -> NsProcess {
    let ip = host.ip.to_string();
    let (dp, aph) = (GRAPE_DP.to_string(), GRAPE_APH.to_string());
    host.spawn(&[
        "grape",
        "--dp",
        &dp,
        "--aph",
        &aph,
        "--bn",
        bootstrap,
        "--bind",
        &ip,
        "--public-ip",
        &ip,
    ])
}

/// Starts a Nano node stand-in inside `host`'s namespace (on its 127.0.0.1) and returns
/// its URL and the handle that stops it.
pub fn start_stub(host: &Host) -> (String, Background) {
    host.background(|stop, ready| async move {
        let stub = NanoStub::start(Mode::RsNano).await;
        let _ = ready.send(stub.url());
        let _ = stop.await;
        stub.shutdown().await;
    })
}

/// A table with a row per worker side and a column per client side; `cell` renders one
/// entry.
pub fn table(title: &str, cell: impl Fn(NatKind, NatKind) -> String) -> String {
    let mut out = format!("{title}\n{:<22}", "worker A \\ client B");
    for b in NatKind::ALL {
        out.push_str(&format!(" | {:<24}", b.label()));
    }
    out.push('\n');
    for a in NatKind::ALL {
        out.push_str(&format!("{:<22}", a.label()));
        for b in NatKind::ALL {
            out.push_str(&format!(" | {:<24}", cell(a, b)));
        }
        out.push('\n');
    }
    out
}
