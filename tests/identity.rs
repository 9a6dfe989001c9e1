//! A worker's node key is proven in the QUIC handshake (TLS 1.3 raw public keys,
//! RFC 7250): a caller that dials a node id gets that node or a clear refusal, and a
//! caller that dials an address learns the id.

use std::net::SocketAddr;

use nano_connect::protocol::identity::NodeKey;
use nano_connect::service::{Handler, Reply, Request};
use nano_connect::transport::tls::{peer_node_id, server_name};
use nano_connect::transport::{bind_udp, client_endpoint, QuicConfig};
use nano_connect::worker::{RpcServer, RpcServerConfig};

struct Ok200;

impl Handler for Ok200 {
    async fn handle(&self, _request: Request) -> Reply {
        Reply::ok(b"yes".to_vec())
    }
}

async fn worker(key: NodeKey) -> RpcServer {
    RpcServer::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        RpcServerConfig {
            identity: key,
            ..RpcServerConfig::default()
        },
        Ok200,
    )
    .await
    .expect("worker binds")
}

fn caller() -> quinn::Endpoint {
    let socket = bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    client_endpoint(socket, &QuicConfig::default()).expect("client endpoint")
}

#[tokio::test]
async fn the_handshake_proves_the_node_id_and_a_caller_learns_it() {
    let key = NodeKey::from_seed([1; 32]);
    let id = key.node_id();
    let server = worker(key).await;
    let endpoint = caller();
    // Dialing the node id it has: accepted, and the id is readable afterwards.
    let named = endpoint
        .connect(server.local_addr(), &server_name(Some(&id)))
        .expect("connect")
        .await
        .expect("the worker proves the id it was dialed with");
    assert_eq!(peer_node_id(&named), Some(id));
    // Dialing an address alone: any node key is taken, and the caller learns which.
    let anonymous = endpoint
        .connect(server.local_addr(), &server_name(None))
        .expect("connect")
        .await
        .expect("handshake");
    assert_eq!(peer_node_id(&anonymous), Some(id));
}

#[tokio::test]
async fn a_worker_with_another_key_is_refused_naming_both_ids() {
    let server = worker(NodeKey::from_seed([2; 32])).await;
    let presented = NodeKey::from_seed([2; 32]).node_id();
    let expected = NodeKey::from_seed([3; 32]).node_id();
    let e = caller()
        .connect(server.local_addr(), &server_name(Some(&expected)))
        .expect("connect")
        .await
        .expect_err("another node's key must not pass for the expected one");
    let text = e.to_string();
    assert!(
        text.contains(&presented.to_string()) && text.contains(&expected.to_string()),
        "the error names both ids: {text}"
    );
}

// --- Records and node ids through hostile brokers and stale hints, in one process ---

mod hostile {
    //! A broker that lies: it relays lists from a real broker (the records are genuine)
    //! but introduces clients to a QUIC server of its own, or serves records it altered,
    //! forged or kept past their expiry.

    use std::net::{SocketAddr, UdpSocket};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use nano_connect::protocol::broker::{
        decode, encode_broker, padded, BrokerMessage, Datagram, Role,
    };
    use nano_connect::protocol::record::WireRecord;

    /// What the hostile broker answers a `List` with.
    pub enum Lists {
        /// The real broker's records, relayed.
        Relayed(SocketAddr),
        /// These.
        These(Vec<WireRecord>),
    }

    /// Runs the hostile broker on a thread until the process ends; returns its address.
    /// `Connect`s are answered with an introduction to `impostor` (its own QUIC server)
    /// carrying the first listed record, so the client expects that record's node.
    pub fn start(lists: Lists, impostor: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let connects = Arc::new(AtomicU64::new(0));
        let counted = connects.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut last_records: Vec<WireRecord> = Vec::new();
            for _ in 0..10_000 {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(Datagram::Broker(message)) = decode(&buf[..len]) else {
                    continue;
                };
                let answer = match message {
                    BrokerMessage::Ping { tx } => BrokerMessage::Pong {
                        tx,
                        reflexive: from,
                        alt: None,
                    },
                    BrokerMessage::List { tx, key, skip, .. } => {
                        let records = match &lists {
                            Lists::These(records) => records.clone(),
                            Lists::Relayed(real) => relay_list(*real, &key),
                        };
                        last_records = records.clone();
                        // Pages of two records, to fit a datagram.
                        let total = records.len() as u16;
                        let page = records
                            .into_iter()
                            .skip(usize::from(skip))
                            .take(2)
                            .collect();
                        BrokerMessage::Listed {
                            tx,
                            total,
                            records: page,
                        }
                    }
                    BrokerMessage::Connect { tx, .. } => {
                        counted.fetch_add(1, Ordering::Relaxed);
                        BrokerMessage::Introduce {
                            tx,
                            role: Role::Dial,
                            peer_reflexive: impostor,
                            peer_local: vec![],
                            nonce: [9; 16],
                            delay_ms: 0,
                            peer_symmetric: false,
                            record: last_records.first().cloned(),
                        }
                    }
                    _ => continue,
                };
                let _ = socket.send_to(&encode_broker(&answer), from);
            }
        });
        (addr, connects)
    }

    /// The records of `key` at the real broker `real`.
    pub fn relay_list(real: SocketAddr, key: &str) -> Vec<WireRecord> {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let request = padded(BrokerMessage::List {
            tx: 1,
            key: key.into(),
            skip: 0,
            pad: vec![],
        });
        socket.send_to(&encode_broker(&request), real).unwrap();
        let mut buf = [0u8; 2048];
        let Ok((len, _)) = socket.recv_from(&mut buf) else {
            return Vec::new();
        };
        match decode(&buf[..len]) {
            Ok(Datagram::Broker(BrokerMessage::Listed { records, .. })) => records,
            _ => Vec::new(),
        }
    }
}

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nano_connect::broker::rendezvous::RendezvousConfig;
use nano_connect::broker::Broker;
use nano_connect::protocol::record::{Record, RecordBody, Via, RECORD_VERSION};
use nano_connect::route::{CallError, Discovery, RpcClient, RpcClientConfig};
use nano_connect::worker::{BrokerChoice, PresenceEvent, WorkerBuilder};

const KEY: &str = "fib";

/// Counts the requests it answers, always with a lie.
struct Liar(Arc<AtomicU64>);

impl Handler for Liar {
    async fn handle(&self, _request: Request) -> Reply {
        self.0.fetch_add(1, Ordering::Relaxed);
        Reply::ok(b"[4,8,15,16,23,42]".to_vec())
    }
}

/// A real broker and an honest worker registered with it (as if behind a NAT).
async fn broker_and_worker() -> (Broker, nano_connect::worker::Worker) {
    let broker = Broker::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        RendezvousConfig::default(),
    )
    .expect("broker");
    let (registered, mut on) = tokio::sync::mpsc::unbounded_channel();
    let worker = WorkerBuilder::new(KEY)
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .brokers(BrokerChoice::Fixed(vec![broker.addr()]))
        .presence(|p| p.assume_nat = true)
        .on_event(move |e| {
            if let PresenceEvent::Registered { .. } = e {
                let _ = registered.send(());
            }
        })
        .spawn(nano_connect::fibonacci::FibonacciService)
        .await
        .expect("worker");
    tokio::time::timeout(Duration::from_secs(5), on.recv())
        .await
        .expect("registered in time");
    (broker, worker)
}

/// The records the broker at `broker` lists for [`KEY`] (asked from a blocking thread,
/// so that the broker on this runtime can answer).
async fn list_of(broker: SocketAddr) -> Vec<nano_connect::protocol::record::WireRecord> {
    tokio::task::spawn_blocking(move || hostile::relay_list(broker, KEY))
        .await
        .expect("list thread")
}

fn client_of(broker: SocketAddr) -> RpcClient {
    RpcClient::new(
        Discovery::Brokers(vec![broker]),
        RpcClientConfig {
            request_timeout: Duration::from_secs(5),
            punch_deadline: Duration::from_millis(300),
            ..RpcClientConfig::default()
        },
    )
    .expect("client")
}

#[tokio::test]
async fn a_broker_that_answers_in_the_workers_place_is_refused_naming_both_ids() {
    let (broker, worker) = broker_and_worker().await;
    let answered = Arc::new(AtomicU64::new(0));
    let impostor_key = NodeKey::from_seed([66; 32]);
    let impostor = RpcServer::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        RpcServerConfig {
            identity: impostor_key.clone(),
            ..RpcServerConfig::default()
        },
        Liar(answered.clone()),
    )
    .await
    .expect("impostor");
    // While the honest broker the worker's signed record names is up, a client sent to
    // the hostile one is still answered by the worker, never by the impostor.
    let (hostile, connects) = hostile::start(
        hostile::Lists::Relayed(broker.addr()),
        impostor.local_addr(),
    );
    let answer = client_of(hostile)
        .request(KEY, br#"{"length":5}"#)
        .await
        .expect("answered through the honest broker the record names");
    assert_eq!(answer.node, worker.node_id());
    assert_eq!(answer.body, b"[0,1,1,2,3]");
    assert!(
        connects.load(Ordering::Relaxed) >= 1,
        "the client asked the hostile broker first"
    );
    // With the honest broker gone, only the impostor is left: refused, both ids named.
    let records = list_of(broker.addr()).await;
    assert_eq!(records.len(), 1);
    broker.shutdown().await;
    let (hostile, _) = hostile::start(hostile::Lists::These(records), impostor.local_addr());
    let e = client_of(hostile)
        .request(KEY, br#"{"length":5}"#)
        .await
        .expect_err("the impostor must not pass for the worker");
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "proved node id {}, not the expected {}",
            impostor_key.node_id(),
            worker.node_id()
        )),
        "the error names the impostor and the expected worker: {text}"
    );
    assert_eq!(
        answered.load(Ordering::Relaxed),
        0,
        "no request reached the impostor"
    );
}

#[tokio::test]
async fn forged_altered_replayed_and_foreign_records_are_ignored() {
    let (broker, worker) = broker_and_worker().await;
    // The worker's genuine record, as its broker lists it.
    let genuine = list_of(broker.addr())
        .await
        .into_iter()
        .next()
        .expect("the broker lists the worker");
    let mut altered = genuine.clone();
    altered.v = String::from_utf8(altered.v)
        .unwrap()
        .replace("127.0.0.1", "127.0.0.9")
        .into_bytes();
    let mut forged = genuine.clone();
    forged.sig = [7; 64];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let old_key = NodeKey::from_seed([77; 32]);
    let body = |exp: u64| RecordBody {
        v: RECORD_VERSION,
        exp,
        via: vec![Via {
            broker: broker.addr(),
            reflexive: worker.local_addr(),
        }],
        ..RecordBody::default()
    };
    // Signed an hour ago, for five minutes: a replay of a record whose worker left.
    let replayed = Record::sign(&old_key, KEY, now - 3_600_000, body(now - 3_300_000))
        .unwrap()
        .wire;
    let foreign = Record::sign(&old_key, "echo", now, body(now + 60_000))
        .unwrap()
        .wire;
    let bad = vec![altered, forged, replayed, foreign];
    let (hostile, connects) = hostile::start(hostile::Lists::These(bad.clone()), broker.addr());
    let client = client_of(hostile);
    assert!(
        client.candidates(KEY).await.expect("lookup").is_empty(),
        "no bad record is believed"
    );
    let e = client
        .request(KEY, br#"{"length":5}"#)
        .await
        .expect_err("nobody to ask");
    assert!(matches!(e, CallError::NoWorkers { .. }), "{e}");
    assert_eq!(connects.load(Ordering::Relaxed), 0);
    // With the genuine record among them, only it is used.
    let mut mixed = bad;
    mixed.push(genuine);
    let (hostile, _) = hostile::start(hostile::Lists::These(mixed), broker.addr());
    let found = client_of(hostile).candidates(KEY).await.expect("lookup");
    assert_eq!(
        found.iter().filter_map(|c| c.node).collect::<Vec<_>>(),
        vec![worker.node_id()]
    );
}

// --- The same through the command line ---

use support::mesh;

mod support;

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_names_one_node_across_restarts_and_call_worker_reaches_only_it() {
    let grape = tokio::task::block_in_place(|| mesh::grape(None, 60.0));
    let start = |key: &std::path::Path| {
        let key = key.to_string_lossy().into_owned();
        tokio::task::block_in_place(|| {
            mesh::worker(&grape.url, KEY, &["--service", "fibonacci", "--key", &key])
        })
    };
    let key_a = support::scratch::path("a.key");
    let (mut first, _) = start(&key_a);
    let node_a = first.field("node_id");
    first.kill();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_a).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is private");
    }
    let (worker_a, port_a) = start(&key_a);
    assert_eq!(
        worker_a.field("node_id"),
        node_a,
        "same key file, same node"
    );
    // Another node's id (its worker ran once and left).
    let key_b = support::scratch::path("b.key");
    let (mut b, _) = start(&key_b);
    let node_b = b.field("node_id");
    b.kill();
    assert_ne!(node_a, node_b);
    mesh::wait_announced(&grape.url, KEY, &[port_a]).await;

    let call = |extra: Vec<String>| {
        let mut args: Vec<String> = ["call", "--grape", &grape.url, "--service", KEY, "-v"]
            .into_iter()
            .map(String::from)
            .collect();
        args.extend(extra);
        args.extend(["--json".into(), r#"{"length":5}"#.into()]);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            mesh::run(&args, "").await
        }
    };
    // Named by its id: reached, and the -v line names it.
    let output = call(vec!["--worker".into(), node_a.clone()]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "A={node_a} B={node_b}: {}",
        stderr_of(&output)
    );
    assert!(stderr_of(&output).contains(&format!("node={node_a}")));
    // Another node's id: the only worker found proves another key; refused, both named.
    let output = call(vec!["--worker".into(), node_b.clone()]).await;
    assert_ne!(output.status.code(), Some(0));
    let text = stderr_of(&output);
    assert!(
        text.contains(&format!(
            "proved node id {node_a}, not the expected {node_b}"
        )),
        "{text}"
    );
    // A stale cache that says B is where A now listens: dialed as B, refused, named.
    let cache = support::scratch::path("poisoned.json");
    std::fs::write(
        &cache,
        serde_json::json!([{
            "key": KEY,
            "node": node_b,
            "addrs": [format!("127.0.0.1:{port_a}")],
            "brokers": [],
            "seen_ms": 1_795_317_760_000u64,
        }])
        .to_string(),
    )
    .unwrap();
    let output = call(vec![
        "--worker".into(),
        node_b.clone(),
        "--cache".into(),
        cache.to_string_lossy().into_owned(),
    ])
    .await;
    assert_ne!(output.status.code(), Some(0));
    let text = stderr_of(&output);
    assert!(
        text.contains(&format!(
            "proved node id {node_a}, not the expected {node_b}"
        )),
        "{text}"
    );
}
