#!/usr/bin/env bash
# The gateway alone at 10 000 client connections, watched from inside: each second the
# descriptors it holds, the upstream connects it made so far, its idle and active upstream
# connections and its own error responses (from /metrics), then loadgen's latency and the
# gateway's CPU per request. What bench.sh's get-c10k measures with three other proxies on
# the machine, without them.
#
#   bench/c10k/run.sh            # CONNS=10000 WARMUP=5s DURATION=6s MAX_CONNECTIONS=10100
#                                # GATEWAY_BIN=path (another build, for an A/B)
#
# Connects after the warm-up, or descriptors near the limit, point at the pool or the
# connection cap; with neither, a long tail comes from how evenly the connections are
# served (loadgen and the backends share core 0). Needs: cargo, taskset, curl, 2 cores, an
# open-file limit of 20000.
# Everything binds 127.0.0.1 and is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
conns=${CONNS:-10000} warmup=${WARMUP:-5s} duration=${DURATION:-6s}
. bench/lib.sh
GATEWAY_EXTRA=$'timeouts:\n  connect: 10s' start_gateway_alone
echo "open-file limit $(ulimit -n); $(grep -o 'descriptors: .*' "$tmp/gateway.log" || true)"
taskset -c 0 target/release/loadgen --url "http://127.0.0.1:$GW/v1/proxy/bench/hello" \
  --connections "$conns" --warmup "$warmup" --duration "$duration" --threads 1 \
  --out-dir "$tmp/lg" >"$tmp/loadgen.txt" 2>&1 &
lg=$!
pids+=($lg)
sample() {
  curl -s "127.0.0.1:$ADMIN/metrics" | awk '
    /^gateway_upstream_connect_seconds_count/ { c += $2 }
    /^gateway_pool_connections\{state="idle"\}/ { i = $2 }
    /^gateway_pool_connections\{state="active"\}/ { a = $2 }
    /^gateway_client_connections / { cl = $2 }
    /^gateway_errors_total/ { e += $2 }
    /^gateway_requests_total/ { r += $2 }
    /^gateway_in_flight/ { fl += $2 }
    /^process_open_fds/ { f = $2 }
    END { printf "requests %d  in flight %d  clients %d  fds %d  upstream connects %d  idle %d  active %d  errors %d\n", r, fl, cl, f, c, i, a, e }'
}
ticks() { awk '{print $14 + $15}' "/proc/$gw/stat"; }
warm=${warmup%s}
t=0
while kill -0 "$lg" 2>/dev/null; do
  sleep 1
  t=$((t + 1))
  [[ $t == "$warm" ]] && t0=$(ticks)
  echo "t=${t}s  $(sample)"
done
t1=$(ticks)
line=$(grep "requests in" "$tmp/loadgen.txt" | head -1)
echo "$line"
grep "per connection" "$tmp/loadgen.txt" || true
n=$(echo "$line" | grep -o '[0-9]* requests in' | awk '{print $1}')
# utime+stime in clock ticks (100 Hz) from the end of the warm-up (to the second) to the end.
[[ -n "${t0:-}" && -n "$n" ]] && awk -v a="$t0" -v b="$t1" -v n="$n"   'BEGIN { printf "gateway CPU per request after the warm-up: %.1f µs\n", (b - a) * 10000 / n }'
