//! Raw HTTP/1.1 bytes to the grape's API, in process.
//!
//! The bytes go through an in-memory stream to hyper's HTTP/1.1 server, built as
//! `grape::http::serve` builds it (timer, header-read timeout, keep-alive, upgrades), and
//! from there to [`grape::http::router`] with the client's address as `ConnectInfo`
//! (a different one per input, so that the per-source quotas neither hide the DHT path
//! nor go untried), over a lone DHT node bound to loopback that knows no other node, so
//! nothing leaves the host. One difference: the connection takes half-closes, since the
//! fuzz client ends its input by closing its side and then reads the answers. Whatever
//! the bytes, the connection must end, every answer must be an HTTP response, and none
//! may be a 500 (a handler that failed).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// What every input shares: a runtime and the router over one lone DHT node.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

/// The header-read timeout of the connection (the grape's default; an input ends long
/// before it).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one input may take before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(10);

/// Lookup and get deadline of the router: a lone node has nobody to wait for, so it
/// answers from what was announced and put through it.
const LOOKUP_DEADLINE: Duration = Duration::ZERO;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let config = grape::GrapeConfig {
            bind: std::net::Ipv4Addr::LOCALHOST,
            dht_port: 0,
            bootstrap: Some(vec![]),
            ..grape::GrapeConfig::default()
        };
        let dht = runtime
            .block_on(grape::GrapeDht::start(&config))
            .expect("a DHT node on loopback");
        spin(dht.local_addr());
        let router = grape::http::router(Arc::new(dht), LOOKUP_DEADLINE);
        Fixture { runtime, router }
    })
}

/// Keeps the lone DHT node's actor turning: mainline's actor takes one command, then
/// waits up to 50 ms (its socket's read timeout) for a datagram before the next, so an
/// announce or put on a node nobody talks to takes a few of those waits. An empty
/// datagram on loopback every [`SPIN_INTERVAL`] ends each wait at once (mainline drops
/// it as malformed).
fn spin(dht: std::net::SocketAddrV4) {
    let Ok(socket) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return;
    };
    std::thread::spawn(move || {
        for _ in 0..MAX_SPINS {
            let _ = socket.send_to(&[], dht);
            std::thread::sleep(SPIN_INTERVAL);
        }
    });
}

/// Time between the datagrams of [`spin`].
const SPIN_INTERVAL: Duration = Duration::from_micros(200);

/// Datagrams [`spin`] sends at most: a day's worth, longer than any campaign.
const MAX_SPINS: u64 = 24 * 3600 * 5000;

/// One connection carrying `data` (see the module doc).
pub fn grape_http(data: &[u8]) {
    static NEXT_PEER: AtomicU32 = AtomicU32::new(0);
    let fixture = fixture();
    let n = NEXT_PEER.fetch_add(1, Ordering::Relaxed);
    let peer = SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 40000));
    let answer = fixture.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let service = fixture.router.clone().map_request(
            move |request: hyper::Request<hyper::body::Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        );
        let service = TowerToHyperService::new(service);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .keep_alive(true)
            .half_close(true);
        let connection = builder
            .serve_connection(TokioIo::new(server), service)
            .with_upgrades();
        let talk = async {
            // The server may close before it read everything (a bad request): a write
            // error then is the connection ending, not a finding.
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        };
        let both = async { tokio::join!(connection, talk) };
        match tokio::time::timeout(DEADLINE, both).await {
            Ok((_, answer)) => answer,
            Err(_) => panic!("the grape's connection did not end within {DEADLINE:?}"),
        }
    });
    if answer.is_empty() {
        return;
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "),
        "not an HTTP response: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(64)])
    );
    let text = String::from_utf8_lossy(&answer);
    for line in text.split("\r\n").filter(|l| l.starts_with("HTTP/1.")) {
        let status = line.get(9..12).unwrap_or("");
        assert!(!status.starts_with('5'), "the grape answered {line:?}");
    }
}
