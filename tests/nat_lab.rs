//! The NAT lab proves itself with plain UDP, independent of nano-connect's NAT code:
//! reflectors on public hosts report the address they see a datagram from, so a test
//! can read each router's mapping (RFC 4787 §4.1) and filtering (§5) from outside.
//! Needs root, iproute2 and nftables (CI runs as root; `.ci/run` installs them).

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::nano_stub::{Mode, NanoStub};
use support::natlab::{list_namespaces, Host, Lab, NatKind, RouterKind, Side, PREFIX};

/// UDP port the reflectors listen on.
const REFLECTOR_PORT: u16 = 3478;

/// A UDP reflector on a public host: answers every datagram with the sender's address
/// as text `IP:PORT`, until dropped.
struct Reflector {
    addr: SocketAddr,
    socket: UdpSocket,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reflector {
    fn start(host: &Host) -> Reflector {
        let socket = host.udp_socket(REFLECTOR_PORT);
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let serving = socket.try_clone().expect("clone reflector socket");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopping.load(Ordering::Relaxed) {
                if let Ok((_, from)) = serving.recv_from(&mut buf) {
                    let _ = serving.send_to(from.to_string().as_bytes(), from);
                }
            }
        });
        Reflector {
            addr: SocketAddr::from((host.ip, REFLECTOR_PORT)),
            socket,
            stop,
            thread: Some(thread),
        }
    }

    /// Sends `payload` from the reflector's own socket (a solicited datagram for a
    /// mapping that talked to it).
    fn send_to(&self, payload: &[u8], to: SocketAddr) {
        self.socket
            .send_to(payload, to)
            .expect("send from reflector");
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends a probe from `socket` to `reflector` and returns the address the reflector saw
/// it from (the mapping), retrying a lost datagram at most 5 times.
fn mapping(socket: &UdpSocket, reflector: SocketAddr) -> SocketAddr {
    let mut buf = [0u8; 100];
    for _ in 0..5 {
        socket.send_to(b"probe", reflector).expect("send probe");
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            assert_eq!(from, reflector, "answer from the reflector");
            let text = std::str::from_utf8(&buf[..n]).expect("utf-8");
            return text.parse().expect("reflector answers IP:PORT");
        }
    }
    panic!("no answer from reflector {reflector}");
}

/// Polls `f` every 10 ms until true, or panics after 5 s with `what`.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: not within 5 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends one datagram from a fresh socket on `stranger` to `to`, and waits until
/// `side`'s router has counted it as unsolicited WAN input.
fn send_unsolicited(stranger: &Host, side: &Side, to: SocketAddr) {
    let before = side.unsolicited_packets();
    stranger
        .udp_socket(0)
        .send_to(b"unsolicited", to)
        .expect("send unsolicited");
    wait_until("the router counts the unsolicited datagram", || {
        side.unsolicited_packets() > before
    });
}

#[test]
fn public_hosts_reach_each_other_with_their_own_addresses() {
    let lab = Lab::new();
    let reflector_host = lab.public_host("r1");
    let side = lab.side("a", NatKind::None, RouterKind::Home);
    let reflector = Reflector::start(&reflector_host);
    let socket = side.host.udp_socket(0);
    let port = socket.local_addr().expect("local address").port();
    assert_eq!(
        mapping(&socket, reflector.addr),
        SocketAddr::from((side.host.ip, port)),
        "a public host is seen as itself"
    );
    assert_eq!(side.public_ip(), side.host.ip);
}

#[test]
fn eim_apdf_maps_endpoint_independently_and_drops_unsolicited_input() {
    let lab = Lab::new();
    let r1 = lab.public_host("r1");
    let r2 = lab.public_host("r2");
    let stranger = lab.public_host("r3");
    let side = lab.side("a", NatKind::EimApdf, RouterKind::Home);
    let (reflector1, reflector2) = (Reflector::start(&r1), Reflector::start(&r2));

    let socket = side.host.udp_socket(0);
    let seen1 = mapping(&socket, reflector1.addr);
    let seen2 = mapping(&socket, reflector2.addr);
    assert_eq!(
        seen1.ip(),
        side.public_ip(),
        "masqueraded to the WAN address"
    );
    assert_eq!(
        seen1, seen2,
        "endpoint-independent mapping: both reflectors see one public port"
    );

    // A third address sends to the mapping: the router drops it (address-dependent
    // filtering). Then reflector 1, which the host did talk to, sends: that gets in.
    send_unsolicited(&stranger, &side, seen1);
    reflector1.send_to(b"solicited", seen1);
    let mut buf = [0u8; 100];
    let (n, from) = socket.recv_from(&mut buf).expect("the solicited datagram");
    assert_eq!(
        (&buf[..n], from),
        (&b"solicited"[..], reflector1.addr),
        "the unsolicited datagram never reached the host"
    );
    // Port-dependent too: reflector 1's host from another port is a stranger.
    let other_port = r1.udp_socket(0);
    let before = side.unsolicited_packets();
    other_port.send_to(b"other port", seen1).expect("send");
    wait_until("the router drops a datagram from another port", || {
        side.unsolicited_packets() > before
    });
    socket
        .set_read_timeout(Some(Duration::from_millis(1)))
        .expect("timeout");
    assert!(
        socket.recv_from(&mut buf).is_err(),
        "nothing else reached the host"
    );
}

#[test]
fn symmetric_nat_maps_each_destination_to_its_own_port() {
    let lab = Lab::new();
    let r1 = lab.public_host("r1");
    let r2 = lab.public_host("r2");
    let side = lab.side("a", NatKind::Symmetric, RouterKind::Home);
    let (reflector1, reflector2) = (Reflector::start(&r1), Reflector::start(&r2));

    let socket = side.host.udp_socket(0);
    let seen1 = mapping(&socket, reflector1.addr);
    let seen2 = mapping(&socket, reflector2.addr);
    assert_eq!(seen1.ip(), side.public_ip());
    assert_eq!(seen2.ip(), side.public_ip());
    assert_ne!(
        seen1.port(),
        seen2.port(),
        "endpoint-dependent mapping: each destination gets its own public port"
    );
    // The mapping stays put for one destination while it is in use.
    assert_eq!(mapping(&socket, reflector1.addr), seen1);
}

/// Two hosts behind home routers open a path with plain UDP, as hole punching does:
/// each learns the other's mapping from a reflector; A's first datagram is dropped by B's
/// router but opens A's; B's datagram then gets through A's router and opens B's, so A's
/// next datagram arrives.
#[test]
fn two_eim_apdf_hosts_punch_a_hole_with_plain_udp() {
    let lab = Lab::new();
    let r1 = lab.public_host("r1");
    let a = lab.side("a", NatKind::EimApdf, RouterKind::Home);
    let b = lab.side("b", NatKind::EimApdf, RouterKind::Home);
    let reflector = Reflector::start(&r1);
    let (socket_a, socket_b) = (a.host.udp_socket(0), b.host.udp_socket(0));
    let (mapped_a, mapped_b) = (
        mapping(&socket_a, reflector.addr),
        mapping(&socket_b, reflector.addr),
    );

    let before = b.unsolicited_packets();
    socket_a.send_to(b"punch from a", mapped_b).expect("send");
    wait_until("B's router drops A's first punch", || {
        b.unsolicited_packets() > before
    });
    socket_b.send_to(b"punch from b", mapped_a).expect("send");
    let mut buf = [0u8; 100];
    let (n, from) = socket_a.recv_from(&mut buf).expect("B's punch reaches A");
    assert_eq!((&buf[..n], from), (&b"punch from b"[..], mapped_b));
    socket_a.send_to(b"hello b", mapped_b).expect("send");
    let (n, from) = socket_b
        .recv_from(&mut buf)
        .expect("A's datagram reaches B");
    assert_eq!((&buf[..n], from), (&b"hello b"[..], mapped_a));
}

/// One symmetric side against an endpoint-independent one: the birthday method works
/// through the lab's routers with plain UDP. The EIM side probes 4096 random ports of
/// the symmetric side's public address (opening its own filter for each); the symmetric
/// side sends one datagram to the EIM side's mapping from each of 256 fresh sockets, each
/// mapped to a random port. A match gets through (chance of none: about e^-16).
#[test]
fn one_symmetric_side_is_punched_with_the_birthday_method() {
    let lab = Lab::new();
    let r1 = lab.public_host("r1");
    let eim = lab.side("e", NatKind::EimApdf, RouterKind::Home);
    let sym = lab.side("s", NatKind::Symmetric, RouterKind::Home);
    let reflector = Reflector::start(&r1);
    let socket_e = eim.host.udp_socket(0);
    let mapped_e = mapping(&socket_e, reflector.addr);

    let mut state = std::process::id() as u64 | 1;
    for _ in 0..4096 {
        // xorshift: random ports in 1024..=65535, the range masquerade picks from.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = 1024 + (state % 64512) as u16;
        let _ = socket_e.send_to(b"probe", SocketAddr::from((sym.public_ip(), port)));
    }
    let sockets: Vec<UdpSocket> = sym
        .host
        .enter(|| {
            (0..256)
                .map(|_| UdpSocket::bind("0.0.0.0:0").expect("bind"))
                .collect()
        })
        .join()
        .expect("sockets in namespace");
    for socket in &sockets {
        socket.send_to(b"birthday", mapped_e).expect("send");
        socket.set_nonblocking(true).expect("nonblocking");
    }
    let mut buf = [0u8; 100];
    let (n, matched) = socket_e
        .recv_from(&mut buf)
        .expect("one of the 256 punches matched a probed port");
    assert_eq!(&buf[..n], b"birthday");
    assert_eq!(matched.ip(), sym.public_ip());
    socket_e.send_to(b"reply", matched).expect("send reply");
    let started = Instant::now();
    let (n, from) = loop {
        if let Some(received) = sockets.iter().find_map(|s| s.recv_from(&mut buf).ok()) {
            break received;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the reply reached no socket of the symmetric side"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(
        (&buf[..n], from),
        (&b"reply"[..], mapped_e),
        "the matching socket hears back"
    );
}

/// The home router drops an early punch, so the host's later mapping keeps its port
/// (masquerade preserves the source port when it is free); the bare router accepts it
/// into conntrack as a flow to itself, and the host's later flow to the same peer is
/// moved to another port: conntrack poisoning, as the core's punching must expect.
#[test]
fn an_early_punch_poisons_a_bare_router_but_not_a_home_router() {
    let lab = Lab::new();
    let peer = lab.public_host("peer");
    let home = lab.side("h", NatKind::EimApdf, RouterKind::Home);
    let bare = lab.side("b", NatKind::EimApdf, RouterKind::Bare);
    let reflector = Reflector::start(&peer);

    for side in [&home, &bare] {
        let socket = side.host.udp_socket(0);
        let port = socket.local_addr().expect("local address").port();
        let predicted = SocketAddr::from((side.public_ip(), port));
        // The peer punches first, toward the port the host will be mapped to.
        let before = side.unsolicited_packets();
        reflector.send_to(b"early punch", predicted);
        wait_until("the router sees the early punch", || {
            side.unsolicited_packets() > before
        });
        let seen = mapping(&socket, reflector.addr);
        match side.router_kind {
            RouterKind::Home => assert_eq!(
                seen,
                predicted,
                "home router: mapping keeps the source port\n{}",
                side.conntrack()
            ),
            RouterKind::Bare => assert_ne!(
                seen,
                predicted,
                "bare router: the early punch took the port\n{}",
                side.conntrack()
            ),
        }
    }
}

#[test]
fn namespaces_are_removed_on_drop_after_a_panic_and_when_stale() {
    let ours = |names: &[String]| {
        let listed = list_namespaces();
        names.iter().filter(|n| listed.contains(n)).count()
    };

    let lab = Lab::new();
    lab.public_host("g1");
    lab.side("a", NatKind::Symmetric, RouterKind::Bare);
    let names = lab.namespaces();
    assert_eq!(
        names.len(),
        4,
        "switch, public host, router, host: {names:?}"
    );
    assert_eq!(ours(&names), 4);
    drop(lab);
    assert_eq!(ours(&names), 0, "gone after drop: {names:?}");

    // A test that panics while its lab runs a process in a namespace: the lab's drop
    // kills the process and removes the namespaces.
    let (names_tx, names_rx) = std::sync::mpsc::channel();
    let (exit_tx, exit_rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let lab = Lab::new();
        let side = lab.side("a", NatKind::EimApdf, RouterKind::Home);
        let mut sleeper = side
            .host
            .command("sleep")
            .arg("60")
            .spawn()
            .expect("sleep in namespace");
        std::thread::spawn(move || {
            let _ = exit_tx.send(sleeper.wait());
        });
        names_tx.send(lab.namespaces()).expect("send names");
        panic!("a failing test");
    });
    assert!(result.is_err());
    let names = names_rx.recv().expect("names");
    assert_eq!(ours(&names), 0, "gone after a panic: {names:?}");
    let status = exit_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the process in the namespace ended")
        .expect("wait status");
    assert!(!status.success(), "killed, not finished: {status:?}");

    // A namespace of a dead lab process (same prefix, a pid that no longer runs) is
    // swept when the next lab starts.
    let mut dead = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead_pid = dead.id();
    dead.wait().expect("reap");
    let stale = format!("{PREFIX}{dead_pid}-0-sw");
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .expect("ip netns add");
    assert!(status.success());
    let lab = Lab::new();
    assert!(
        !list_namespaces().contains(&stale),
        "stale {stale} swept by Lab::new"
    );
    drop(lab);
}

/// The process side of the harness with today's command line: grapes on two public
/// addresses, a worker relaying to a Nano node stand-in that runs inside the worker's
/// namespace, and `call` from another public host. A grape announces with its own
/// address (as Grenache's do), so the worker runs on grape 1's host.
#[test]
fn grapes_worker_with_stub_and_call_run_in_namespaces() {
    let lab = Lab::new();
    let g1 = lab.public_host("g1");
    let g2 = lab.public_host("g2");
    let client_side = lab.side("b", NatKind::None, RouterKind::Home);

    let grape = |host: &Host, bn: &str| {
        let ip = host.ip.to_string();
        host.spawn(&[
            "grape",
            "--dp",
            "20001",
            "--aph",
            "30001",
            "--bn",
            bn,
            "--bind",
            &ip,
            "--api-bind",
            &ip,
            "--public-ip",
            &ip,
        ])
    };
    let grape1 = grape(&g1, "none");
    let grape2 = grape(&g2, &format!("{}:20001", g1.ip));
    assert_eq!(grape1.field("dht"), format!("{}:20001", g1.ip));
    assert_eq!(grape2.field("api"), format!("{}:30001", g2.ip));

    let (stub_url, _stub) = g1.background(|stop, ready| async move {
        let stub = NanoStub::start(Mode::RsNano).await;
        let _ = ready.send(stub.url());
        let _ = stop.await;
        stub.shutdown().await;
    });
    let grape1_url = format!("http://{}:30001", g1.ip);
    let worker = g1.spawn(&[
        "worker",
        "--announce",
        "nano_rpc",
        "--grape",
        &grape1_url,
        "--nano-rpc",
        &stub_url,
        "--bind",
        &g1.ip.to_string(),
        "--announce-interval",
        "1",
    ]);
    assert!(worker.listening["port"].as_u64().is_some());

    let grape2_url = format!("http://{}:30001", g2.ip);
    let started = Instant::now();
    loop {
        let answer = client_side.host.run(
            &[
                "call",
                "--grape",
                &grape2_url,
                "--timeout",
                "3000",
                "block_count",
            ],
            Duration::from_secs(10),
        );
        // Exit 5: the announcement has not reached grape 2 yet.
        if answer.status.code() == Some(5) && started.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        assert!(answer.status.success(), "{answer:?}");
        let value: serde_json::Value =
            serde_json::from_str(answer.stdout.trim()).expect("JSON answer");
        assert_eq!(value["count"], "3", "{answer:?}");
        break;
    }
}
