#!/usr/bin/env bash
# Instructions per proxied request (GET, or POST with BODY bytes), counted by callgrind: repeatable where CPU time on a shared
# machine is not, so it is the measure of a change to the gateway's own work. The gateway
# (1 worker) runs under `valgrind --tool=callgrind` with one mock backend; wrk sends GETs
# for WARMUP seconds, the counters are zeroed, then wrk runs SECONDS more and the counters
# are dumped. Prints instructions per request, and how many of them are memcpy.
#
#   bench/callgrind/run.sh                  # CONNS=8 SECONDS_PER_RUN=8 WARMUP=3
#   CONNS=1 bench/callgrind/run.sh path/to/gateway   # another binary (e.g. an older build)
#   BODY=16384 bench/callgrind/run.sh       # POSTs with a body of that many bytes
#
# The count per request still depends a little on batching (how many requests one pass of
# the event loop serves), so compare binaries at the same CONNS. Needs: cargo, valgrind,
# wrk. Everything binds 127.0.0.1 and is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
conns=${CONNS:-8} secs=${SECONDS_PER_RUN:-8} warmup=${WARMUP:-3} body=${BODY:-0}
cargo build --release --quiet --bin gateway --bin mock-backend
bin=${1:-target/release/gateway}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
B=19701 GW=19780
. bench/lib.sh
target/release/mock-backend "$B" >/dev/null 2>&1 &
pids+=($!)
printf 'listen: 127.0.0.1:%s\nworkers: 1\npin_workers: false\naccess_log: false\nservices:\n  svc: [http://127.0.0.1:%s]\n' \
  "$GW" "$B" >"$tmp/gateway.yaml"
valgrind --tool=callgrind --callgrind-out-file="$tmp/out" "$bin" --config "$tmp/gateway.yaml" \
  >/dev/null 2>"$tmp/valgrind.log" &
vg=$!
pids+=($vg)
wait_port "$B" 300
wait_port "$GW" 300
url="http://127.0.0.1:$GW/v1/proxy/svc/x"
script=()
if ((body > 0)); then
  printf 'wrk.method = "POST"\nwrk.body = string.rep("x", %d)\n' "$body" >"$tmp/post.lua"
  script=(-s "$tmp/post.lua")
fi
timeout $((warmup + 30)) wrk -t1 -c"$conns" -d"${warmup}s" "${script[@]}" "$url" >/dev/null
callgrind_control -z "$vg" >/dev/null 2>&1
out=$(timeout $((secs + 30)) wrk -t1 -c"$conns" -d"${secs}s" "${script[@]}" "$url")
callgrind_control -d "$vg" >/dev/null 2>&1
sleep 1
n=$(awk '/requests in/ { print $1 }' <<<"$out")
dump=$(ls -t "$tmp"/out* | grep -v '^$' | head -1)
total=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
memcpy=$(callgrind_annotate --inclusive=no --threshold=100 "$dump" 2>/dev/null |
  awk '/__memcpy_avx_unaligned_erms|__memmove_avx_unaligned_erms/ { gsub(",", "", $1); s += $1 } END { print s + 0 }')
what=GET
((body > 0)) && what="POST of $body bytes"
echo "$what, connections $conns, $n requests counted: $((total / n)) instructions per request, $((memcpy / n)) of them in memcpy"
