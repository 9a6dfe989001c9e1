//! NAT traversal over loopback with real processes: a grape hosting the broker, a worker
//! registered with it, `call --broker` through the direct path and the relay, relay
//! limits, STUN interop with coturn both ways, and bad input at the broker and worker.
//! (The namespace NAT lab with real NATs lives in its own test file.)

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use nano_connect::protocol::broker::{
    decode, encode_broker, encode_punch, BrokerMessage, Datagram, Role, NONCE_LEN,
};
use nano_connect::traversal::{broker_of, netcheck, stun_query, Mapping};
use support::mesh::{run, Process};

/// A grape with its broker on loopback; `extra` are more flags.
fn grape(extra: &[&str]) -> Process {
    let mut args = vec![
        "grape",
        "--dp",
        "0",
        "--aph",
        "0",
        "--bind",
        "127.0.0.1",
        "--bn",
        "none",
    ];
    args.extend_from_slice(extra);
    Process::start(&args)
}

/// A fibonacci worker registered with the grape's broker; returns it and its port.
fn worker(dht: &str) -> (Process, u16) {
    let process = Process::start(&[
        "worker",
        "--announce",
        "fib",
        "--service",
        "fibonacci",
        "--broker",
        dht,
        "--bootstrap",
        dht,
        // Loopback has no NAT: register as a worker behind one would.
        "--via-broker",
        "--bind",
        "127.0.0.1",
    ]);
    let registered = process.wait_event("registered", Duration::from_secs(10));
    let port = process.listening["port"].as_u64().expect("port") as u16;
    assert_eq!(registered["reflexive"], format!("127.0.0.1:{port}"));
    (process, port)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `path=` line's fields (path, worker, node), checking the documented format.
fn path_line(stderr: &str) -> (String, String, String) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("nano-connect: path="))
        .unwrap_or_else(|| panic!("no path line in {stderr}"));
    let fields: Vec<&str> = line["nano-connect: ".len()..].split(' ').collect();
    assert_eq!(fields.len(), 4, "{line}");
    let path = fields[0].strip_prefix("path=").expect("path=");
    let worker = fields[1].strip_prefix("worker=").expect("worker=");
    let node = fields[2].strip_prefix("node=").expect("node=");
    let ms = fields[3].strip_prefix("elapsed_ms=").expect("elapsed_ms=");
    assert!(ms.parse::<f64>().is_ok_and(|ms| ms > 0.0), "{line}");
    (path.to_string(), worker.to_string(), node.to_string())
}

#[tokio::test]
async fn call_through_the_broker_directly_and_through_the_relay() {
    let grape = grape(&[]);
    let dht = grape.field("dht");
    let broker = grape.field("broker");
    assert_eq!(
        broker_of(&dht).unwrap().to_string(),
        broker,
        "broker = DHT port + 10000"
    );
    let (_worker, port) = worker(&dht);

    let output = run(
        &[
            "call",
            "--broker",
            &dht,
            "--service",
            "fib",
            "-v",
            "--json",
            "{\"length\":10}",
        ],
        "",
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).trim(), "[0,1,1,2,3,5,8,13,21,34]");
    let (path, worker, _) = path_line(&text(&output.stderr));
    assert_eq!(path, "direct");
    assert_eq!(worker, format!("127.0.0.1:{port}"));

    // The relay carries a whole stdin session on one circuit.
    let output = run(
        &[
            "call",
            "--broker",
            &dht,
            "--service",
            "fib",
            "-v",
            "--force-relay",
        ],
        "{\"length\":3}\n{\"length\":5}\n",
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "[0,1,1]\n[0,1,1,2,3]\n");
    let stderr = text(&output.stderr);
    assert_eq!(stderr.matches("path=relayed").count(), 2, "{stderr}");
    assert_eq!(path_line(&stderr).1, format!("127.0.0.1:{port}"));

    // A key nobody registered: exit 5 with the broker's words.
    let output = run(
        &["call", "--broker", &dht, "--service", "nope", "block_count"],
        "",
    )
    .await;
    assert_eq!(output.status.code(), Some(5), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("no worker announces \"nope\"")
            && stderr.contains("no worker is registered for it at the broker(s)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn relay_limits_close_circuits_with_clear_refusals() {
    // A QUIC handshake alone carries more than 2000 bytes.
    let grape_small = grape(&["--relay-max-bytes", "2000"]);
    let dht = grape_small.field("dht");
    let (_worker, _) = worker(&dht);
    let output = run(
        &[
            "call",
            "--broker",
            &dht,
            "--service",
            "fib",
            "--force-relay",
            "--json",
            "{\"length\":3}",
        ],
        "",
    )
    .await;
    assert_eq!(output.status.code(), Some(7), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("relay circuit closed: it carried its limit of 2000 bytes"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // A circuit that outlives its duration is closed between two requests of a session.
    let grape_short = grape(&["--relay-max-secs", "0.5"]);
    let dht = grape_short.field("dht");
    let (_worker, _) = worker(&dht);
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut child = tokio::process::Command::new(support::mesh::binary())
        .envs(support::scratch::env())
        .args([
            "call",
            "--broker",
            &dht,
            "--service",
            "fib",
            "--force-relay",
        ])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start call");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let started = Instant::now();
    stdin.write_all(b"{\"length\":4}\n").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("first answer in time")
        .unwrap();
    assert_eq!(first.as_deref(), Some("[0,1,1,2]"));
    // Wait out the circuit's 500 ms (the limit under test is a duration).
    tokio::time::sleep(Duration::from_millis(800).saturating_sub(started.elapsed())).await;
    stdin.write_all(b"{\"length\":4}\n").await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("second line in time")
        .unwrap()
        .expect("a line");
    let value: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!(value["code"], "relay_closed", "{second}");
    assert!(
        value["error"]
            .as_str()
            .unwrap()
            .contains("relay circuit closed: it lasted its limit of 500 ms"),
        "{second}"
    );
}

#[tokio::test]
async fn netcheck_reports_an_endpoint_independent_public_host_on_loopback() {
    let grape = grape(&[]);
    let dht = grape.field("dht");
    let output = run(&["netcheck", "--broker", &dht, "--json"], "").await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["mapping"], "endpoint-independent");
    assert_eq!(report["public"], true);
    assert!(report["reflexive"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let output = run(&["netcheck", "--broker", &dht], "").await;
    assert!(
        text(&output.stdout).contains("hole punching"),
        "{}",
        text(&output.stdout)
    );
}

/// A free UDP port on loopback (bound and released).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn stun_client_and_responder_interoperate_with_coturn() {
    // Our client against coturn's server.
    let port = free_udp_port();
    let mut server = tokio::process::Command::new("turnserver")
        .args([
            "-n",
            "--stun-only",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            &port.to_string(),
            "--log-file",
            "stdout",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("turnserver (Debian package coturn) must be installed");
    let server_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let started = Instant::now();
    let reflexive = loop {
        // The server needs a moment to bind; each query waits up to 500 ms for it.
        match stun_query(bind, server_addr, Duration::from_millis(500)).await {
            Ok(addr) => break addr,
            Err(e) => assert!(started.elapsed() < Duration::from_secs(10), "coturn: {e}"),
        }
    };
    assert_eq!(reflexive.ip().to_string(), "127.0.0.1");
    let _ = server.kill().await;

    // coturn's client against our responder on the broker port.
    let grape = grape(&[]);
    let broker: SocketAddr = grape.field("broker").parse().unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("turnutils_stunclient")
            .args(["-p", &broker.port().to_string(), "127.0.0.1"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("turnutils_stunclient answers within 10 s")
    .expect("turnutils_stunclient (Debian package coturn) must be installed");
    let out = text(&output.stdout) + &text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("UDP reflexive addr: 127.0.0.1:"), "{out}");
}

#[tokio::test]
async fn malformed_datagrams_never_crash_the_broker() {
    let grape = grape(&[]);
    let broker: SocketAddr = grape.field("broker").parse().unwrap();
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut stun_bad_length = vec![0u8, 1, 0, 200, 0x21, 0x12, 0xa4, 0x42];
    stun_bad_length.extend([0u8; 12]);
    let mut huge = vec![0x30u8];
    huge.extend(vec![0xffu8; 60_000]);
    let peer_only = encode_broker(&BrokerMessage::Introduce {
        tx: 1,
        role: Role::Dial,
        peer_reflexive: broker,
        peer_local: vec![],
        nonce: [0; NONCE_LEN],
        delay_ms: 0,
        peer_symmetric: false,
        record: None,
    });
    let datagrams: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x30],
        vec![0x30, 0xc1, 0xc1],
        vec![0x31, 1, 2],
        vec![0x31, 0, 0, 0, 1, 0xc0, 0xff],
        vec![0x32],
        vec![0x3f; 100],
        stun_bad_length,
        huge,
        peer_only,
        (0..255).collect(),
    ];
    for d in &datagrams {
        junk.send_to(d, broker).unwrap();
    }
    // Still answering: a mapping check goes through.
    let report = netcheck(
        "127.0.0.1:0".parse().unwrap(),
        broker,
        Duration::from_secs(2),
    )
    .await
    .expect("the broker still answers");
    assert_eq!(report.mapping, Mapping::EndpointIndependent);
}

/// Receives NAT-traversal datagrams on `socket` for up to `wait`, returning the first
/// that `want` accepts.
fn receive_until<T>(
    socket: &UdpSocket,
    wait: Duration,
    mut want: impl FnMut(SocketAddr, Datagram<'_>) -> Option<T>,
) -> Option<T> {
    let started = Instant::now();
    let mut buf = [0u8; 2048];
    while started.elapsed() < wait {
        socket
            .set_read_timeout(Some(
                wait.saturating_sub(started.elapsed())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if let Ok(d) = decode(&buf[..len]) {
            if let Some(t) = want(from, d) {
                return Some(t);
            }
        }
    }
    None
}

#[tokio::test]
async fn punches_carry_the_nonce_and_a_strangers_punch_is_ignored() {
    let grape = grape(&[]);
    let broker: SocketAddr = grape.field("broker").parse().unwrap();
    let (_worker, port) = worker(&grape.field("dht"));
    let worker_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Play a client by hand: ask to be introduced.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let connect = BrokerMessage::Connect {
        tx: 77,
        key: "fib".into(),
        node: None,
        local: vec![],
        rtt_ms: 1,
        symmetric: false,
        pad: vec![],
    };
    client.send_to(&encode_broker(&connect), broker).unwrap();
    let nonce = receive_until(&client, Duration::from_secs(5), |from, d| match d {
        Datagram::Broker(BrokerMessage::Introduce {
            tx: 77,
            nonce,
            peer_reflexive,
            role: Role::Dial,
            ..
        }) if from == broker && peer_reflexive == worker_addr => Some(nonce),
        _ => None,
    })
    .expect("an introduction");
    // The worker punches toward us with that nonce.
    let punched = receive_until(&client, Duration::from_secs(5), |from, d| {
        (from == worker_addr && d == Datagram::Punch(nonce)).then_some(())
    });
    assert!(punched.is_some(), "the worker's punches carry the nonce");

    // A stranger's punch with another nonce draws no echo.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut wrong = nonce;
    wrong[0] ^= 0xff;
    stranger
        .send_to(&encode_punch(&wrong, false), worker_addr)
        .unwrap();
    let echoed = receive_until(&stranger, Duration::from_millis(500), |_, d| {
        matches!(d, Datagram::PunchEcho(_)).then_some(())
    });
    assert!(
        echoed.is_none(),
        "a punch without the nonce must be ignored"
    );

    // The introduced client's punch is echoed.
    client
        .send_to(&encode_punch(&nonce, false), worker_addr)
        .unwrap();
    let echo = receive_until(&client, Duration::from_secs(5), |from, d| {
        (from == worker_addr && d == Datagram::PunchEcho(nonce)).then_some(())
    });
    assert!(echo.is_some(), "the peer's punch is echoed");
}

/// Grenache's layout (grapes on consecutive DHT ports, README's example) works with a
/// broker on each grape: a broker never takes the next grape's DHT port.
#[tokio::test]
async fn grapes_on_consecutive_dht_ports_each_run_a_broker() {
    // Find two consecutive free UDP ports below 55536 whose broker ports are free too;
    // bounded tries.
    let free = |port: u16| UdpSocket::bind(("127.0.0.1", port)).is_ok();
    let first = (0..200)
        .filter_map(|_| {
            let probe = UdpSocket::bind("127.0.0.1:0").ok()?;
            let port = probe.local_addr().ok()?.port();
            drop(probe);
            (port < 55535
                && [port, port + 1, port + 10_000, port + 10_001]
                    .into_iter()
                    .all(free))
            .then_some(port)
        })
        .next()
        .expect("two consecutive free ports within 200 tries");
    let dp1 = first.to_string();
    let dp2 = (first + 1).to_string();
    let a = Process::start(&[
        "grape",
        "--dp",
        &dp1,
        "--aph",
        "0",
        "--bind",
        "127.0.0.1",
        "--bn",
        "none",
    ]);
    let bootstrap = format!("127.0.0.1:{dp1}");
    let b = Process::start(&[
        "grape",
        "--dp",
        &dp2,
        "--aph",
        "0",
        "--bind",
        "127.0.0.1",
        "--bn",
        &bootstrap,
    ]);
    assert_eq!(a.field("broker"), format!("127.0.0.1:{}", first + 10_000));
    assert_eq!(b.field("broker"), format!("127.0.0.1:{}", first + 10_001));
    assert_eq!(
        broker_of(&b.field("dht")).unwrap().to_string(),
        b.field("broker")
    );
}
