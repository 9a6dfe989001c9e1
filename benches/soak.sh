#!/usr/bin/env bash
# Soak (docs/benchmarks.md, "Soak"): DURATION seconds (default 600) at half of the
# measured peak, on 127.0.0.1, along two paths at once:
#
#   mesh     nano-connect bench --grape B --service nano_rpc   lookup through grape B,
#                                                              then worker, then stand-in
#   gateway  nano-connect bench --http GATEWAY                 gateway (looking up through
#                                                              grape B), worker, stand-in
#
# with two grapes (A first, B bootstrapped from A; the worker announces through A), one
# worker with its response cache off (--cache-entries 0, so that every request reaches
# the Nano node stand-in, examples/nano_stub.rs) and one gateway. The body is
# {"action":"block_count"}.
#
# First both paths run together unpaced for PEAK seconds (default 15) at C in flight
# each (default 64): the peak. Then both run together for DURATION at half of the
# rate each reached (bench --rate), C in flight at most. Every request must be answered
# (0 errors). Every 10 s the RSS of every process (grapes, worker, stand-in, gateway,
# both bench processes) is read from /proc/PID/status; the samples go to
# OUT/soak-rss.csv and a plot to OUT/soak-rss.png (default OUT: docs/), and the script
# prints, per process, the RSS range after WARMUP seconds (default 60) and how far the
# last sample lies from the first one after warm-up. It fails when a bench saw an
# error or the RSS of a nano-connect process moved more than 5 % after warm-up (the
# stand-in, a test fixture, is drawn but not judged).
#
# Usage: benches/soak.sh                    (DURATION=600 PEAK=15 C=64 WARMUP=60)
#        DURATION=60 WARMUP=20 OUT=/tmp/soak benches/soak.sh   (a trial run)
#
# The plot needs matplotlib: the script installs it with pip into a virtual
# environment under target/soak-venv the first time (CI never runs this script).
# Every process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-600}
PEAK=${PEAK:-15}
C=${C:-64}
WARMUP=${WARMUP:-60}
# Absolute: the script works in its scratch folder.
OUT=$(realpath -m "${OUT:-$ROOT/docs}")
SAMPLE=10
REL=$ROOT/target/release
BIN=$REL/nano-connect
STUB=$REL/examples/nano_stub
BODY='{"action":"block_count"}'
source "$ROOT/benches/lib.sh"
bench_start soak

json_num() { grep -o "\"$2\":[0-9.]*" "$1" | head -1 | cut -d: -f2; }

if [ ! -x "$BIN" ] || [ ! -x "$STUB" ]; then
  (cd "$ROOT" && cargo build --release --bin nano-connect --example nano_stub)
fi
if [ ! -x "$ROOT/target/soak-venv/bin/python" ]; then
  python3 -m venv "$ROOT/target/soak-venv"
  "$ROOT/target/soak-venv/bin/pip" install -q matplotlib
fi
mkdir -p "$OUT"
cd "$TMP"
export NANO_CONNECT_NO_PUBLIC_DHT=1 NANO_CONNECT_CACHE=$TMP/workers.json
echo "machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo "commit: $(git -C "$ROOT" rev-parse --short HEAD), DURATION=$DURATION PEAK=$PEAK C=$C WARMUP=$WARMUP"

declare -A PID_OF
"$STUB" >stub.log 2>&1 & PID_OF[stand-in]=$!; PIDS+=($!)
"$BIN" -q grape --dp 0 --aph 0 --bind 127.0.0.1 --bn none >grape-a.log 2>&1 & PID_OF[grape A]=$!; PIDS+=($!)
wait_listening stub.log; wait_listening grape-a.log
NODE=$(field stub.log url)
"$BIN" -q grape --dp 0 --aph 0 --bind 127.0.0.1 --bn "$(field grape-a.log dht)" >grape-b.log 2>&1 &
PID_OF[grape B]=$!; PIDS+=($!)
wait_listening grape-b.log
GRAPE_A=http://$(field grape-a.log api)
GRAPE_B=http://$(field grape-b.log api)
"$BIN" -q worker --announce nano_rpc --grape "$GRAPE_A" --bind 127.0.0.1 --public \
  --key "$TMP/worker.key" --nano-rpc "$NODE" --cache-entries 0 >worker.log 2>&1 &
PID_OF[worker]=$!; PIDS+=($!)
"$BIN" -q gateway --listen 127.0.0.1:0 --grape "$GRAPE_B" >gateway.log 2>&1 &
PID_OF[gateway]=$!; PIDS+=($!)
wait_listening worker.log; wait_listening gateway.log
GATEWAY=http://$(field gateway.log addr)/

# The worker is found through grape B once its announce has spread.
for _ in $(seq 100); do
  "$BIN" -q call --grape "$GRAPE_B" --service nano_rpc block_count >/dev/null 2>&1 && break
  sleep 0.2
done

# bench_pair SECONDS MESH_RATE GATEWAY_RATE PREFIX: both paths at once (rate "" = unpaced).
bench_pair() {
  local secs=$1 mesh_rate=$2 gateway_rate=$3 prefix=$4
  local mesh_pace=() gateway_pace=()
  [ -n "$mesh_rate" ] && mesh_pace=(--rate "$mesh_rate")
  [ -n "$gateway_rate" ] && gateway_pace=(--rate "$gateway_rate")
  "$BIN" -q bench --grape "$GRAPE_B" --service nano_rpc --body "$BODY" -c "$C" \
    -n 1000000000 -d "$secs" --timeout 10000 "${mesh_pace[@]}" --json >"$prefix-mesh.json" 2>"$prefix-mesh.err" &
  PID_OF[bench mesh]=$!; PIDS+=($!)
  "$BIN" -q bench --http "$GATEWAY" --body "$BODY" -c "$C" \
    -n 1000000000 -d "$secs" --timeout 10000 "${gateway_pace[@]}" --json >"$prefix-gateway.json" 2>"$prefix-gateway.err" &
  PID_OF[bench gateway]=$!; PIDS+=($!)
}

echo "# peak: both paths unpaced, $C in flight each, ${PEAK} s" >&2
bench_pair "$PEAK" "" "" peak
wait "${PID_OF[bench mesh]}" || true
wait "${PID_OF[bench gateway]}" || true
MESH_PEAK=$(json_num peak-mesh.json requests_per_s | awk '{printf "%.0f", $1}')
GATEWAY_PEAK=$(json_num peak-gateway.json requests_per_s | awk '{printf "%.0f", $1}')
MESH_RATE=$(awk -v r="$MESH_PEAK" 'BEGIN {printf "%.0f", r / 2}')
GATEWAY_RATE=$(awk -v r="$GATEWAY_PEAK" 'BEGIN {printf "%.0f", r / 2}')
echo "peak: mesh ${MESH_PEAK} req/s, gateway ${GATEWAY_PEAK} req/s (errors $(json_num peak-mesh.json errors), $(json_num peak-gateway.json errors))"
echo "soak: mesh at ${MESH_RATE} req/s, gateway at ${GATEWAY_RATE} req/s, ${DURATION} s"

bench_pair "$DURATION" "$MESH_RATE" "$GATEWAY_RATE" soak
NAMES=("grape A" "grape B" "worker" "stand-in" "gateway" "bench mesh" "bench gateway")
echo "t_s,process,rss_kib" >rss.csv
started=$(date +%s)
for i in $(seq 0 $((DURATION / SAMPLE + 1))); do
  t=$((i * SAMPLE))
  [ "$t" -lt "$DURATION" ] || break
  for name in "${NAMES[@]}"; do
    echo "$t,$name,$(rss_kib "${PID_OF[$name]}")" >>rss.csv
  done
  # Sleep until the next multiple of SAMPLE seconds since the start.
  next=$((started + t + SAMPLE))
  now=$(date +%s)
  [ "$next" -gt "$now" ] && sleep $((next - now))
done
status=0
wait "${PID_OF[bench mesh]}" || status=1
wait "${PID_OF[bench gateway]}" || status=1
cp rss.csv "$OUT/soak-rss.csv"

for path in mesh gateway; do
  echo "$path: $(json_num soak-$path.json ok) answered, $(json_num soak-$path.json errors) errors, $(json_num soak-$path.json requests_per_s | awk '{printf "%.0f", $1}') req/s, p50 $(json_num soak-$path.json p50_us) µs, p99 $(json_num soak-$path.json p99_us) µs, max $(json_num soak-$path.json max_us) µs"
  [ "$(json_num soak-$path.json errors)" = 0 ] || { status=1; cat "soak-$path.json"; cat "soak-$path.err" >&2; }
done

"$ROOT/target/soak-venv/bin/python" - "$TMP/rss.csv" "$OUT/soak-rss.png" "$WARMUP" \
  "mesh ${MESH_RATE} req/s + gateway ${GATEWAY_RATE} req/s (half of the peak), ${DURATION} s" <<'PY' || status=1
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

path, png, warmup, title = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
series = {}
for row in csv.DictReader(open(path)):
    series.setdefault(row["process"], []).append((float(row["t_s"]), int(row["rss_kib"]) / 1024))
fig, ax = plt.subplots(figsize=(10, 5.5))
worst = 0.0
for name, points in series.items():
    ts = [t for t, _ in points]
    ms = [m for _, m in points]
    ax.plot(ts, ms, marker=".", label=name)
    after = [m for t, m in points if t >= warmup]
    if not after:
        continue
    lo, hi = min(after), max(after)
    spread = (hi - lo) / lo * 100 if lo else 0.0
    drift = (after[-1] - after[0]) / after[0] * 100 if after[0] else 0.0
    # The Nano node stand-in is the tests' fixture, not part of the product: drawn and
    # printed, not judged.
    judged = name != "stand-in"
    if judged:
        worst = max(worst, spread)
    print(f"rss {name:13s} after {warmup:.0f} s: {lo:7.1f} .. {hi:7.1f} MiB, "
          f"range {spread:4.1f} % of the lowest, last vs first {drift:+5.1f} %"
          + ("" if judged else " (test fixture, not judged)"))
ax.axvline(warmup, color="grey", linestyle=":", label=f"warm-up ({warmup:.0f} s)")
ax.set_xlabel("seconds")
ax.set_ylabel("RSS, MiB")
ax.set_title("nano-connect soak: RSS every 10 s\n" + title, fontsize=10)
ax.grid(True, alpha=0.3)
ax.legend(fontsize=8, loc="center right")
fig.tight_layout()
fig.savefig(png, dpi=100)
print(f"plot: {png}")
sys.exit(0 if worst <= 5.0 else 1)
PY
[ "$status" = 0 ] && echo "soak: PASS" || echo "soak: FAIL"
exit "$status"
