#!/usr/bin/env bash
# A fuzzing campaign: each target in turn (one at a time, at nice 10, so that it takes
# one core), for RUNS executions (default 10 million), over a working corpus in
# target/fuzz-corpus/<target> that starts from the committed fuzz/corpus/<target>.
# Prints one line per target: executions, seconds, executions per second, coverage
# (libFuzzer's cov: edges, ft: features) and corpus size; a crash stops that target and
# says where libFuzzer wrote the input (fuzz/artifacts/<target>/).
#
#   fuzz/campaign.sh                      # every target
#   RUNS=100000 fuzz/campaign.sh policy   # one target, a short run
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). No sanitizer
# (`-s none`): the code is safe Rust, and AddressSanitizer made the targets 3 to 5
# times slower here. Debug assertions and overflow checks stay on (cargo-fuzz's
# default), so an arithmetic overflow is a finding. docs/fuzzing.md has the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-10000000}
target_dir=${CARGO_TARGET_DIR:-$(pwd)/target}/fuzz
mapfile -t all < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^nano-connect-fuzz$')
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
nice -n 10 cargo +nightly fuzz build -s none --target-dir "$target_dir"
mkdir -p target/fuzz-logs
for t in "${targets[@]}"; do
  work=target/fuzz-corpus/$t
  mkdir -p "$work"
  cp -n fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
  log=target/fuzz-logs/$t.log
  start=$(date +%s.%N)
  status=0
  nice -n 10 cargo +nightly fuzz run -s none --target-dir "$target_dir" "$t" "$work" -- \
    -runs="$runs" -print_final_stats=1 >"$log" 2>&1 || status=$?
  end=$(date +%s.%N)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\) ft: \([0-9]*\) corp: \([0-9]*\).*/cov \1 ft \2 corpus \3/p' <<<"$done_line")
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", b - a }')
  rate=$(awk -v n="${execs:-0}" -v s="$secs" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
  if [ "$status" -ne 0 ]; then
    echo "$t: STOPPED (exit $status) after ${execs:-?} executions; $(grep -m1 -o 'Test unit written to .*' "$log" || echo "see $log")"
  else
    echo "$t: $execs executions in $secs s ($rate/s), $cov"
  fi
done
