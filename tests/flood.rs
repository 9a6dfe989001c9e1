//! A grape keeps what it stores fair under a flood (issue "proven under attack", defect
//! 1): about 2,100 announces of new keys, through the HTTP API or as raw BEP 5 datagrams
//! on the DHT port, used to push mainline's LRU of 2,000 infohashes empty of a live
//! worker for minutes. Now each source may make a grape store 64 distinct keys per window
//! through the API and 256 on the DHT port, and nothing is evicted to make room.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use futures::StreamExt;
use support::mesh::{self, lookup, two_grapes};

const KEY: &str = "nano_rpc";

/// Raw announces sent: past mainline's 2,000-infohash LRU, and past a source's burst.
const FLOOD: u32 = 4_200;

/// A bencoded KRPC query (BEP 5) with transaction id `t` (4 bytes, as mainline wants).
fn query(t: &[u8; 4], q: &str, args: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"d1:ad".to_vec();
    for (k, v) in args {
        out.extend(format!("{}:{k}", k.len()).as_bytes());
        if let Some(n) = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.strip_prefix('i'))
        {
            out.extend(format!("i{n}").as_bytes());
        } else {
            out.extend(format!("{}:", v.len()).as_bytes());
            out.extend(*v);
        }
    }
    out.extend(format!("e1:q{}:{q}1:t4:", q.len()).as_bytes());
    out.extend(t);
    out.extend(b"1:y1:qe");
    out
}

/// The `token` of a get_peers answer.
fn token_of(answer: &[u8]) -> Option<Vec<u8>> {
    let at = answer.windows(7).position(|w| w == b"5:token")? + 7;
    let rest = &answer[at..];
    let colon = rest.iter().position(|b| *b == b':')?;
    let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    rest.get(colon + 1..colon + 1 + len).map(<[u8]>::to_vec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_keys_does_not_push_a_live_worker_out() {
    let (a, b) = tokio::task::block_in_place(|| two_grapes(120.0));
    let (_worker, port) =
        tokio::task::block_in_place(|| mesh::worker(&a.url, KEY, &["--service", "fibonacci"]));
    mesh::wait_announced(&b.url, KEY, &[port]).await;
    let worker = format!("127.0.0.1:{port}");

    // 1. Through the HTTP API of grape A: 2,100 announces of distinct keys.
    let http = reqwest::Client::new();
    let answers: Vec<String> = futures::stream::iter(0..2_100)
        .map(|i| {
            let http = http.clone();
            let url = format!("{}/announce", a.url);
            async move {
                let body = serde_json::json!({"data": [format!("flood-{i}"), 4000 + i % 1000]});
                match http.post(&url).json(&body).send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let refused = answers
        .iter()
        .filter(|a| a.contains("ERR_GRAPE_QUOTA"))
        .count();
    assert!(
        refused >= 2_000,
        "{refused} of 2100 refused: {:?}",
        &answers[..3]
    );

    // 2. On grape B's DHT port: one token, then 4,200 announce_peer of distinct infohashes.
    let dht: SocketAddr = b.dht.parse().unwrap();
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    flood
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let id = [7u8; 20];
    flood
        .send_to(
            &query(
                b"tok0",
                "get_peers",
                &[("id", &id), ("info_hash", &[1u8; 20])],
            ),
            dht,
        )
        .unwrap();
    let mut buf = [0u8; 1500];
    let (len, _) = flood.recv_from(&mut buf).expect("a get_peers answer");
    let token = token_of(&buf[..len]).expect("a token");
    for i in 0u32..FLOOD {
        let mut infohash = [0u8; 20];
        infohash[..4].copy_from_slice(&i.to_be_bytes());
        let message = query(
            &i.to_be_bytes(),
            "announce_peer",
            &[
                ("id", &id),
                ("info_hash", &infohash),
                ("port", b"i6881"),
                ("token", &token),
            ],
        );
        flood.send_to(&message, dht).unwrap();
    }

    // The worker is still found through both grapes, and a call reaches it.
    for grape in [&a.url, &b.url] {
        let found = lookup(grape, KEY).await;
        assert!(found.contains(&worker), "{grape}: {found:?}");
    }
    let output = mesh::run(
        &[
            "call",
            "--grape",
            &b.url,
            "--service",
            KEY,
            "--json",
            r#"{"length":3}"#,
        ],
        "",
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
