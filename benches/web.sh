#!/usr/bin/env bash
# The web face's figures of docs/benchmarks.md (issue 12), on 127.0.0.1: a grape, one
# worker relaying nano_rpc to the Nano node stand-in (examples/nano_stub.rs), and headless
# Chromium loading web/index.html (benches/web.mjs over tests/web/browser.mjs):
#   - page load to first answer (navigation start to block_count shown), LOADS fresh loads;
#   - in-browser request time, REQUESTS block_count requests one after another.
#
# Usage: benches/web.sh                 (LOADS=10 REQUESTS=500)
# Needs node, npm ci --prefix tests/web, /usr/bin/chromium, and release builds (made if
# missing). Stops every process on exit.
set -euo pipefail
export NANO_CONNECT_NO_PUBLIC_DHT=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOADS=${LOADS:-10}
REQUESTS=${REQUESTS:-500}
REL=$ROOT/target/release
BIN=$REL/nano-connect
STUB=$REL/examples/nano_stub
source "$ROOT/benches/lib.sh"
bench_start web-bench
export NANO_CONNECT_KEY="$TMP/worker.key" NANO_CONNECT_CACHE="$TMP/workers.json"

if [ ! -x "$BIN" ] || [ ! -x "$STUB" ]; then
  (cd "$ROOT" && cargo build --release --bin nano-connect --example nano_stub)
fi
[ -d "$ROOT/tests/web/node_modules/playwright-core" ] || npm ci --no-audit --no-fund --prefix "$ROOT/tests/web"
cd "$TMP"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ), commit $(git -C "$ROOT" rev-parse --short HEAD)"
"$STUB" >stub.log 2>&1 & PIDS+=($!)
wait_listening stub.log
node_url=$(field stub.log url)
"$BIN" -q grape --dp 47301 --aph 47302 --bn none --bind 127.0.0.1 --web-port 47303 \
  --web-certs "$TMP/grape-web.json" >grape.log 2>&1 & PIDS+=($!)
wait_listening grape.log
bootstrap=$(grep -o '"web":"[^"]*"' grape.log | head -1 | cut -d'"' -f4)
"$BIN" -q worker --announce nano_rpc --grape http://127.0.0.1:47302 --nano-rpc "$node_url" \
  --public --bind 127.0.0.1 --port 47304 --announce-interval 1 >worker.log 2>&1 & PIDS+=($!)
wait_listening worker.log
for _ in $(seq 200); do
  curl -fsS -X POST -d '{"data":"nano_rpc"}' http://127.0.0.1:47302/lookup 2>/dev/null | grep -q 47304 && break
  sleep 0.1
done
node "$ROOT/benches/web.mjs" "$bootstrap" "$LOADS" "$REQUESTS"
