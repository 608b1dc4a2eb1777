#!/usr/bin/env bash
# Heap allocations per proxied request under load: a uprobe on libc's malloc counts every
# call the gateway makes while wrk sends GETs over CONNS keep-alive connections (one
# worker, 2 mock backends). tests/alloc.rs proves zero allocations in-process at up to 64
# requests in flight; this counts them in the release binary at any concurrency.
#
#   sudo bench/mallocs/run.sh                    # CONNS="1 64 256" SECONDS_PER_RUN=3
#   bench/mallocs/run.sh path/to/gateway         # another binary (e.g. an older build)
#
# Needs: cargo, wrk, perf with uprobes (root), taskset, 2 cores. Everything binds
# 127.0.0.1 and is stopped by PID; the probe is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${SECONDS_PER_RUN:-3} conns=${CONNS:-"1 64 256"}
cargo build --release --quiet --bin gateway --bin mock-backend
bin=${1:-target/release/gateway}
libc=$(ldd "$bin" | awk '/libc\.so/ { print $3 }')
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  perf probe -q -d probe_libc:malloc 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
perf probe -q -d probe_libc:malloc 2>/dev/null || true # left over from an earlier run
perf probe -q -x "$libc" malloc
B1=19601 B2=19602 GW=19680
. bench/lib.sh
start_mock_backends $B1 $B2
printf 'listen: 127.0.0.1:%s\nworkers: 1\npin_workers: false\naccess_log: false\nservices:\n  svc: [http://127.0.0.1:%s, http://127.0.0.1:%s]\n' \
  "$GW" "$B1" "$B2" >"$tmp/gateway.yaml"
taskset -c 1 "$bin" --config "$tmp/gateway.yaml" >"$tmp/gateway.log" 2>&1 &
gw=$!
pids+=($gw)
for p in $B1 $B2 $GW; do wait_port "$p"; done
url="http://127.0.0.1:$GW/v1/proxy/svc/x"
printf '%-12s %10s %12s %14s\n' connections req/s mallocs "mallocs/req"
for c in $conns; do
  # Warm up at this concurrency first: buffers, pooled connections, the worker's tables.
  timeout 30 taskset -c 0 wrk -t1 -c"$c" -d2s "$url" >/dev/null
  timeout $((secs + 30)) taskset -c 0 wrk -t1 -c"$c" -d"$((secs + 2))s" "$url" >"$tmp/wrk.txt" &
  w=$!
  sleep 1
  perf stat -e probe_libc:malloc -x, -o "$tmp/stat.txt" -p "$gw" -- sleep "$secs" >/dev/null 2>&1
  wait "$w"
  rps=$(awk '/Requests\/sec/ { print $2 }' "$tmp/wrk.txt")
  m=$(awk -F, '/malloc/ { print $1 }' "$tmp/stat.txt")
  awk -v c="$c" -v r="$rps" -v m="$m" -v s="$secs" \
    'BEGIN { printf "%-12s %10.0f %12d %14.4f\n", c, r, m, m / (r * s) }'
done
