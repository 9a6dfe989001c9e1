//! Confirmations through the mesh, end to end: a Nano node websocket stand-in
//! (`support::nano_ws_stub`, replaying RsNano's recorded messages and generated ones),
//! workers with `--nano-ws`, and the three faces: the gateway's websocket spoken to by an
//! unmodified client (npm `ws`, pinned by `tests/js-ws/package-lock.json`), `watch`, and
//! the library's `Subscription`.

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nano_connect::discovery::link::Link;
use nano_connect::discovery::Directory;
use nano_connect::protocol::frame::{self, PROTOCOL_VERSION};
use nano_connect::protocol::subscription::{
    self, ClientFrame, Subscribe, WorkerFrame, MAX_CLIENT_FRAME_BYTES,
};
use nano_connect::route::subscribe::{Filter, Subscription, SubscriptionConfig, SubscriptionEvent};
use nano_connect::route::{Discovery, RpcClient, RpcClientConfig};
use serde_json::{json, Value};
use support::mesh::{self, two_grapes, wait_announced, Process};
use support::nano_stub::{Mode, NanoStub};
use support::nano_ws_stub::{fixture_confirmations, generated, NanoWsStub, DESTINATION, GENESIS};
use support::npm;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};

/// How long a subscriber may go without confirmations after its worker is killed: the
/// gateway's silence bound (5 s: 2.5 heartbeats of 2 s), a lookup and a new subscribe,
/// with room for a loaded machine.
const RESUBSCRIBE_BOUND: Duration = Duration::from_secs(15);

const OTHER: &str = "nano_1111111111111111111111111111111111111111111111111111hifc8npp";

/// A worker next to a node stand-in (RPC and websocket).
struct Relay {
    process: Process,
    port: u16,
    node: String,
    _rpc: NanoStub,
}

async fn relay(grape: &str, ws: &NanoWsStub, extra: &[&str]) -> Relay {
    let rpc = NanoStub::start(Mode::RsNano).await;
    let rpc_url = rpc.url();
    let ws_url = ws.url();
    let mut args = vec!["--nano-rpc", rpc_url.as_str(), "--nano-ws", ws_url.as_str()];
    args.extend_from_slice(extra);
    let (process, port) = tokio::task::block_in_place(|| mesh::worker(grape, "nano_rpc", &args));
    let node = process.field("node_id");
    Relay {
        process,
        port,
        node,
        _rpc: rpc,
    }
}

fn hash_of(message: &Value) -> String {
    message["message"]["hash"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `node tests/js-ws/client.js URL`: stdin lines are sent, received messages come back
/// as lines.
struct JsClient {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: Lines<BufReader<tokio::process::ChildStdout>>,
}

impl JsClient {
    async fn start(url: &str) -> JsClient {
        let mut child = tokio::process::Command::new("node")
            .arg(npm::js_dir("js-ws").join("client.js"))
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed to run this test (apt-get install nodejs)");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut client = JsClient {
            child,
            stdin,
            lines,
        };
        let open = client.line(Duration::from_secs(10)).await;
        assert_eq!(open["open"], true, "{open}");
        client
    }

    async fn line(&mut self, deadline: Duration) -> Value {
        let line = tokio::time::timeout(deadline, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("client.js printed nothing within {deadline:?}"))
            .expect("read client.js")
            .expect("client.js ended");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    /// The next message the gateway sent.
    async fn received(&mut self) -> Value {
        let line = self.line(Duration::from_secs(15)).await;
        line.get("received")
            .cloned()
            .unwrap_or_else(|| panic!("not a message: {line}"))
    }

    async fn send(&mut self, message: Value) {
        let mut text = message.to_string();
        text.push('\n');
        self.stdin
            .write_all(text.as_bytes())
            .await
            .expect("write to client.js");
    }

    /// Sends `message` and returns the next message, which must carry its `id`.
    async fn ask(&mut self, message: Value) -> Value {
        let id = message["id"].clone();
        self.send(message).await;
        let answer = self.received().await;
        assert_eq!(answer["id"], id, "{answer}");
        answer
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_websocket_client_follows_its_accounts_through_the_gateway() {
    tokio::task::block_in_place(|| npm::ensure_installed("js-ws", "ws"));
    let (a, b) = tokio::task::block_in_place(|| two_grapes(120.0));
    let node = NanoWsStub::start().await;
    let worker = relay(&a.url, &node, &["--ws-max-accounts", "2"]).await;
    node.wait_subscribers(1, Duration::from_secs(10)).await;
    wait_announced(&b.url, "nano_rpc", &[worker.port]).await;

    // The worker asked its node for every confirmation, with what any subscriber may want.
    let asked = &node.received()[0];
    assert_eq!(asked["action"], "subscribe", "{asked}");
    assert_eq!(asked["topic"], "confirmation");
    assert_eq!(asked["ack"], true);
    assert_eq!(asked["options"]["include_block"], true);
    assert_eq!(asked["options"]["include_election_info"], true);
    assert!(asked["options"].get("accounts").is_none(), "{asked}");

    let gateway = tokio::task::block_in_place(|| {
        Process::start(&[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--ws-listen",
            "127.0.0.1:0",
            "--grape",
            &b.url,
            "--metrics",
            "127.0.0.1:0",
        ])
    });
    let url = format!("ws://{}", gateway.field("ws"));
    let mut wallet = JsClient::start(&url).await;

    // Subscribe as wallets do; the ack carries the id and the time.
    let ack = wallet
        .ask(
            json!({"action": "subscribe", "topic": "confirmation", "ack": true, "id": "sub-42",
                    "options": {"accounts": [DESTINATION]}}),
        )
        .await;
    assert_eq!(ack["ack"], "subscribe", "{ack}");
    assert!(
        ack["time"].as_str().unwrap_or("").parse::<u64>().is_ok(),
        "{ack}"
    );

    // Exactly the confirmations of DESTINATION: the send to it and its receive, as the
    // node sent them; not another account's.
    let fixtures = fixture_confirmations();
    node.emit(&generated(1, OTHER, None));
    for f in &fixtures {
        node.emit(f);
    }
    for f in &fixtures {
        let got = wallet.received().await;
        assert_eq!(got, serde_json::from_str::<Value>(f).unwrap());
    }

    // update: follow GENESIS instead.
    let ack = wallet
        .ask(
            json!({"action": "update", "topic": "confirmation", "ack": true, "id": "upd-1",
                    "options": {"accounts_add": [GENESIS], "accounts_del": [DESTINATION]}}),
        )
        .await;
    assert_eq!(ack["ack"], "update", "{ack}");
    node.emit(&generated(100, DESTINATION, None));
    node.emit(&generated(101, GENESIS, None));
    let got = wallet.received().await;
    assert_eq!(hash_of(&got), format!("{:064X}", 101), "{got}");

    // ping is answered as the node answers it.
    let pong = wallet.ask(json!({"action": "ping", "id": "p-1"})).await;
    assert_eq!(pong["ack"], "pong", "{pong}");

    // Refusals are clear and carry the id.
    let refused = wallet
        .ask(json!({"action": "subscribe", "topic": "confirmation", "ack": true, "id": "all"}))
        .await;
    assert_eq!(refused["code"], "all_accounts_refused", "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("every account"),
        "{refused}"
    );
    let refused = wallet
        .ask(
            json!({"action": "subscribe", "topic": "confirmation", "id": "many",
                    "options": {"accounts": [GENESIS, DESTINATION, OTHER]}}),
        )
        .await;
    assert_eq!(refused["code"], "too_many_accounts", "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("at most 2"),
        "{refused}"
    );
    let refused = wallet
        .ask(
            json!({"action": "subscribe", "topic": "confirmation", "id": "bad",
                    "options": {"accounts": ["nano_bogus"]}}),
        )
        .await;
    assert_eq!(refused["code"], "invalid_account", "{refused}");
    let refused = wallet
        .ask(json!({"action": "subscribe", "topic": "votes", "id": "votes"}))
        .await;
    assert_eq!(refused["code"], "unknown_topic", "{refused}");
    let refused = wallet.ask(json!({"action": "fly", "id": "f"})).await;
    assert_eq!(refused["code"], "unknown_action", "{refused}");

    // unsubscribe is acknowledged; the connection stays usable.
    let ack = wallet
        .ask(json!({"action": "unsubscribe", "topic": "confirmation", "ack": true, "id": "u"}))
        .await;
    assert_eq!(ack["ack"], "unsubscribe", "{ack}");
    let pong = wallet.ask(json!({"action": "ping", "id": "p-2"})).await;
    assert_eq!(pong["ack"], "pong");

    // The gateway's metrics count what it told the wallet.
    let metrics = reqwest::get(format!("http://{}/metrics", gateway.field("metrics")))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains("nano_connect_gateway_ws_confirmations_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nano_connect_gateway_ws_errors_total{code=\"all_accounts_refused\"} 1"),
        "{metrics}"
    );
    drop(wallet.stdin);
    let _ = tokio::time::timeout(Duration::from_secs(5), wallet.child.wait()).await;
    drop(worker.process);
}

/// `nano-connect watch ARGS` with its stdout (confirmations) and stderr (events) read
/// line by line.
struct Watch {
    child: tokio::process::Child,
    out: Lines<BufReader<tokio::process::ChildStdout>>,
    err: Lines<BufReader<tokio::process::ChildStderr>>,
}

impl Watch {
    fn start(args: &[&str]) -> Watch {
        let mut child = tokio::process::Command::new(mesh::binary())
            .arg("watch")
            .args(args)
            .envs(support::scratch::env())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start nano-connect watch");
        let out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let err = BufReader::new(child.stderr.take().expect("stderr")).lines();
        Watch { child, out, err }
    }

    /// The next confirmation printed, within `deadline`.
    async fn confirmation(&mut self, deadline: Duration) -> Option<Value> {
        let line = tokio::time::timeout(deadline, self.out.next_line())
            .await
            .ok()?;
        let line = line.expect("read watch").expect("watch ended");
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}")))
    }

    /// The next stderr event named `name`, within `deadline` (other lines skipped).
    async fn event(&mut self, name: &str, deadline: Duration) -> Value {
        let started = Instant::now();
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            let line = tokio::time::timeout(left, self.err.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {name:?} event from watch within {deadline:?}"))
                .expect("read watch")
                .unwrap_or_else(|| panic!("watch ended before a {name:?} event"));
            if let Ok(value) = serde_json::from_str::<Value>(&line) {
                if value["event"] == name {
                    return value;
                }
            }
        }
    }

    /// SIGINT, as Ctrl-C; the exit code.
    async fn interrupt(mut self) -> Option<i32> {
        let pid = self.child.id()?.to_string();
        let _ = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status();
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .ok()?
            .ok()?;
        status.code()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_keeps_receiving_after_its_worker_is_killed() {
    let (a, b) = tokio::task::block_in_place(|| two_grapes(120.0));
    let node = NanoWsStub::start().await;
    let mut first = relay(&a.url, &node, &[]).await;
    let mut second = relay(&a.url, &node, &[]).await;
    node.wait_subscribers(2, Duration::from_secs(10)).await;
    wait_announced(&b.url, "nano_rpc", &[first.port, second.port]).await;

    let mut watch = Watch::start(&["--grape", &b.url, DESTINATION]);
    let subscribed = watch.event("subscribed", Duration::from_secs(20)).await;
    let serving = subscribed["workers"][0]
        .as_str()
        .expect("a worker")
        .to_string();
    let fixtures = fixture_confirmations();
    node.emit(&fixtures[0]);
    let got = watch
        .confirmation(Duration::from_secs(10))
        .await
        .expect("a line");
    assert_eq!(got, serde_json::from_str::<Value>(&fixtures[0]).unwrap());

    // SIGKILL: no goodbye; the subscriber finds out from the silence.
    let killed = if first.node == serving {
        &mut first.process
    } else {
        assert_eq!(second.node, serving);
        &mut second.process
    };
    killed.kill();
    let killed_at = Instant::now();
    let mut n = 1000u64;
    let got = loop {
        assert!(
            killed_at.elapsed() < RESUBSCRIBE_BOUND,
            "no confirmation within {RESUBSCRIBE_BOUND:?} of the kill"
        );
        n += 1;
        node.emit(&generated(n, DESTINATION, None));
        if let Some(got) = watch.confirmation(Duration::from_millis(250)).await {
            break got;
        }
    };
    assert!(hash_of(&got).starts_with("00000000"), "{got}");
    let lost = watch.event("worker_lost", Duration::from_secs(1)).await;
    assert_eq!(lost["worker"], serving.as_str(), "{lost}");
    let resubscribed = watch.event("resubscribed", Duration::from_secs(1)).await;
    assert_ne!(resubscribed["worker"], serving.as_str(), "{resubscribed}");
    eprintln!(
        "resubscribed {} ms after the kill; first confirmation after {} ms",
        resubscribed["ms"],
        killed_at.elapsed().as_millis()
    );
    assert_eq!(watch.interrupt().await, Some(0), "watch exits 0 on Ctrl-C");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_delivers_each_confirmation_once() {
    let (a, b) = tokio::task::block_in_place(|| two_grapes(120.0));
    let node = NanoWsStub::start().await;
    let first = relay(&a.url, &node, &[]).await;
    let second = relay(&a.url, &node, &[]).await;
    node.wait_subscribers(2, Duration::from_secs(10)).await;
    wait_announced(&b.url, "nano_rpc", &[first.port, second.port]).await;

    let mut watch = Watch::start(&["--grape", &b.url, "--quorum", "2", GENESIS]);
    let subscribed = watch.event("subscribed", Duration::from_secs(20)).await;
    assert_eq!(subscribed["workers"].as_array().map(Vec::len), Some(2));
    let fixtures = fixture_confirmations();
    // The node's duplicate, then a later block: the second line is the later block.
    node.emit(&fixtures[0]);
    node.emit(&fixtures[0]);
    node.emit(&generated(7, GENESIS, None));
    let one = watch
        .confirmation(Duration::from_secs(10))
        .await
        .expect("first");
    let two = watch
        .confirmation(Duration::from_secs(10))
        .await
        .expect("second");
    assert_eq!(
        hash_of(&one),
        hash_of(&serde_json::from_str(&fixtures[0]).unwrap())
    );
    assert_eq!(hash_of(&two), format!("{:064X}", 7));

    // Three workers needed, two take subscriptions: exit code 8 as call's --quorum.
    let output = mesh::run(&["watch", "--grape", &b.url, "--quorum", "3", GENESIS], "").await;
    assert_eq!(
        output.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // An account that is none: exit code 2.
    let output = mesh::run(&["watch", "--grape", &b.url, "nano_bogus"], "").await;
    assert_eq!(output.status.code(), Some(2));
}

/// Resident memory of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_loses_messages_not_memory_and_slows_no_one() {
    const MESSAGES: u64 = 5000;
    let (a, b) = tokio::task::block_in_place(|| two_grapes(120.0));
    let node = NanoWsStub::start().await;
    // A queue of a second at the rate below, so that a subscriber that keeps up loses
    // nothing on a loaded machine (with half a second, a fast subscriber lost 9 messages
    // once, in a debug build on a machine busy with a fuzzer); the slow one's stream
    // window (about 1000 messages) and queue hold well under the 5000 sent.
    let worker = relay(&a.url, &node, &["--ws-max-rate", "0", "--ws-queue", "2000"]).await;
    node.wait_subscribers(1, Duration::from_secs(10)).await;
    wait_announced(&b.url, "nano_rpc", &[worker.port]).await;
    let pid = worker.process.pid();
    let client = |_: ()| {
        let discovery = Discovery::Directory(Directory::Grape(Link::new(&b.url)));
        Arc::new(RpcClient::new(discovery, RpcClientConfig::default()).expect("client"))
    };

    // The slow one: a raw session that reads its ack and then nothing.
    let slow_client = client(());
    let candidates = slow_client.candidates("nano_rpc").await.expect("lookup");
    let mut slow = slow_client
        .open_stream(&candidates[0], "nano_rpc", Duration::from_secs(5))
        .await
        .expect("stream");
    let subscribe = ClientFrame::Subscribe(Subscribe {
        v: PROTOCOL_VERSION,
        id: 1,
        key: "nano_rpc".into(),
        topic: "confirmation".into(),
        accounts: Some(vec![GENESIS.into()]),
        include_block: true,
        include_election_info: false,
        confirmation_type: "all".into(),
        heartbeat_ms: 0,
    });
    let bytes = subscription::encode(&subscribe, MAX_CLIENT_FRAME_BYTES).unwrap();
    slow.send.write_all(&bytes).await.unwrap();
    assert!(matches!(
        read(&mut slow.recv).await,
        Some(WorkerFrame::Ack(_))
    ));

    // The fast one, through the library.
    let fast_client = client(());
    let mut fast = Subscription::open(
        fast_client,
        SubscriptionConfig::default(),
        Filter::accounts(vec![GENESIS.into()]),
    )
    .await
    .expect("subscribe");
    let messages: Vec<String> = (0..MESSAGES)
        .map(|n| generated(n + 1, GENESIS, None))
        .collect();
    let before = rss(pid);
    let started = Instant::now();
    // 2000 a second, in tens: far faster than a wallet's accounts ever confirm, and more
    // than the slow subscriber's stream window and queue hold.
    let emitting = async {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for (n, message) in messages.iter().enumerate() {
            if n % 10 == 0 {
                tick.tick().await;
            }
            node.emit(message);
        }
    };
    let receiving = async {
        let mut got = 0u64;
        while got < MESSAGES {
            match tokio::time::timeout(Duration::from_secs(20), fast.next()).await {
                Ok(Some(SubscriptionEvent::Confirmation(_))) => got += 1,
                Ok(Some(SubscriptionEvent::Lost { lost, reason, .. })) => {
                    panic!("the fast subscriber lost {lost} ({reason})")
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("the fast subscriber got {got} of {MESSAGES}"),
            }
        }
    };
    tokio::join!(emitting, receiving);
    let took = started.elapsed();
    let after = rss(pid);
    eprintln!(
        "fast subscriber: {MESSAGES} confirmations in {} ms; worker RSS {} -> {} KiB",
        took.as_millis(),
        before / 1024,
        after / 1024
    );
    assert!(
        after < before + 64 * 1024 * 1024,
        "worker memory grew from {before} to {after} bytes"
    );

    // The slow one reads now: what fit, and a notice of the rest, before anything after it.
    let (mut confirmations, mut lost, mut notices) = (0u64, 0u64, 0u64);
    while confirmations + lost < MESSAGES {
        match tokio::time::timeout(Duration::from_secs(10), read(&mut slow.recv)).await {
            Ok(Some(WorkerFrame::Confirmation(_))) => confirmations += 1,
            Ok(Some(WorkerFrame::Notice(n))) => {
                assert_eq!(n.reason, "slow_reader");
                lost += n.lost;
                notices += 1;
            }
            Ok(Some(_)) => {}
            other => panic!(
                "the slow subscriber read {confirmations} and {lost} lost, then {:?}",
                other.map(|f| format!("{f:?}"))
            ),
        }
    }
    assert!(
        lost > 0 && notices > 0,
        "nothing was dropped for the slow subscriber"
    );
    assert_eq!(
        confirmations + lost,
        MESSAGES,
        "each message read or counted once"
    );
    eprintln!("slow subscriber: {confirmations} read, {lost} lost in {notices} notice(s)");
}

/// One worker frame, or `None` at the end.
async fn read(recv: &mut quinn::RecvStream) -> Option<WorkerFrame> {
    let mut prefix = [0u8; frame::LENGTH_PREFIX_LEN];
    recv.read_exact(&mut prefix).await.ok()?;
    let len = frame::body_len(prefix, subscription::MAX_WORKER_FRAME_BYTES).ok()?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.ok()?;
    subscription::decode(&body).ok()
}
