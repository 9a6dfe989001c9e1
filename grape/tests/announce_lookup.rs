//! Announce and lookup across real grapes on 127.0.0.1, through the HTTP API as
//! grenache-nodejs-link would call it, and the expiry that time slots give.

mod common;

use std::time::{Duration, Instant};

use common::{announce, local, lookup, network, poll_until, post, shutdown};
use grape::SlotSchedule;
use serde_json::json;

/// An announce through one grape's HTTP API is found by lookups through every grape's,
/// including the one it was announced through.
#[tokio::test]
async fn announce_through_one_grape_lookup_through_all() {
    let grapes = network(3, |_| {}).await;
    let apis: Vec<_> = grapes.iter().map(|g| g.api_addr()).collect();

    announce(apis[0], "nano_rpc", 41001).await;

    for (i, api) in apis.iter().enumerate() {
        let peers = poll_until(
            &format!("lookup through grape {i}"),
            Duration::from_secs(10),
            || async {
                let peers = lookup(*api, "nano_rpc").await;
                peers.contains(&local(41001)).then_some(peers)
            },
        )
        .await;
        assert_eq!(peers, vec![local(41001)], "grape {i}");
    }

    // Another key is not found.
    assert_eq!(lookup(apis[1], "other_service").await, Vec::<String>::new());
    shutdown(grapes).await;
}

/// Two grapes are enough (the contract's `grape --bn` pair): an announce through either
/// is found through both, including through the grape that stores it.
#[tokio::test]
async fn two_grapes_suffice() {
    let grapes = network(2, |_| {}).await;
    let apis: Vec<_> = grapes.iter().map(|g| g.api_addr()).collect();
    announce(apis[0], "pair", 46001).await;
    announce(apis[1], "pair", 46002).await;
    for api in &apis {
        poll_until(
            "both announces through each grape",
            Duration::from_secs(10),
            || async {
                (lookup(*api, "pair").await == vec![local(46001), local(46002)]).then_some(())
            },
        )
        .await;
    }
    shutdown(grapes).await;
}

/// Two announcers of one key are both found, whether they announce through different
/// grapes or concurrently through the same one (mainline would let the second of two
/// concurrent announces of one infohash overwrite the first; the grape serializes them).
#[tokio::test]
async fn two_announcers_both_found() {
    let grapes = network(3, |_| {}).await;
    let apis: Vec<_> = grapes.iter().map(|g| g.api_addr()).collect();

    announce(apis[0], "svc_a", 42001).await;
    announce(apis[1], "svc_a", 42002).await;
    tokio::join!(
        announce(apis[2], "svc_b", 42003),
        announce(apis[2], "svc_b", 42004),
    );

    for (key, expected) in [
        ("svc_a", vec![local(42001), local(42002)]),
        ("svc_b", vec![local(42003), local(42004)]),
    ] {
        for api in &apis {
            let peers = poll_until(
                &format!("both {key} peers"),
                Duration::from_secs(10),
                || {
                    let expected = expected.clone();
                    async move {
                        let peers = lookup(*api, key).await;
                        (peers == expected).then_some(peers)
                    }
                },
            )
            .await;
            // Sorted and de-duplicated.
            assert_eq!(peers, expected);
        }
    }
    shutdown(grapes).await;
}

/// With a 1.2 s window (slots of 300 ms), an announce that is not renewed vanishes from
/// lookups within one window, and one renewed every 300 ms (< 3/4 window = 900 ms) stays.
///
/// This runs on the real clock, since the DHT runs on its own thread; the margins are
/// wide (a renewal lands ~600 ms before it is due) so that a loaded machine does not
/// flake it.
#[tokio::test]
async fn unrenewed_announce_vanishes_renewed_one_stays() {
    let window = Duration::from_millis(1200);
    let schedule = SlotSchedule::new(window).unwrap();
    let grapes = network(3, |c| c.announce_window = window).await;
    let apis: Vec<_> = grapes.iter().map(|g| g.api_addr()).collect();
    let (stale, live) = (43001, 43002);

    // The live announcer renews through grape 1 every 300 ms.
    let renewer = tokio::spawn({
        let api = apis[1];
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(300));
            for _ in 0..100 {
                every.tick().await;
                announce(api, "expiring", live).await;
            }
        }
    });

    // The stale one announces once, through grape 0.
    let announced_at = Instant::now();
    announce(apis[0], "expiring", stale).await;

    // Lookups through grape 2, 50 ms apart: wait until both are visible, then until the
    // stale one vanishes; the renewed one must be there all along.
    let mut seen_both = false;
    let mut vanished_after = None;
    for lookups in 0..200 {
        let sent = Instant::now();
        let peers = lookup(apis[2], "expiring").await;
        let since = sent - announced_at;
        assert!(
            since < window + Duration::from_secs(5),
            "lookup {lookups}: stale announce still visible {since:?} after it was made"
        );
        if !seen_both {
            seen_both = peers == vec![local(stale), local(live)];
        } else if !peers.contains(&local(stale)) {
            vanished_after = Some(since);
        }
        if seen_both {
            assert!(
                peers.contains(&local(live)),
                "lookup {lookups}: renewed announce missing {since:?} after the start"
            );
        }
        if vanished_after.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_both, "never saw both announces");
    let vanished_after = vanished_after.expect("stale announce never vanished");
    // Visible for more than 3/4 window (a lookup is received a little after it is sent)
    // and at most one window (plus one lookup's time).
    assert!(
        vanished_after + Duration::from_millis(150) >= schedule.renew_within(),
        "stale announce vanished only {vanished_after:?} after it was made"
    );
    assert!(
        vanished_after <= window + Duration::from_millis(500),
        "stale announce vanished only after {vanished_after:?}"
    );

    // The renewed one stays for two more windows.
    let until = Instant::now() + 2 * window;
    let mut checks = 0;
    while Instant::now() < until && checks < 100 {
        checks += 1;
        let peers = lookup(apis[2], "expiring").await;
        assert_eq!(peers, vec![local(live)], "check {checks}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checks >= 5, "only {checks} checks");

    renewer.abort();
    shutdown(grapes).await;
}

/// The same rule at exact times, without waiting: `announce_at` / `lookup_at` choose the
/// slot from a given time instead of the clock. With the default 256 s window (64 s
/// slots), an announce made 1 ms before a slot ends is still found 3 slots later and gone
/// at 4.
#[tokio::test]
async fn slot_expiry_at_exact_times() {
    let grapes = network(3, |_| {}).await;
    let schedule = *grapes[0].dht().schedule();
    let slot = schedule.slot_length();
    let deadline = Duration::from_secs(2);
    // 1 ms before the end of a slot, in 2023.
    let t = Duration::from_millis(1_700_000_000_000 / 64_000 * 64_000 + 63_999);
    grapes[0]
        .dht()
        .announce_at("exact", 44001, t)
        .await
        .expect("announce");

    let visible_at = |at: Duration| {
        let dht = grapes[1].dht();
        async move {
            dht.lookup_at("exact", at, deadline)
                .await
                .expect("lookup")
                .iter()
                .any(|p| p.port() == 44001)
        }
    };
    poll_until("announce stored", Duration::from_secs(10), || async {
        visible_at(t).await.then_some(())
    })
    .await;
    // Last millisecond of the 4th slot (the announce's slot and the 3 after it).
    let last = t + 3 * slot;
    assert!(visible_at(last).await);
    assert!(!visible_at(last + Duration::from_millis(1)).await);
    // Not visible before its slot.
    assert!(!visible_at(t - slot).await);
    // The plain-key infohash is not used at all.
    let plain = grapes[1]
        .dht()
        .inner()
        .get_peers(grape::infohash("exact").into());
    let batches: Vec<_> = tokio::time::timeout(Duration::from_secs(3), async {
        use futures_lite::StreamExt;
        plain.collect::<Vec<_>>().await
    })
    .await
    .unwrap_or_default();
    assert!(
        batches.iter().all(|b| b.is_empty()),
        "plain infohash has peers: {batches:?}"
    );
    shutdown(grapes).await;
}

/// A dead node costs a lookup the settle period, not mainline's 2 s request timeout: the
/// lookup returns a settle period after the first non-empty batch.
#[tokio::test]
async fn dead_node_does_not_stall_lookups() {
    let mut grapes = network(4, |_| {}).await;
    let apis: Vec<_> = grapes.iter().map(|g| g.api_addr()).collect();
    announce(apis[0], "survivor", 47001).await;
    poll_until("announce visible", Duration::from_secs(10), || async {
        lookup(apis[1], "survivor")
            .await
            .contains(&local(47001))
            .then_some(())
    })
    .await;

    // Kill grape 3; the others still have it in their routing tables.
    let dead = grapes.pop().expect("four grapes");
    dead.shutdown().await;

    let mut took = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let peers = lookup(apis[1], "survivor").await;
        took.push(start.elapsed());
        assert_eq!(peers, vec![local(47001)]);
    }
    eprintln!("lookups with a dead node: {took:?}");
    // Without the settle period each would take over 2 s (the dead node's timeout).
    assert!(
        took.iter().all(|t| *t < Duration::from_millis(1500)),
        "{took:?}"
    );
    shutdown(grapes).await;
}

/// Rough latencies on loopback, printed (run with `--nocapture` to see them).
#[tokio::test]
async fn loopback_latency() {
    let grapes = network(3, |_| {}).await;
    let api = grapes[0].api_addr();
    let mut announce_ms = Vec::new();
    for i in 0..5 {
        let start = Instant::now();
        let answer = post(api, "/announce", json!([format!("latency_{i}"), 45000 + i])).await;
        announce_ms.push(start.elapsed().as_millis());
        assert_eq!(answer, json!(1));
    }
    let mut lookup_ms = Vec::new();
    for i in 0..5 {
        let api = grapes[1 + (i % 2)].api_addr();
        let key = format!("latency_{i}");
        let peers = poll_until("latency lookup", Duration::from_secs(10), || async {
            let start = Instant::now();
            let peers = lookup(api, &key).await;
            let took = start.elapsed().as_millis();
            (!peers.is_empty()).then_some((peers, took))
        })
        .await;
        lookup_ms.push(peers.1);
    }
    let start = Instant::now();
    let empty = lookup(api, "nobody_announced_this").await;
    let empty_ms = start.elapsed().as_millis();
    assert!(empty.is_empty());
    eprintln!(
        "loopback, 3 grapes, HTTP round trip: announce ms {announce_ms:?}, \
         lookup ms {lookup_ms:?}, empty lookup ms {empty_ms}"
    );
    shutdown(grapes).await;
}
