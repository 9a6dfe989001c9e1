#!/usr/bin/env bash
# The figures of docs/benchmarks.md, in one run on 127.0.0.1 (issue 5):
#   1+2  requests/s and p50/p99 through one echo worker at 1, 64 and 256 in flight,
#        answers of 200 B and 64 KiB, next to the bare quinn floor (examples/quic_floor.rs)
#        with the same transport settings, alternating;
#   3    the relay path: nano_rpc through the mesh against a direct HTTP POST to the Nano
#        node stand-in (examples/nano_stub.rs), at 1 and 64 in flight;
#   4    cold `nano-connect call` (process start to answer, lookup and handshake included);
#   5    worker memory per idle client connection (open N, RSS before and after);
#   6    grape announce and lookup time on a 3-grape loopback network.
#
# Usage: benches/mesh.sh                 (RUNS=3 REQUESTS=50000 DURATION=10 IDLE=2000)
#        SECTIONS="1 3" benches/mesh.sh  (only some sections)
#
# Needs node (for the summary), curl, and release builds (made if missing). Uses
# hyperfine for section 4 when installed, else a timed loop. Stops every process on exit.
set -euo pipefail
# Never the public DHT (every process here names its grapes), and no state of the user's:
# node keys and the worker cache live in this run's temporary folder.
export NANO_CONNECT_NO_PUBLIC_DHT=1

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
REQUESTS=${REQUESTS:-50000}
DURATION=${DURATION:-10}
IDLE=${IDLE:-2000}
SECTIONS=${SECTIONS:-"1 3 4 5 6"}
REL=$ROOT/target/release
BIN=$REL/nano-connect
FLOOR=$REL/examples/quic_floor
STUB=$REL/examples/nano_stub
SUMMARY=$ROOT/benches/grenache/summary.js
source "$ROOT/benches/lib.sh"
bench_start bench
export NANO_CONNECT_KEY="$TMP/worker.key" NANO_CONNECT_CACHE="$TMP/workers.json"

has() { [[ " $SECTIONS " == *" $1 "* ]]; }

if [ ! -x "$BIN" ] || [ ! -x "$FLOOR" ] || [ ! -x "$STUB" ]; then
  (cd "$ROOT" && cargo build --release --bin nano-connect --example quic_floor --example nano_stub)
fi
cd "$TMP"
echo "machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo "commit: $(git -C "$ROOT" rev-parse --short HEAD), RUNS=$RUNS REQUESTS=$REQUESTS DURATION=$DURATION"

if has 1; then
  "$BIN" -q worker --service echo --announce echo --bind 127.0.0.1 --port 47001 --grape http://127.0.0.1:9 >worker.log 2>&1 & PIDS+=($!)
  "$FLOOR" server --port 47101 >floor.log 2>&1 & PIDS+=($!)
  wait_listening worker.log; wait_listening floor.log
  : >s1.tsv
  for run in $(seq "$RUNS"); do
    echo "# section 1, run $run of $RUNS" >&2
    for answer in 200 65536; do
      for c in 1 64 256; do
        n=$REQUESTS; [ "$answer" = 65536 ] && n=$((REQUESTS / 5))
        printf 'mesh c=%s answer=%s\t%s\n' "$c" "$answer" \
          "$("$BIN" -q bench --worker 127.0.0.1:47001 --service echo -c "$c" -n "$n" -d "$DURATION" --answer "$answer" --json || true)" >>s1.tsv
        printf 'quinn c=%s answer=%s\t%s\n' "$c" "$answer" \
          "$("$FLOOR" client --addr 127.0.0.1:47101 -c "$c" -n "$n" -d "$DURATION" --answer "$answer" || true)" >>s1.tsv
      done
    done
  done
  echo; echo "## 1-2. One echo worker against the bare quinn floor (100 B requests)"
  grep -v $'\t$' s1.tsv | node "$SUMMARY" \
    --ratio 'mesh/quinn, 1 in flight, 200 B=mesh c=1 answer=200/quinn c=1 answer=200:rps' \
    --ratio 'mesh/quinn, 64 in flight, 200 B=mesh c=64 answer=200/quinn c=64 answer=200:rps' \
    --ratio 'mesh/quinn, 256 in flight, 200 B=mesh c=256 answer=200/quinn c=256 answer=200:rps' \
    --ratio 'mesh/quinn, 64 in flight, 64 KiB=mesh c=64 answer=65536/quinn c=64 answer=65536:rps' \
    --ratio 'mesh/quinn sequential p50, 200 B=mesh c=1 answer=200/quinn c=1 answer=200:p50'
fi

if has 3; then
  "$STUB" >stub.log 2>&1 & PIDS+=($!)
  wait_listening stub.log
  NODE=$(field stub.log url)
  # The cache off, so that every request is relayed to the stand-in (the issue's measure).
  "$BIN" -q worker --service nano-rpc --announce nano_rpc --nano-rpc "$NODE" --cache-entries 0 \
    --bind 127.0.0.1 --port 47002 --grape http://127.0.0.1:9 >relay.log 2>&1 & PIDS+=($!)
  # The bare quinn echo beside it: one loopback QUIC round trip in the same run, the
  # least the mesh can add to the direct p50.
  "$FLOOR" server --port 47102 >floor3.log 2>&1 & PIDS+=($!)
  wait_listening relay.log; wait_listening floor3.log
  BODY='{"action":"block_count"}'
  : >s3.tsv
  for run in $(seq "$RUNS"); do
    echo "# section 3, run $run of $RUNS" >&2
    for c in 1 64; do
      printf 'mesh relay c=%s\t%s\n' "$c" \
        "$("$BIN" -q bench --worker 127.0.0.1:47002 --service nano_rpc --body "$BODY" -c "$c" -n "$((REQUESTS / 2))" -d "$DURATION" --json || true)" >>s3.tsv
      printf 'direct HTTP c=%s\t%s\n' "$c" \
        "$("$BIN" -q bench --http "$NODE" --body "$BODY" -c "$c" -n "$((REQUESTS / 2))" -d "$DURATION" --json || true)" >>s3.tsv
    done
    printf 'quinn round trip c=1\t%s\n' \
      "$("$FLOOR" client --addr 127.0.0.1:47102 -c 1 -n "$((REQUESTS / 2))" -d "$DURATION" --answer 46 || true)" >>s3.tsv
  done
  echo; echo "## 3. Relay path: $BODY through the mesh against a direct POST to the node stand-in"
  grep -v $'\t$' s3.tsv | node "$SUMMARY" \
    --ratio 'mesh/direct throughput, 1 in flight=mesh relay c=1/direct HTTP c=1:rps' \
    --ratio 'mesh/direct throughput, 64 in flight=mesh relay c=64/direct HTTP c=64:rps' \
    --ratio 'mesh/direct p50, 1 in flight=mesh relay c=1/direct HTTP c=1:p50'
fi

if has 4 || has 6; then
  "$BIN" -q grape --dp 23001 --aph 33001 --bn none --bind 127.0.0.1 >g1.log 2>&1 & PIDS+=($!)
  wait_listening g1.log
  "$BIN" -q grape --dp 23002 --aph 33002 --bn 127.0.0.1:23001 --bind 127.0.0.1 >g2.log 2>&1 & PIDS+=($!)
  "$BIN" -q grape --dp 23003 --aph 33003 --bn 127.0.0.1:23001 --bind 127.0.0.1 >g3.log 2>&1 & PIDS+=($!)
  wait_listening g2.log; wait_listening g3.log
fi

if has 4; then
  [ -n "${NODE:-}" ] || { "$STUB" >stub.log 2>&1 & PIDS+=($!); wait_listening stub.log; NODE=$(field stub.log url); }
  "$BIN" -q worker --announce nano_rpc --nano-rpc "$NODE" --bind 127.0.0.1 --port 47003 --grape http://127.0.0.1:33001 >cold.log 2>&1 & PIDS+=($!)
  wait_listening cold.log
  CALL="$BIN -q call --grape http://127.0.0.1:33003 block_count"
  for i in $(seq 100); do $CALL --no-cache >/dev/null 2>&1 && break; [ "$i" = 100 ] && { echo "mesh.sh: worker never found" >&2; exit 1; }; sleep 0.2; done
  OWN="$BIN -q call --bootstrap 127.0.0.1:23002,127.0.0.1:23003 block_count"
  echo; echo "## 4. Cold \`nano-connect call block_count\` (new process: lookup, handshake, answer), 30 runs each"
  # $1 label; $2 "empty" (a fresh cache file per run) or "warm" (one file, filled first); $3... the command.
  cold() {
    local label=$1 cache=$2; shift 2
    "$@" --cache "$TMP/warm-$label.json" >/dev/null 2>&1 || true
    : >"cold-$label.txt"
    for i in $(seq 30); do
      local file="$TMP/warm-$label.json"
      [ "$cache" = empty ] && file="$TMP/empty-$label-$i.json"
      s=$(date +%s%N); "$@" --cache "$file" >/dev/null; e=$(date +%s%N)
      echo $(((e - s) / 1000)) >>"cold-$label.txt"
    done
    sort -n "cold-$label.txt" | awk -v l="$label" '{a[NR]=$1} END {printf "%-34s median %6.1f ms  min %6.1f ms  max %6.1f ms\n", l, a[int((NR+1)/2)]/1000, a[1]/1000, a[NR]/1000}'
  }
  cold "grape, empty cache" empty $CALL
  cold "grape, warm cache" warm $CALL
  cold "own DHT node, empty cache" empty $OWN
  cold "own DHT node, warm cache" warm $OWN
fi

if has 5; then
  echo; echo "## 5. Worker memory per idle client connection ($IDLE connections)"
  for run in $(seq "$RUNS"); do
    "$BIN" -q worker --service echo --announce echo --bind 127.0.0.1 --port 47004 --grape http://127.0.0.1:9 \
      --max-connections $((IDLE + 100)) --max-connections-per-ip $((IDLE + 100)) >idle-w.log 2>&1 &
    WPID=$!; PIDS+=($WPID)
    wait_listening idle-w.log
    # One connection and a few requests first, so that lazily made state is counted in "before".
    "$BIN" -q bench --worker 127.0.0.1:47004 -n 100 --json >/dev/null
    sleep 1
    before=$(rss_kib "$WPID")
    "$BIN" -q bench --worker 127.0.0.1:47004 --idle-connections "$IDLE" --hold 60 >idle.log 2>&1 &
    BPID=$!; PIDS+=($BPID)
    for _ in $(seq 600); do grep -q idle_open idle.log && break; sleep 0.1; done
    grep -q idle_open idle.log || { echo "mesh.sh: idle connections not opened:" >&2; cat idle.log >&2; exit 1; }
    sleep 2
    after=$(rss_kib "$WPID")
    kill "$BPID" 2>/dev/null || true; wait "$BPID" 2>/dev/null || true
    kill "$WPID" 2>/dev/null || true; wait "$WPID" 2>/dev/null || true
    echo "run $run: RSS before ${before} KiB, after $(field idle.log connections) connections ${after} KiB: $(((after - before) * 1024 / IDLE)) B per connection"
  done
fi

if has 6; then
  echo; echo "## 6. Grape: announce on grape 1, lookup on grape 3 (3 grapes on loopback)"
  : >g6.txt
  for i in $(seq 20); do
    key="bench-key-$RANDOM-$i"
    a=$(curl -s -o /dev/null -w '%{time_total}' -d "{\"data\":[\"$key\",4000]}" http://127.0.0.1:33001/announce)
    s=$(date +%s%N)
    for _ in $(seq 100); do
      out=$(curl -s -d "{\"data\":\"$key\"}" http://127.0.0.1:33003/lookup)
      [[ "$out" == *4000* ]] && break
    done
    e=$(date +%s%N)
    l=$(curl -s -o /dev/null -w '%{time_total}' -d "{\"data\":\"$key\"}" http://127.0.0.1:33003/lookup)
    echo "$a $(((e - s) / 1000)) $l" >>g6.txt
  done
  med() { sort -n | awk '{a[NR]=$1} END {printf "median %.1f ms (max %.1f)", a[int((NR+1)/2)], a[NR]}'; }
  echo "$(wc -l <g6.txt) keys: announce $(awk '{print $1*1e3}' g6.txt | med);" \
    "announce-to-visible on grape 3 $(awk '{print $2/1e3}' g6.txt | med);" \
    "lookup of a visible key $(awk '{print $3*1e3}' g6.txt | med)"
fi
