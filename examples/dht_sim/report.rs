//! The report of a scenario: load on the DHT nodes, the matrix of scenarios and its
//! markdown table.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use grape::SlotSchedule;
use serde_json::{json, Value};

use crate::load::{Kind, KINDS, KIND_NAMES, ROLES};
use crate::phase::PhaseResult;
use crate::swarm::Network;
use crate::{stats, xor_distance, Args, LookupLog, ANNOUNCE_INTERVAL, KEY};

pub fn per_op(kinds: &[u64; KINDS], ops: u64) -> Value {
    let mut out = serde_json::Map::new();
    for (k, name) in KIND_NAMES.iter().enumerate() {
        if kinds[k] > 0 && ops > 0 {
            out.insert((*name).to_owned(), json!(kinds[k] as f64 / ops as f64));
        }
    }
    Value::Object(out)
}

/// The load on the DHT nodes during the steady phase: the busiest node against the
/// median, and how much of every lookup lands on the nodes closest to the slot
/// infohashes.
pub fn node_load(
    network: &Network,
    steady: &PhaseResult,
    log: &LookupLog,
    schedule: &SlotSchedule,
    steady_unix: Duration,
) -> Value {
    let ever = network.ever();
    let rps: Vec<f64> = steady
        .loads
        .iter()
        .map(|l| l.total() as f64 / steady.secs.max(1e-3))
        .collect();
    let busiest = rps
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, r)| (i, *r));
    // Lookups that asked for each slot infohash.
    let mut asked: HashMap<[u8; 20], u64> = HashMap::new();
    for t in &log.unix_starts {
        for h in schedule.lookup_infohashes(KEY, *t) {
            *asked.entry(h).or_default() += 1;
        }
    }
    // For each slot infohash asked at least 20 times: get_peers per lookup at each of
    // its 20 closest nodes (by rank), averaged over infohashes.
    let mut by_rank = [0.0f64; 20];
    let mut counted = 0u32;
    let mut top20_share = Vec::new();
    for (target, lookups) in &asked {
        if *lookups < 20 {
            continue;
        }
        let mut ranked: Vec<usize> = (0..ever.len()).collect();
        ranked.sort_by_key(|i| xor_distance(&ever[*i].id, target));
        let gp = |i: usize| {
            steady
                .loads
                .get(i)
                .and_then(|l| l.by_target.get(target))
                .map_or(0, |c| c[Kind::GetPeers as usize])
        };
        for (rank, i) in ranked.iter().take(20).enumerate() {
            by_rank[rank] += gp(*i) as f64 / *lookups as f64;
        }
        let total: u64 = ranked.iter().map(|i| gp(*i)).sum();
        let top: u64 = ranked.iter().take(20).map(|i| gp(*i)).sum();
        if total > 0 {
            top20_share.push(top as f64 / total as f64);
        }
        counted += 1;
    }
    if counted > 0 {
        for r in &mut by_rank {
            *r /= f64::from(counted);
        }
    }
    let key_hashes: BTreeSet<[u8; 20]> = asked.keys().copied().collect();
    let _ = steady_unix;
    // Requests for the key's infohashes at the busiest node, by kind.
    let busiest_kinds = busiest.map(|(i, _)| {
        let mut k = [0u64; KINDS];
        for (t, c) in &steady.loads[i].by_target {
            if key_hashes.contains(t) {
                for (j, slot) in k.iter_mut().enumerate() {
                    *slot += c[j];
                }
            }
        }
        let roles: Vec<u64> = (0..ROLES)
            .map(|r| (0..KINDS).map(|k| steady.loads[i].by_kind_role[k][r]).sum())
            .collect();
        json!({ "key_requests_by_kind": k, "requests_by_role": roles })
    });
    json!({
        "nodes_measured": rps.len(),
        "busiest_rps": busiest.map(|b| b.1),
        "median_rps": stats::quantile(&rps, 0.5),
        "p99_rps": stats::quantile(&rps, 0.99),
        "busiest": busiest_kinds,
        "get_peers_per_lookup_by_rank": by_rank.iter().map(|r| (r * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        "slot_infohashes_measured": counted,
        "top20_share_of_key_get_peers": stats::quantile(&top20_share, 0.5),
    })
}

pub fn print_report(report: &Value) {
    match serde_json::to_string_pretty(report) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("dht_sim: report: {e}"),
    }
}

/// Runs each scenario of the matrix in a child process (its own namespace, its own
/// memory), appends the JSON lines to `--out`, and prints the table.
pub fn run_matrix(args: &Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating this binary")?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut rows = Vec::new();
    let churns = if args.matrix_churn > 0.0 {
        vec![0.0, args.matrix_churn]
    } else {
        vec![0.0]
    };
    for &n in &args.matrix_nodes {
        for &w in &args.matrix_workers {
            for &churn in &churns {
                let mut cmd = Command::new(&exe);
                cmd.args([
                    "--json",
                    "--nodes",
                    &n.to_string(),
                    "--workers",
                    &w.to_string(),
                    "--clients",
                    &args.clients.to_string(),
                    "--churn",
                    &churn.to_string(),
                    "--time-scale",
                    &args.time_scale.to_string(),
                    "--windows",
                    &args.windows.to_string(),
                    "--lookup-interval",
                    &args.lookup_interval.to_string(),
                    "--bep44",
                    &args.bep44.to_string(),
                    "--max-seconds",
                    &args.max_seconds.to_string(),
                    "--rcvbuf",
                    &args.rcvbuf.to_string(),
                    "--lookup-want",
                    &args.lookup_want.to_string(),
                    "--refresh-rounds",
                    &args.refresh_rounds.to_string(),
                ]);
                if args.no_netns {
                    cmd.arg("--no-netns");
                }
                eprintln!("== matrix: N={n} W={w} churn={churn}");
                let output = cmd
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .context("running a scenario")?;
                let text = String::from_utf8_lossy(&output.stdout);
                let Some(line) = text.lines().rev().find(|l| l.starts_with('{')) else {
                    eprintln!(
                        "== scenario N={n} W={w} churn={churn} failed: {}",
                        output.status
                    );
                    continue;
                };
                let value: Value = serde_json::from_str(line).context("a scenario's JSON")?;
                {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&args.out)
                        .with_context(|| format!("opening {}", args.out.display()))?;
                    writeln!(f, "{line}").context("writing the results")?;
                }
                rows.push(value);
            }
        }
    }
    println!("{}", table(&rows));
    Ok(())
}

fn f(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or("–".to_owned(), |x| format!("{x:.digits$}"))
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("–".to_owned(), |x| format!("{:.0} %", x * 100.0))
}

/// The markdown tables of docs/scaling.md from scenario reports: lookup quality and
/// load, then what each operation cost.
pub fn table(rows: &[Value]) -> String {
    let mut out = String::from(
        "| N | W | churn | live share | returned | stale | ≥20 or all | fair (Jain; noise alone) | slots asked | lookup p50 / p99 ms | dead linger max s (real) | hot node req/s (median) | announce B per worker-hour |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let s = &r["scenario"];
        let q = &r["steady"]["quality"];
        let a = &r["announce"]["cost"];
        let load = &r["steady"]["load"];
        let scale = s["time_scale"].as_f64().unwrap_or(1.0);
        let linger = q["linger_s_max"].as_f64().map(|x| x * scale);
        let per_hour = a["ip_bytes"]
            .as_f64()
            .map(|b| b * 3600.0 / ANNOUNCE_INTERVAL.as_secs_f64());
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {}; {} | {} | {} / {} | {} | {} ({}) | {} |\n",
            s["nodes"],
            s["workers"],
            s["churn_per_window"],
            pct(&q["live_share_mean"]),
            f(&q["returned_mean"], 0),
            pct(&q["stale_share_mean"]),
            pct(&q["enough_share"]),
            f(&q["fair_jain"], 2),
            f(&q["fair_jain_sampling"], 2),
            f(&q["slots_asked_mean"], 1),
            f(&q["took_ms_p50"], 0),
            f(&q["took_ms_p99"], 0),
            linger.map_or("–".to_owned(), |x| format!("{x:.0}")),
            f(&load["busiest_rps"], 0),
            f(&load["median_rps"], 1),
            per_hour.map_or("–".to_owned(), |x| format!("{x:.0}")),
        ));
    }
    out.push_str(
        "\n| N | W | churn | announce msgs / B | lookup msgs / B | lookup get_peers + ping | BEP 44 put msgs / B | BEP 44 get msgs / B | join msgs / B | announce stored at |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let s = &r["scenario"];
        let a = &r["announce"]["cost"];
        let l = &r["lookup"]["cost"];
        let b = &r["bep44"];
        let j = &r["join"]["cost"];
        let gp = &l["requests_received_by_dht"];
        let gets = gp["get_peers"].as_f64().unwrap_or(0.0) + gp["ping"].as_f64().unwrap_or(0.0);
        out.push_str(&format!(
            "| {} | {} | {} | {} / {} | {} / {} | {:.0} | {} / {} | {} / {} | {} / {} | {} |\n",
            s["nodes"],
            s["workers"],
            s["churn_per_window"],
            f(&a["datagrams"], 0),
            f(&a["ip_bytes"], 0),
            f(&l["datagrams"], 0),
            f(&l["ip_bytes"], 0),
            gets,
            f(&b["put"]["datagrams"], 0),
            f(&b["put"]["ip_bytes"], 0),
            f(&b["get"]["datagrams"], 0),
            f(&b["get"]["ip_bytes"], 0),
            f(&j["datagrams"], 0),
            f(&j["ip_bytes"], 0),
            f(&a["requests_received_by_dht"]["announce_peer"], 0),
        ));
    }
    out
}
