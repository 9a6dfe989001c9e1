//! Helpers for the integration tests: a private network of grapes on 127.0.0.1, an HTTP
//! client that speaks like grenache-nodejs-link, and bounded polling.
//!
//! Everything binds 127.0.0.1 with port 0 and bootstraps explicitly from the first grape,
//! so no test ever contacts the public mainline network.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use grape::{Grape, GrapeConfig};
use serde_json::{json, Value};

/// A config for a grape on loopback with free ports and the given bootstrap nodes.
pub fn loopback_config(bootstrap: Vec<String>) -> GrapeConfig {
    GrapeConfig {
        bind: Ipv4Addr::LOCALHOST,
        dht_port: 0,
        api_port: 0,
        api_bind: Ipv4Addr::LOCALHOST.into(),
        bootstrap: Some(bootstrap),
        ..GrapeConfig::default()
    }
}

/// Starts `n` grapes: the first with no bootstrap node, the others bootstrapping from it;
/// `tweak` adjusts each config. Returns once every grape reports itself bootstrapped.
///
/// One grape is not a network: mainline never stores at itself, so a lone grape refuses
/// announces and puts.
pub async fn network(n: usize, tweak: impl Fn(&mut GrapeConfig)) -> Vec<Grape> {
    assert!(n >= 1);
    let mut first_config = loopback_config(vec![]);
    tweak(&mut first_config);
    let first = Grape::start(first_config).await.expect("first grape");
    let bootstrap = vec![first.dht_addr().to_string()];
    let mut grapes = vec![first];
    for _ in 1..n {
        let mut config = loopback_config(bootstrap.clone());
        tweak(&mut config);
        grapes.push(Grape::start(config).await.expect("grape"));
    }
    for (i, grape) in grapes.iter().enumerate() {
        poll_until(
            &format!("grape {i} bootstrapped"),
            Duration::from_secs(20),
            || async { grape.bootstrapped().await.then_some(()) },
        )
        .await;
    }
    grapes
}

/// Shuts every grape down.
pub async fn shutdown(grapes: Vec<Grape>) {
    for grape in grapes {
        grape.shutdown().await;
    }
}

/// Calls `check` until it returns `Some`, at most 200 times and for at most `limit`,
/// 50 ms apart; panics with `what` if it never does.
pub async fn poll_until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    for _ in 0..200 {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {:?} waiting for {what}", start.elapsed());
}

/// Posts to a grape's API as grenache-nodejs-link does (`request.post` with `json: true`:
/// a JSON body `{rid, data}` and `Content-Type: application/json`). Returns the status
/// and the raw body.
pub async fn post_raw(api: SocketAddr, path: &str, data: Value) -> (u16, String) {
    let body = json!({"rid": "5f1e3b0c-9d7a-4a51-8f0e-3f1c2b7d9e01", "data": data});
    let response = reqwest::Client::new()
        .post(format!("http://{api}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("HTTP request to the grape");
    let status = response.status().as_u16();
    (status, response.text().await.expect("HTTP body"))
}

/// [`post_raw`], expecting HTTP 200, parsing the answer as JSON.
pub async fn post(api: SocketAddr, path: &str, data: Value) -> Value {
    let (status, body) = post_raw(api, path, data).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON answer")
}

/// Looks `key` up through a grape's HTTP API; the answer must be an array of strings
/// (grenache-nodejs-link treats anything else as an error).
pub async fn lookup(api: SocketAddr, key: &str) -> Vec<String> {
    let answer = post(api, "/lookup", json!(key)).await;
    let peers = answer
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {answer}"));
    peers
        .iter()
        .map(|p| p.as_str().expect("peer string").to_owned())
        .collect()
}

/// Announces `key` with `port` through a grape's HTTP API, expecting a number back.
pub async fn announce(api: SocketAddr, key: &str, port: u16) {
    let answer = post(api, "/announce", json!([key, port])).await;
    assert!(answer.is_number(), "announce answered {answer}");
}

/// `"127.0.0.1:{port}"`, how a loopback announce shows up in lookups.
pub fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}
