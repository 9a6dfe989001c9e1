//! Relay policy micro benchmarks: `Policy::check` on typical Nano RPC requests, and the
//! cache's key and ledger keys taken from its `CheckedRequest` (`cargo bench --bench
//! policy`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nano_connect::nano::Policy;

/// Typical requests: a bare action, an account query, a history page (its `count` is
/// within the cap, so nothing is rewritten), one that needs a rewrite (`count` over the
/// cap), one that gets the cap added (`receivable` without a count), and one refused by
/// the allowlist.
const REQUESTS: [(&str, &str); 6] = [
    ("block_count", r#"{"action":"block_count"}"#),
    (
        "account_balance",
        r#"{"action":"account_balance","account":"nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo"}"#,
    ),
    (
        "account_history",
        r#"{"action":"account_history","account":"nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo","count":"10"}"#,
    ),
    (
        "account_history_capped",
        r#"{"action":"account_history","account":"nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo","count":"100000000"}"#,
    ),
    (
        "receivable_without_count",
        r#"{"action":"receivable","account":"nano_3e3j5tkog48pnny9dmfzj1r16pg8t1e76dz5tmac6iq689wyjfpiij4txtdo"}"#,
    ),
    (
        "refused_wallet_export",
        r#"{"action":"wallet_export","wallet":"000D1BAEC8EC208142C99059B393051BAC8380F9B5A2E6B2489A277D81789F3F"}"#,
    ),
];

fn check(c: &mut Criterion) {
    let policy = Policy::read_only();
    let mut group = c.benchmark_group("policy_check");
    for (name, body) in REQUESTS {
        group.bench_with_input(
            BenchmarkId::from_parameter(name),
            body.as_bytes(),
            |b, body| b.iter(|| policy.check(body)),
        );
    }
    group.finish();
}

/// What the cache does with a checked read on top of the check: its key (canonical
/// JSON) and the ledger entries it names.
fn cache_keys(c: &mut Criterion) {
    let policy = Policy::read_only();
    let mut group = c.benchmark_group("cache_keys");
    for (name, body) in &REQUESTS[..3] {
        let checked = policy.check(body.as_bytes()).expect("allowed");
        group.bench_with_input(BenchmarkId::from_parameter(name), &checked, |b, checked| {
            b.iter(|| (checked.cache_key(), checked.ledger_keys()))
        });
    }
    group.finish();
}

criterion_group!(benches, check, cache_keys);
criterion_main!(benches);
