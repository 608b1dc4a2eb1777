#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60) on the stable toolchain
# (`-s none`: no sanitizer, but debug assertions and overflow checks on), starting from the
# seeds in fuzz/corpus/TARGET (new inputs go to fuzz/corpus/TARGET/tmp, crashes to
# fuzz/artifacts/TARGET). Prints executions and crashes per target; exits 1 on any crash.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET ...]
set -uo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(request_head chunked response_head config)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || exit 2
cargo fuzz build -s none -a || exit 2

crashed=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t/tmp"
    log="$(mktemp)"
    cargo fuzz run -s none -a "$t" "fuzz/corpus/$t/tmp" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
    crashes=0
    if [[ $rc -ne 0 ]]; then
        crashes=1
        crashed=1
        grep -E 'panicked at|SUMMARY|Test unit written to' "$log" | head -5
    fi
    summary+=("fuzz: $t: ${execs:-?} executions, $crashes crashes, ${secs}s")
    rm -f "$log"
done
printf '%s\n' "${summary[@]}"
exit $crashed
