# What every bench script shares (sourced, not run): a scratch folder and the processes
# the script started, both gone when it exits or is interrupted, and readers of the
# JSON lines the processes print.
#
#   source "$ROOT/benches/lib.sh"
#   bench_start NAME          # TMP=/tmp/nano-connect-NAME.XXXXXX, PIDS=(), trap on exit
#   "$BIN" worker ... >worker.log 2>&1 & PIDS+=($!)
#   wait_listening worker.log # at most 20 s for its "listening" line
#   field worker.log addr     # a field of the first JSON line that has it

bench_start() {
  BENCH_NAME=$1
  TMP=$(mktemp -d "/tmp/nano-connect-$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT INT TERM
}

# Stops every process in PIDS (and waits for each), then removes TMP.
bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}

# FILE: waits (at most 20 s, 200 polls) for a "listening" line; prints FILE if none came.
wait_listening() {
  for _ in $(seq 200); do
    grep -q '"listening"' "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$BENCH_NAME: $1 never reported listening:" >&2
  cat "$1" >&2
  return 1
}

# FILE NAME: the value of "NAME" in FILE's first line that has it, without quotes.
field() { grep -o "\"$2\":[^,}]*" "$1" | head -1 | cut -d: -f2- | tr -d '"'; }

# PID: its resident memory, KiB (0 once it is gone).
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
