#!/usr/bin/env bash
# Relay path CPU: microseconds of CPU (user + system, from /proc/PID/stat) that the worker
# and the Nano node stand-in spend per relayed request, posted directly to the stand-in
# against relayed through one or more workers, alternating in one run
# (docs/benchmarks.md, "Relay path CPU").
#
#   direct      nano-connect bench --http STUB            (stand-in only)
#   NAME        nano-connect bench --worker W --service nano_rpc, for each NAME=BINARY
#               in WORKERS: a worker with its cache off (--cache-entries 0) relaying
#               to the same stand-in
#   floor       examples/quic_floor (bare quinn echo), server CPU per request, if built
#
# Usage: benches/relay_cpu.sh                     (RUNS=5 REQUESTS=40000 C=64)
#        WORKERS="main=/tmp/nc-main branch=target/release/nano-connect" benches/relay_cpu.sh
#        CALLGRIND=3000 benches/relay_cpu.sh      (also: instructions per relayed request)
#
# With CALLGRIND=N, each worker is also run under `valgrind --tool=callgrind` (which
# serializes its threads): 200 warm-up requests, then the counters are zeroed, N requests
# are relayed at C in flight, and the instructions counted in between, divided by N + 10
# (bench's warm-up), are printed: a figure that does not depend on the machine's load.
#
# The load generator is BENCH (default: this tree's release nano-connect) for every
# target, so that only the worker differs between the NAME rows. Each request count
# includes bench's warm-up requests (10 per connection). CPU ticks are 1/CLK_TCK s, so
# REQUESTS should make each measurement take a second or more. Everything runs on
# 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail
# Never the public DHT (every process here names its grapes), and no state of the user's:
# node keys and the worker cache live in this run's temporary folder.
export NANO_CONNECT_NO_PUBLIC_DHT=1

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-5}
REQUESTS=${REQUESTS:-40000}
C=${C:-64}
REL=$ROOT/target/release
BENCH=${BENCH:-$REL/nano-connect}
STUB=${STUB:-$REL/examples/nano_stub}
FLOOR=${FLOOR:-$REL/examples/quic_floor}
WORKERS=${WORKERS:-"branch=$BENCH"}
BODY='{"action":"block_count"}'
source "$ROOT/benches/lib.sh"
bench_start relay-cpu
export NANO_CONNECT_KEY="$TMP/worker.key" NANO_CONNECT_CACHE="$TMP/workers.json"

# utime + stime of PID in clock ticks (fields 14 and 15; the name in field 2 has no spaces here).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)
# us_per TICKS0 TICKS1 REQUESTS
us_per() { awk -v a="$1" -v b="$2" -v n="$3" -v t="$TCK" 'BEGIN {printf "%.1f", (b - a) * 1e6 / t / n}'; }
json_num() { echo "$1" | grep -o "\"$2\":[0-9.]*" | head -1 | cut -d: -f2; }

if [ ! -x "$BENCH" ] || [ ! -x "$STUB" ]; then
  (cd "$ROOT" && cargo build --release --bin nano-connect --example nano_stub)
fi
cd "$TMP"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo "commit: $(git -C "$ROOT" rev-parse --short HEAD), RUNS=$RUNS REQUESTS=$REQUESTS C=$C, CLK_TCK=$TCK"

"$STUB" >stub.log 2>&1 & SPID=$!; PIDS+=($SPID)
wait_listening stub.log
NODE=$(field stub.log url)

declare -A WPID WADDR
port=47201
for spec in $WORKERS; do
  name=${spec%%=*}; bin=${spec#*=}
  "$bin" -q worker --service nano-rpc --announce nano_rpc --nano-rpc "$NODE" --cache-entries 0 \
    --bind 127.0.0.1 --port "$port" --grape http://127.0.0.1:9 >"worker-$name.log" 2>&1 &
  WPID[$name]=$!; PIDS+=($!)
  WADDR[$name]=127.0.0.1:$port
  port=$((port + 1))
done
for spec in $WORKERS; do wait_listening "worker-${spec%%=*}.log"; done
HAVE_FLOOR=
if [ -x "$FLOOR" ]; then
  "$FLOOR" server --port 47299 >floor.log 2>&1 & FPID=$!; PIDS+=($FPID)
  wait_listening floor.log && HAVE_FLOOR=1
fi

: >rows.tsv
for run in $(seq "$RUNS"); do
  echo "# run $run of $RUNS" >&2
  s0=$(ticks "$SPID")
  out=$("$BENCH" -q bench --http "$NODE" --body "$BODY" -c "$C" -n "$REQUESTS" --json)
  s1=$(ticks "$SPID")
  n=$(( $(json_num "$out" ok) + 10 * $(json_num "$out" connections) ))
  printf 'direct\t-\t%s\t%s\n' "$(us_per "$s0" "$s1" "$n")" "$(json_num "$out" requests_per_s)" >>rows.tsv
  for spec in $WORKERS; do
    name=${spec%%=*}
    w0=$(ticks "${WPID[$name]}"); s0=$(ticks "$SPID")
    out=$("$BENCH" -q bench --worker "${WADDR[$name]}" --service nano_rpc --body "$BODY" -c "$C" -n "$REQUESTS" --json)
    w1=$(ticks "${WPID[$name]}"); s1=$(ticks "$SPID")
    n=$(( $(json_num "$out" ok) + 10 * $(json_num "$out" connections) ))
    printf '%s\t%s\t%s\t%s\n' "$name" "$(us_per "$w0" "$w1" "$n")" "$(us_per "$s0" "$s1" "$n")" \
      "$(json_num "$out" requests_per_s)" >>rows.tsv
  done
  if [ -n "$HAVE_FLOOR" ]; then
    f0=$(ticks "$FPID")
    out=$("$FLOOR" client --addr 127.0.0.1:47299 -c "$C" -n "$REQUESTS" --answer 46)
    f1=$(ticks "$FPID")
    printf 'floor\t%s\t-\t%s\n' "$(us_per "$f0" "$f1" "$(json_num "$out" ok)")" "$(json_num "$out" requests_per_s)" >>rows.tsv
  fi
done

if [ -n "${CALLGRIND:-}" ]; then
  echo "# callgrind, $CALLGRIND requests per worker" >&2
  : >callgrind.tsv
  port=47251
  for spec in $WORKERS; do
    name=${spec%%=*}; bin=${spec#*=}
    valgrind --tool=callgrind --callgrind-out-file="$TMP/cg-$name.%p" "$bin" -q worker --service nano-rpc \
      --announce nano_rpc --nano-rpc "$NODE" --cache-entries 0 --bind 127.0.0.1 --port "$port" \
      --grape http://127.0.0.1:9 >"cg-$name.log" 2>&1 &
    CPID=$!; PIDS+=($CPID)
    wait_listening "cg-$name.log"
    "$BENCH" -q bench --worker "127.0.0.1:$port" --service nano_rpc --body "$BODY" -c "$C" -n 200 --json >/dev/null
    callgrind_control --zero "$CPID" >/dev/null 2>&1
    "$BENCH" -q bench --worker "127.0.0.1:$port" --service nano_rpc --body "$BODY" -c "$C" -n "$CALLGRIND" --json >/dev/null
    callgrind_control --dump "$CPID" >/dev/null 2>&1
    ir=$(cat "$TMP"/cg-"$name".*.1 | awk '/^summary:/ {print $2}')
    printf '%s\t%s\n' "$name" "$(awk -v i="$ir" -v n="$CALLGRIND" 'BEGIN {printf "%.0f", i / (n + 10)}')" >>callgrind.tsv
    kill "$CPID" 2>/dev/null || true; wait "$CPID" 2>/dev/null || true
    port=$((port + 1))
  done
fi

echo
echo "Per run (CPU us per request; req/s as bench measured it):"
printf 'target\tworker_us\tstub_us\treq_s\n'
cat rows.tsv
echo
echo "Medians of $RUNS runs:"
printf '%-10s %12s %12s %10s\n' target "worker us" "stand-in us" "req/s"
for name in $(cut -f1 rows.tsv | awk '!seen[$0]++'); do
  med() { awk -F'\t' -v n="$name" -v c="$1" '$1 == n {print $c}' rows.tsv | sort -g |
    awk '{a[NR] = $1} END {print (a[1] == "-") ? "-" : a[int((NR + 1) / 2)]}'; }
  printf '%-10s %12s %12s %10.0f\n' "$name" "$(med 2)" "$(med 3)" "$(med 4)"
done
if [ -n "${CALLGRIND:-}" ]; then
  echo
  echo "Instructions per relayed request (callgrind, $CALLGRIND requests at $C in flight):"
  cat callgrind.tsv
fi
