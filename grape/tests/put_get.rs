//! BEP 44 put and get through the HTTP API, across real grapes on 127.0.0.1.

mod common;

use std::time::Duration;

use common::{network, poll_until, post, shutdown};
use ed25519_dalek::Signer;
use mainline::{MutableItem, SigningKey};
use serde_json::{json, Value};

/// Polls `/get` on `api` until the answer is not `null`.
async fn get_until_found(api: std::net::SocketAddr, data: Value) -> Value {
    poll_until("item found", Duration::from_secs(10), || {
        let data = data.clone();
        async move {
            let answer = post(api, "/get", data).await;
            (!answer.is_null()).then_some(answer)
        }
    })
    .await
}

/// The test's own signing, as a Grenache client does it: ed25519 over the bencoded
/// dictionary `{salt, seq, v}` without its outer `d`/`e` (BEP 44).
fn sign(key: &SigningKey, v: &str, seq: i64, salt: Option<&str>) -> String {
    let mut signable = String::new();
    if let Some(salt) = salt {
        signable.push_str(&format!("4:salt{}:{salt}", salt.len()));
    }
    signable.push_str(&format!("3:seqi{seq}e1:v{}:{v}", v.len()));
    hex::encode(key.sign(signable.as_bytes()).to_bytes())
}

fn mutable(key: &SigningKey, v: &str, seq: i64, salt: Option<&str>) -> Value {
    let mut data = json!({
        "k": hex::encode(key.verifying_key().to_bytes()),
        "sig": sign(key, v, seq, salt),
        "seq": seq,
        "v": v,
    });
    if let Some(salt) = salt {
        data["salt"] = json!(salt);
    }
    data
}

/// An immutable put through one grape is fetched through every grape; the target is
/// SHA-1 of the bencoded value (BEP 44's own test vector).
#[tokio::test]
async fn immutable_round_trip() {
    let grapes = network(3, |_| {}).await;
    let target = post(grapes[0].api_addr(), "/put", json!({"v": "Hello World!"})).await;
    assert_eq!(target, json!("e5f96f6f38320f0f33959cb4d3d656452117aadb"));

    for grape in &grapes {
        let item = get_until_found(grape.api_addr(), target.clone()).await;
        assert_eq!(item, json!({"id": target, "v": "Hello World!"}));
        // The object form works too.
        let item = post(grape.api_addr(), "/get", json!({"hash": target})).await;
        assert_eq!(item["v"], json!("Hello World!"));
    }

    // Putting the same value again is fine and gives the same target.
    let again = post(grapes[1].api_addr(), "/put", json!({"v": "Hello World!"})).await;
    assert_eq!(again, target);

    // An absent item is null.
    let absent = post(grapes[1].api_addr(), "/get", json!("00".repeat(20))).await;
    assert_eq!(absent, Value::Null);
    shutdown(grapes).await;
}

/// A mutable item signed by the test: put, get (by target through the grape that put it,
/// by key through another), update with `seq`/`cas`, and the refusals of an older `seq`,
/// a wrong `cas` and a bad signature.
#[tokio::test]
async fn mutable_round_trip() {
    let grapes = network(3, |_| {}).await;
    let (a, b) = (grapes[0].api_addr(), grapes[1].api_addr());
    let key = SigningKey::from_bytes(&[42; 32]);
    let k = hex::encode(key.verifying_key().to_bytes());
    let expected_target = MutableItem::target_from_key(&key.verifying_key().to_bytes(), None);

    let target = post(a, "/put", mutable(&key, "Hello World!", 1, None)).await;
    assert_eq!(target, json!(expected_target.to_string()));

    // By target alone through the grape that put it (it remembers the key).
    let item = get_until_found(a, target.clone()).await;
    assert_eq!(
        item,
        json!({
            "id": target,
            "v": "Hello World!",
            "k": k,
            "sig": sign(&key, "Hello World!", 1, None),
            "seq": 1,
        })
    );
    // Through another grape, by key.
    let item = get_until_found(b, json!({"hash": target, "k": k})).await;
    assert_eq!(item["v"], json!("Hello World!"));
    let item = get_until_found(b, json!({"k": k})).await;
    assert_eq!(item["seq"], json!(1));
    // By target alone through a grape that never saw the key: mainline cannot fetch a
    // mutable item without its key, so this is null (a documented limitation).
    let unknown = post(grapes[2].api_addr(), "/get", target.clone()).await;
    assert_eq!(unknown, Value::Null);

    // Update with seq 2 and cas 1.
    let mut update = mutable(&key, "second", 2, None);
    update["cas"] = json!(1);
    assert_eq!(post(a, "/put", update).await, target);
    poll_until("seq 2 visible", Duration::from_secs(10), || async {
        let item = post(b, "/get", json!({"k": k})).await;
        (item["seq"] == json!(2) && item["v"] == json!("second")).then_some(())
    })
    .await;

    // An older seq is refused by the storing nodes.
    let older = post(b, "/put", mutable(&key, "older", 1, None)).await;
    assert_eq!(older, json!("ERR_GRAPE_PUT_SEQ"));
    // A cas that does not match the stored seq (2) is refused.
    let mut wrong_cas = mutable(&key, "third", 3, None);
    wrong_cas["cas"] = json!(1);
    assert_eq!(post(b, "/put", wrong_cas).await, json!("ERR_GRAPE_PUT_CAS"));
    // A signature over something else is refused before it goes out.
    let mut forged = mutable(&key, "third", 3, None);
    forged["v"] = json!("forged");
    assert_eq!(post(b, "/put", forged).await, json!("ERR_GRAPE_PUT_SIG"));
    // Still the second value.
    let item = post(a, "/get", target.clone()).await;
    assert_eq!(item["v"], json!("second"));
    shutdown(grapes).await;
}

/// A salted mutable item has its own target, SHA-1(k ‖ salt), and comes back with its
/// salt.
#[tokio::test]
async fn salted_mutable_round_trip() {
    let grapes = network(3, |_| {}).await;
    let key = SigningKey::from_bytes(&[43; 32]);
    let k_bytes = key.verifying_key().to_bytes();
    let k = hex::encode(k_bytes);

    let target = post(
        grapes[0].api_addr(),
        "/put",
        mutable(&key, "profile data", 7, Some("profile")),
    )
    .await;
    let expected = MutableItem::target_from_key(&k_bytes, Some(b"profile"));
    assert_eq!(target, json!(expected.to_string()));

    // Grenache's form: hash and salt, through the grape that put it.
    let item = get_until_found(
        grapes[0].api_addr(),
        json!({"hash": target, "salt": "profile"}),
    )
    .await;
    assert_eq!(item["v"], json!("profile data"));
    assert_eq!(item["salt"], json!("profile"));
    assert_eq!(item["seq"], json!(7));
    // Through another grape with the key.
    let item = get_until_found(
        grapes[1].api_addr(),
        json!({"hash": target, "k": k, "salt": "profile"}),
    )
    .await;
    assert_eq!(item["v"], json!("profile data"));
    // The wrong salt names another target: nothing there.
    let other = post(
        grapes[1].api_addr(),
        "/get",
        json!({"k": k, "salt": "other"}),
    )
    .await;
    assert_eq!(other, Value::Null);
    shutdown(grapes).await;
}
