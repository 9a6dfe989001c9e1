#!/usr/bin/env bash
# The mesh against Grenache, side by side in one run: the Grenache tutorial's fibonacci
# service ({"length": 10}) served by Grenache's JavaScript worker (ws and http
# transports) and by `nano-connect worker --service fibonacci`, each behind two grapes
# of its own kind on 127.0.0.1, measured with the same load (warm-up, then N requests
# or D seconds, whichever comes first), alternating, RUNS times; prints medians and
# ratios. nano-connect runs two workers, one per tokio runtime flavour (`--runtime`),
# so that each pairing of worker and client flavour, and each number of client
# connections, is measured in the same alternating run; "nano-connect c=64" is the
# default (DEFAULT_WORKER/DEFAULT_CLIENT, one connection), the others are labelled
# "nano-connect WORKER/CLIENT/CONNECTIONS".
#
# Usage: benches/compare-grenache.sh            (RUNS=3 REQUESTS=20000 DURATION=10)
#        RUNS=5 REQUESTS=50000 benches/compare-grenache.sh
#        VARIANTS= SEQ_VARIANTS= benches/compare-grenache.sh   (the defaults only)
#        VARIANTS="multi/multi/1 current/current/2" benches/compare-grenache.sh
#
# Needs node and npm (Grenache's packages are installed into a temporary folder from the
# npm registry; grenache-nodejs-utp is not published there, so utp is left out) and a
# release build of nano-connect (built if missing). Every process is stopped on exit.
set -euo pipefail
# Never the public DHT (every process here names its grapes), and no state of the user's:
# node keys and the worker cache live in this run's temporary folder.
export NANO_CONNECT_NO_PUBLIC_DHT=1

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
REQUESTS=${REQUESTS:-20000}
DURATION=${DURATION:-10}
# The runtime flavours (`--runtime`) the defaults run with, and the other pairings
# (WORKER/CLIENT/CONNECTIONS) measured beside them at 64 in flight and sequentially.
# `current` is what `worker` and `bench` start on unless told otherwise.
DEFAULT_WORKER=${DEFAULT_WORKER:-current}
DEFAULT_CLIENT=${DEFAULT_CLIENT:-current}
VARIANTS=${VARIANTS-multi/multi/1 multi/current/1 current/multi/1 current/current/2 multi/multi/2}
SEQ_VARIANTS=${SEQ_VARIANTS-multi/multi/1}
BIN=$ROOT/target/release/nano-connect
source "$ROOT/benches/lib.sh"
bench_start grenache
export NANO_CONNECT_KEY="$TMP/worker.key" NANO_CONNECT_CACHE="$TMP/workers.json"

[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --bin nano-connect)

echo "# installing Grenache into $TMP" >&2
cp "$ROOT"/benches/grenache/{package.json,worker.js,client.js,summary.js} "$TMP"/
(cd "$TMP" && npm install --no-audit --no-fund --loglevel=error >/dev/null)

# Grenache: two grapes, a ws worker and an http worker.
cd "$TMP"
node_modules/.bin/grape --dp 21001 --aph 31001 --bn 127.0.0.1:21002 >grape1.log 2>&1 & PIDS+=($!)
node_modules/.bin/grape --dp 21002 --aph 31002 --bn 127.0.0.1:21001 >grape2.log 2>&1 & PIDS+=($!)
node worker.js ws http://127.0.0.1:31001 41337 >ws.log 2>&1 & PIDS+=($!)
node worker.js http http://127.0.0.1:31001 41338 >http.log 2>&1 & PIDS+=($!)
# nano-connect: two grapes of a private network and a fibonacci worker.
"$BIN" grape --dp 22001 --aph 32001 --bn none --bind 127.0.0.1 >ncg1.log 2>&1 & PIDS+=($!)
wait_listening ncg1.log
"$BIN" grape --dp 22002 --aph 32002 --bn 127.0.0.1:22001 --bind 127.0.0.1 >ncg2.log 2>&1 & PIDS+=($!)
wait_listening ncg2.log
# The same worker twice, once per tokio runtime flavour (--runtime), under two service
# keys and with a node key each.
for flavour_port in multi:42337 current:42339; do
  flavour=${flavour_port%:*}
  NANO_CONNECT_KEY=$TMP/worker-$flavour.key "$BIN" --runtime "$flavour" worker --service fibonacci \
    --announce "fibonacci_$flavour" --grape http://127.0.0.1:32001 --bind 127.0.0.1 \
    --port "${flavour_port#*:}" --announce-interval 5 >"ncw-$flavour.log" 2>&1 & PIDS+=($!)
done
for f in ws.log http.log ncw-multi.log ncw-current.log; do wait_listening "$f"; done

# Until both keys are found through the second grape (bounded: 100 tries each, ~20 s).
for key in fibonacci_multi fibonacci_current; do
  for i in $(seq 100); do
    "$BIN" -q bench --grape http://127.0.0.1:32002 --service "$key" --body '{"length":10}' \
      -n 1 --warmup 1 --timeout 2000 >/dev/null 2>&1 && break
    [ "$i" = 100 ] && { echo "compare-grenache: nano-connect worker $key never found" >&2; exit 1; }
    sleep 0.2
  done
done

nano() { # WORKER_RUNTIME CLIENT_RUNTIME CONNECTIONS CONCURRENCY
  "$BIN" -q --runtime "$2" bench --grape http://127.0.0.1:32002 --service "fibonacci_$1" \
    --body '{"length":10}' --connections "$3" -c "$4" -n "$REQUESTS" -d "$DURATION" --json || true
}
grenache() { # TRANSPORT CONCURRENCY
  timeout $((DURATION + 60)) node client.js "$1" http://127.0.0.1:31002 "$2" "$REQUESTS" "$DURATION" || true
}

RESULTS=$TMP/results.tsv
variants() { # CONCURRENCY WORKER/CLIENT/CONNECTIONS...
  local concurrency=$1 v w c n
  shift
  for v in "$@"; do
    IFS=/ read -r w c n <<<"$v"
    printf 'nano-connect %s c=%s\t%s\n' "$v" "$concurrency" "$(nano "$w" "$c" "$n" "$concurrency")" >>"$RESULTS"
  done
}
for run in $(seq "$RUNS"); do
  echo "# run $run of $RUNS" >&2
  # The defaults first, then every flavour pairing (worker/client) and connection count
  # in VARIANTS ("WORKER/CLIENT/CONNECTIONS ..."), Grenache between them.
  printf 'nano-connect c=64\t%s\n' "$(nano "$DEFAULT_WORKER" "$DEFAULT_CLIENT" 1 64)" >>"$RESULTS"
  printf 'grenache-ws c=64\t%s\n' "$(grenache ws 64)" >>"$RESULTS"
  variants 64 $VARIANTS
  printf 'nano-connect c=1\t%s\n' "$(nano "$DEFAULT_WORKER" "$DEFAULT_CLIENT" 1 1)" >>"$RESULTS"
  printf 'grenache-ws c=1\t%s\n' "$(grenache ws 1)" >>"$RESULTS"
  variants 1 $SEQ_VARIANTS
  printf 'grenache-http c=1\t%s\n' "$(grenache http 1)" >>"$RESULTS"
done

echo "fibonacci {\"length\":10}, $REQUESTS requests or ${DURATION} s per run, $RUNS runs alternating, $(nproc) cores, $(date -u +%FT%TZ)"
grep -v $'\t$' "$RESULTS" | node summary.js \
  --ratio 'throughput at 64 in flight=nano-connect c=64/grenache-ws c=64:rps' \
  --ratio 'sequential p50=nano-connect c=1/grenache-ws c=1:p50' \
  --ratio 'sequential p50 vs http=nano-connect c=1/grenache-http c=1:p50'
