//! Every error answer of the HTTP API, with its exact body and status, over real HTTP.

mod common;

use std::time::Duration;

use common::{loopback_config, network, post_raw, shutdown};
use grape::Grape;
use serde_json::{json, Value};

/// Asserts the exact status and body (a JSON string) of one request.
async fn expect(api: std::net::SocketAddr, path: &str, data: Value, status: u16, body: &str) {
    let (got_status, got_body) = post_raw(api, path, data.clone()).await;
    assert_eq!(
        (got_status, got_body.as_str()),
        (status, format!("\"{body}\"").as_str()),
        "{path} {data}"
    );
}

#[tokio::test]
async fn validation_errors_have_grenache_bodies() {
    let grapes = network(2, |_| {}).await;
    let api = grapes[0].api_addr();

    // /announce
    for data in [
        json!("svc"),
        json!(null),
        json!([]),
        json!(["", 80]),
        json!([5, 80]),
    ] {
        expect(api, "/announce", data, 200, "ERR_GRAPE_ANNOUNCE").await;
    }
    for data in [
        json!(["svc"]),
        json!(["svc", 0]),
        json!(["svc", 65536]),
        json!(["svc", -1]),
        json!(["svc", 80.5]),
        json!(["svc", "80"]),
    ] {
        expect(api, "/announce", data, 200, "ERR_GRAPE_SERVICE_PORT").await;
    }

    // /lookup
    for data in [json!(""), json!(null), json!(5), json!(["svc"])] {
        expect(api, "/lookup", data, 200, "ERR_GRAPE_LOOKUP").await;
    }

    // /put
    for data in [
        json!("v"),
        json!({}),
        json!({"v": 5}),
        json!({"v": "x", "seq": 1}),
        json!({"v": "x", "k": "00".repeat(32), "sig": "00".repeat(64)}), // no seq
    ] {
        expect(api, "/put", data, 200, "ERR_GRAPE_PUT").await;
    }
    for data in [
        json!({"v": "x", "k": "zz", "sig": "00".repeat(64), "seq": 1}),
        json!({"v": "x", "k": "00".repeat(32), "seq": 1}), // no signature
        json!({"v": "x", "k": "00".repeat(32), "sig": "00".repeat(64), "seq": 1}),
    ] {
        expect(api, "/put", data, 200, "ERR_GRAPE_PUT_SIG").await;
    }
    expect(
        api,
        "/put",
        json!({"v": "x".repeat(1001)}),
        200,
        "ERR_GRAPE_PUT_TOO_BIG",
    )
    .await;

    // /get
    for data in [
        json!("xyz"),
        json!("00".repeat(19)),
        json!(5),
        json!(null),
        json!({"hash": "xyz"}),
        json!({}),
    ] {
        expect(api, "/get", data, 200, "ERR_GRAPE_HASH_FORMAT").await;
    }

    // Unknown paths.
    for path in ["/", "/nope", "/lookup/x", "/announces"] {
        expect(api, path, json!("svc"), 200, "ERR_REQ_NOTFOUND").await;
    }

    shutdown(grapes).await;
}

#[tokio::test]
async fn body_errors_have_proper_statuses() {
    let grapes = network(2, |_| {}).await;
    let url = format!("http://{}/lookup", grapes[0].api_addr());
    let client = reqwest::Client::new();

    let response = client
        .post(&url)
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("application/json")
    );
    assert_eq!(response.text().await.expect("body"), "\"ERR_GRAPE_BODY\"");

    let big = json!({"data": "x".repeat(70 * 1024)}).to_string();
    let response = client.post(&url).body(big).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(
        response.text().await.expect("body"),
        "\"ERR_GRAPE_BODY_TOO_LARGE\""
    );

    // Just under the cap is accepted: a long name is a valid name that nobody announced.
    let name = "x".repeat(60 * 1024);
    let response = client
        .post(&url)
        .body(json!({"data": name}).to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.expect("body"), "[]");
    shutdown(grapes).await;
}

/// A lone grape (no other node) cannot store anything: mainline never stores at itself.
#[tokio::test]
async fn a_lone_grape_serves_what_was_announced_and_put_through_it() {
    // mainline never stores at itself; the grape's own store answers (as Grenache's
    // lone grape does), and says 0 nodes stored the announce.
    let grape = Grape::start(loopback_config(vec![])).await.expect("grape");
    let api = grape.api_addr();
    let (status, body) = post_raw(api, "/announce", json!(["svc", 80])).await;
    assert_eq!((status, body.as_str()), (200, "0"));
    let start = std::time::Instant::now();
    let (status, body) = post_raw(api, "/lookup", json!("svc")).await;
    assert_eq!((status, body.as_str()), (200, "[\"127.0.0.1:80\"]"));
    assert!(start.elapsed() < Duration::from_secs(2));
    let (status, target) = post_raw(api, "/put", json!({"v": "x"})).await;
    assert_eq!(status, 200, "{target}");
    let target: String = serde_json::from_str(&target).expect("a target");
    let (_, item) = post_raw(api, "/get", json!(target)).await;
    let item: Value = serde_json::from_str(&item).expect("JSON");
    assert_eq!(item["v"], "x");
    // Nothing else is found.
    let (_, body) = post_raw(api, "/lookup", json!("other")).await;
    assert_eq!(body, "[]");
    grape.shutdown().await;
}
