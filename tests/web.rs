//! The web face end to end: headless Chromium (Debian's, driven by playwright-core) loads
//! `web/index.html` from a local static server, connects to a real grape process over
//! WebTransport with the certificate hashes of its bootstrap string, and gets the Nano
//! node stand-in's answers from real worker processes, whose certificates it takes only
//! by the hashes in their signed records.

mod support;

use std::time::{Duration, Instant};

use nano_connect::discovery::link::Link;
use nano_connect::discovery::Directory;
use nano_connect::echo::EchoService;
use nano_connect::nano::actions::READ_ONLY_ACTIONS;
use nano_connect::protocol::identity::NodeKey;
use nano_connect::protocol::record::{Record, RecordBody, WebFace, RECORD_VERSION};
use nano_connect::web::cert::{BrowserCert, CertRing};
use nano_connect::web::WebServerConfig;
use nano_connect::worker::{BrokerChoice, WorkerBuilder};
use serde_json::{json, Value};
use support::browser::Browser;
use support::mesh::{self, GrapeProcess};
use support::nano_stub::{fixtures, Mode, NanoStub};

const ACCOUNT: &str = "nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo";

/// Percent-encodes everything but letters and digits (for a page's `#bootstrap=...`).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The fixture answer for `request`, as JSON.
fn fixture_answer(request: Value) -> Value {
    let fixture = fixtures()
        .into_iter()
        .find(|f| f.request == request)
        .unwrap_or_else(|| panic!("no fixture for {request}"));
    serde_json::from_str(&fixture.body).expect("fixture body is JSON")
}

fn grape() -> GrapeProcess {
    let grape = mesh::grape(None, 240.0);
    assert!(
        grape.process.field("web").starts_with("https://127.0.0.1:"),
        "the grape prints its bootstrap string: {}",
        grape.process.listening
    );
    grape
}

/// Waits (inside `block_in_place`) until the grape resolves `nano_rpc` to `ports`.
fn wait_announced(grape: &GrapeProcess, ports: &[u16]) {
    tokio::runtime::Handle::current().block_on(mesh::wait_announced(&grape.url, "nano_rpc", ports));
}

/// A worker process of `nano_rpc` relaying to `stub`, announced through `grape`.
fn worker(grape: &GrapeProcess, stub: &NanoStub) -> (mesh::Process, u16) {
    let url = stub.url();
    let (process, port) = mesh::worker(
        &grape.url,
        "nano_rpc",
        &["--nano-rpc", &url, "--announce-interval", "1", "--public"],
    );
    assert!(
        process.listening["web"]["sha256"].as_array().map(Vec::len) == Some(2),
        "the worker serves browsers with a current and a next certificate: {}",
        process.listening
    );
    (process, port)
}

/// Waits (at most 20 s) until the page's lookup finds `n` workers; returns their node ids.
fn wait_for_workers(browser: &mut Browser, n: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let found = browser.value(
            "const ws = await window.nanoConnectMesh.lookup(true); return ws.map((w) => w.node);",
        );
        let nodes: Vec<String> = serde_json::from_value(found).expect("node ids");
        if nodes.len() >= n {
            return nodes;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the page found {nodes:?}, not {n} workers, within 20 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_gets_the_nodes_answers_from_the_mesh_and_fails_over() {
    let stub = NanoStub::start(Mode::RsNano).await;
    tokio::task::block_in_place(|| {
        let grape = grape();
        let (mut first, first_port) = worker(&grape, &stub);
        let (second, second_port) = worker(&grape, &stub);
        let ids = [first.field("node_id"), second.field("node_id")];
        wait_announced(&grape, &[first_port, second_port]);
        let mut browser = Browser::start();

        // The example page: block count, balance and history, from the stand-in's fixtures.
        let hash = format!(
            "bootstrap={}&account={ACCOUNT}",
            encode(&grape.process.field("web"))
        );
        let results = browser.open(&hash);
        assert_eq!(results["error"], Value::Null, "{results}");
        assert_eq!(
            results["answers"]["block_count"],
            fixture_answer(json!({"action": "block_count"}))
        );
        assert_eq!(
            results["answers"]["account_balance"],
            fixture_answer(json!({"action": "account_balance", "account": ACCOUNT}))
        );
        assert_eq!(
            results["answers"]["account_history"],
            fixture_answer(json!({"action": "account_history", "account": ACCOUNT, "count": "10"}))
        );
        eprintln!(
            "page load to first answer: {:.1} ms",
            results["firstAnswerMs"].as_f64().unwrap_or(f64::NAN)
        );
        let nodes = wait_for_workers(&mut browser, 2);
        for id in &ids {
            assert!(nodes.contains(id), "{id} is found: {nodes:?}");
        }

        // A non-allowlisted action is refused with call's code, and never reaches the node.
        stub.clear_received();
        let refused = browser.value(
            "try { await window.nanoConnectMesh.request({action: 'wallet_create'}); return null; } \
             catch (e) { return {code: e.code, exit: e.exitCode, message: e.message}; }",
        );
        assert_eq!(refused["code"], "action_not_allowed", "{refused}");
        assert_eq!(refused["exit"], 3);
        assert!(
            stub.actions_received().is_empty(),
            "{:?}",
            stub.actions_received()
        );

        // Both workers answer; then one is killed and every read-only request still gets
        // an answer, from the other.
        let answered = browser.value(
            "const m = window.nanoConnectMesh; const seen = new Set(); \
             for (let i = 0; i < 40 && seen.size < 2; i++) { \
               m.sessions.clear(); \
               seen.add((await m.requestDetailed({action: 'block_count'})).node); } \
             return [...seen];",
        );
        assert_eq!(answered.as_array().map(Vec::len), Some(2), "{answered}");
        first.kill();
        let after = browser.value(
            "const m = window.nanoConnectMesh; const out = []; \
             for (let i = 0; i < 6; i++) { \
               const r = await m.requestDetailed({action: 'block_count'}, {timeoutMs: 8000}); \
               out.push({node: r.node, count: r.json.count, failovers: r.failovers}); } \
             return out;",
        );
        let after = after.as_array().expect("answers");
        assert_eq!(after.len(), 6);
        for answer in after {
            assert_eq!(answer["node"], ids[1].as_str(), "{answer}");
            assert_eq!(answer["count"], "3");
        }
        drop(second);
    });
}

/// A worker behind a NAT (registered with the grape's broker, no public address) cannot
/// be dialled from a browser: the page's requests to it go through the grape
/// (`nano-connect/relay`), which reaches it by the native route; the grape relays only to
/// workers its lookup listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_reaches_a_worker_behind_a_nat_through_the_grape() {
    let stub = NanoStub::start(Mode::RsNano).await;
    tokio::task::block_in_place(|| {
        let grape = grape();
        let url = stub.url();
        let (worker, _) = mesh::worker(
            &grape.url,
            "nano_rpc",
            &[
                "--nano-rpc",
                &url,
                "--announce-interval",
                "1",
                "--broker",
                &grape.dht,
                // Loopback has no NAT: register as a worker behind one would.
                "--via-broker",
            ],
        );
        worker.wait_event("registered", Duration::from_secs(10));
        let id = worker.field("node_id");
        let mut browser = Browser::start();
        browser.open(&format!(
            "bootstrap={}",
            encode(&grape.process.field("web"))
        ));
        let nodes = wait_for_workers(&mut browser, 1);
        assert_eq!(
            nodes,
            std::slice::from_ref(&id),
            "the brokered worker is listed"
        );

        stub.clear_received();
        let answer = browser.value(
            "const r = await window.nanoConnectMesh.requestDetailed({action: 'block_count', uncached: 'true'}); \
             return {node: r.node, relayed: r.relayed, json: r.json};",
        );
        assert_eq!(answer["node"], id.as_str(), "{answer}");
        assert_eq!(answer["relayed"], true, "{answer}");
        assert_eq!(
            answer["json"],
            fixture_answer(json!({"action": "block_count"}))
        );
        assert_eq!(stub.actions_received(), ["block_count"]);

        // The worker's own refusal comes back through the grape unchanged.
        let refused = browser.value(
            "try { await window.nanoConnectMesh.request({action: 'wallet_create'}); return null; } \
             catch (e) { return e.code; }",
        );
        assert_eq!(refused, "action_not_allowed");

        // No open relay: a node the grape did not list is refused.
        let stranger = NodeKey::generate().node_id().to_string();
        let script = format!(
            "try {{ await window.nanoConnectMesh.askThroughGrape({{node: '{stranger}', relayed: true}}, \
               new TextEncoder().encode('{{\"action\":\"block_count\"}}')); return null; }} \
             catch (e) {{ return e.code; }}"
        );
        assert_eq!(browser.value(&script), "unknown_service");
        assert_eq!(
            stub.actions_received(),
            ["block_count"],
            "nothing more reached the node"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_refuse_wrong_hashes_expired_certificates_and_impostors() {
    let stub = NanoStub::start(Mode::RsNano).await;
    let grape = tokio::task::block_in_place(grape);
    let (good, good_port) = tokio::task::block_in_place(|| worker(&grape, &stub));

    // A worker whose certificate expired yesterday, though its record is fresh and lists
    // the certificate's hash.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let day = 24 * 3600 * 1000;
    let expired = CertRing {
        current: BrowserCert::generate(now - 10 * day, now - day).expect("cert"),
        served_since_ms: now - day,
        next: BrowserCert::generate(now - 10 * day, now - day).expect("cert"),
    };
    let stale = WorkerBuilder::new("nano_rpc")
        .bind("127.0.0.1:0".parse().unwrap())
        .directory(Directory::Grape(Link::new(&grape.url)))
        .brokers(BrokerChoice::Off)
        .presence(|p| p.announce_interval = Duration::from_secs(1))
        .web(WebServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ring: Some(expired.clone()),
            ..WebServerConfig::default()
        })
        .spawn(EchoService)
        .await
        .expect("worker with an expired certificate");
    let stale_id = stale.node_id().to_string();
    tokio::task::block_in_place(|| {
        wait_announced(&grape, &[good_port, stale.local_addr().port()]);
        let mut browser = Browser::start();
        let bootstrap = grape.process.field("web");
        let results = browser.open(&format!("bootstrap={}", encode(&bootstrap)));
        assert_eq!(results["error"], Value::Null, "{results}");
        let nodes = wait_for_workers(&mut browser, 2);
        assert!(nodes.contains(&stale_id), "{nodes:?}");

        // A grape given with a wrong hash is refused.
        let port = bootstrap
            .trim_start_matches("https://127.0.0.1:")
            .split('/')
            .next()
            .expect("port")
            .to_string();
        let wrong = format!(
            "https://127.0.0.1:{port}/nano-connect#sha256={}",
            "00".repeat(32)
        );
        let refused = browser.value(&format!(
            "const nc = await import('./nano-connect.js'); \
             try {{ await nc.connect('{wrong}', {{connectTimeoutMs: 5000}}); return null; }} \
             catch (e) {{ return {{code: e.code, message: e.message}}; }}"
        ));
        assert_eq!(refused["code"], "unreachable", "{refused}");

        // The worker with the expired certificate is refused though its hash is right.
        let expired_refusal = browser.value(&format!(
            "const m = window.nanoConnectMesh; const ws = await m.lookup(); \
             const w = ws.find((w) => w.node === '{stale_id}'); \
             if (!w || !w.sha256.includes('{}')) return 'record lacks the hash'; \
             try {{ await m.ask(w, new TextEncoder().encode('{{\"action\":\"block_count\"}}')); return null; }} \
             catch (e) {{ return {{code: e.code, message: e.message}}; }}",
            expired.current.sha256_hex()
        ));
        assert_eq!(expired_refusal["code"], "unreachable", "{expired_refusal}");

        // A record that names the good worker's key and hashes but another host's address
        // (a host standing in for the worker) is refused: the host cannot show the
        // certificate the record names.
        let impostor = browser.value(&format!(
            "const m = window.nanoConnectMesh; const ws = await m.lookup(); \
             const good = ws.find((w) => w.node === '{}'); \
             const other = ws.find((w) => w.node === '{stale_id}'); \
             const posing = {{node: 'posing', urls: good.urls, sha256: other.sha256}}; \
             const lying = {{node: 'lying', urls: other.urls, sha256: good.sha256}}; \
             const out = []; \
             for (const w of [posing, lying]) {{ \
               try {{ await m.ask(w, new TextEncoder().encode('{{\"action\":\"block_count\"}}')); out.push(null); }} \
               catch (e) {{ out.push(e.code); }} }} \
             return out;",
            good.field("node_id")
        ));
        assert_eq!(
            impostor,
            json!(["unreachable", "unreachable"]),
            "{impostor}"
        );

        // With everything right, the good worker answers (the control of the above).
        let answer = browser.value(&format!(
            "const m = window.nanoConnectMesh; const ws = await m.lookup(); \
             const w = ws.find((w) => w.node === '{}'); \
             const a = await m.ask(w, new TextEncoder().encode('{{\"action\":\"block_count\"}}')); \
             return JSON.parse(new TextDecoder().decode(a.body));",
            good.field("node_id")
        ));
        assert_eq!(answer, fixture_answer(json!({"action": "block_count"})));

        // Records are checked in the page: one signed here verifies there; altered,
        // expired or for another key, it does not.
        let key = NodeKey::generate();
        let body = |exp| RecordBody {
            v: RECORD_VERSION,
            exp,
            web: Some(WebFace {
                addrs: vec!["127.0.0.1:9".parse().unwrap()],
                sha256: vec!["ab".repeat(32)],
            }),
            ..RecordBody::default()
        };
        let fresh = Record::sign(&key, "nano_rpc", now, body(now + 60_000)).expect("sign");
        let old = Record::sign(&key, "nano_rpc", now - 120_000, body(now - 60_000)).expect("sign");
        let mut altered = fresh.wire.to_json().expect("json");
        altered["v"] = altered["v"]
            .as_str()
            .unwrap()
            .replace("127.0.0.1:9", "127.0.0.1:8")
            .into();
        let checks = browser.value(&format!(
            "const nc = await import('./nano-connect.js'); \
             const out = []; \
             for (const [r, k] of [[{}, 'nano_rpc'], [{altered}, 'nano_rpc'], [{}, 'nano_rpc'], [{}, 'other']]) {{ \
               try {{ out.push((await nc.verifyRecord(r, k)).node); }} catch (e) {{ out.push('refused: ' + e.message); }} }} \
             return out;",
            fresh.wire.to_json().unwrap(),
            old.wire.to_json().unwrap(),
            fresh.wire.to_json().unwrap(),
        ));
        let checks: Vec<String> = serde_json::from_value(checks).expect("strings");
        assert_eq!(checks[0], key.node_id().to_string(), "{checks:?}");
        assert!(checks[1].contains("signature"), "{checks:?}");
        assert!(checks[2].contains("expired"), "{checks:?}");
        assert!(checks[3].contains("not other"), "{checks:?}");
        drop(good);
    });
    stale.shutdown(Duration::from_millis(200)).await;
}

/// The page's client fails over for exactly the actions the Rust client does.
#[test]
fn the_javascript_client_reads_only_what_the_rust_client_reads() {
    let js = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/nano-connect.js"),
    )
    .expect("web/nano-connect.js");
    let start = js
        .find("export const READ_ONLY_ACTIONS = [")
        .expect("READ_ONLY_ACTIONS in the JS client");
    let list = &js[start..];
    let list = &list[list.find('[').unwrap() + 1..list.find("];").unwrap()];
    let names: Vec<&str> = list
        .split(',')
        .map(|s| s.trim().trim_matches('\''))
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(names, READ_ONLY_ACTIONS);
}
