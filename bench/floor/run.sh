#!/usr/bin/env bash
# Floors for the gateway's CPU per request: the gateway (defaults: 1 worker, no access log)
# and NGINX (bench.sh's equal-work peer, bench/peers/nginx.conf) against blind TCP relays
# that do no HTTP work: HAProxy `mode tcp` (bench.sh's tcp-relay,
# epoll), `ring-relay` written straight on io_uring, `ring-relay --monoio` on the gateway's
# runtime and ring setup, and `ring-relay --monoio-epoll` on that runtime's epoll driver
# (bench/src/bin/ring_relay.rs). All six run at once on core 1, idle when
# not measured; three mock backends and loadgen (1 thread) on core 0. Each round measures
# every target once, in turn: loadgen's 5 s window, the target's utime+stime over exactly
# that window (sampled when loadgen prints its window start and end), divided by the
# requests in it.
#
#   bench/floor/run.sh                    # ROUNDS=5 CONNS=64 SECONDS_PER_RUN=5
#   CONNS=1 ROUNDS=3 bench/floor/run.sh   # another load; LOADGEN_ARGS="--rate 10000" too
#   GATEWAY_B=path/to/other/gateway bench/floor/run.sh   # also an A/B: that build as gateway-b
#   ONLY="gateway gateway-b nginx" bench/floor/run.sh     # measure only these targets
#
# Prints one line per target per round, then each target's median and its median ratio to
# the others; writes raw loadgen output to $OUT (default: a temporary directory, removed).
# Needs: cargo, haproxy, nginx, taskset, 2 cores. Everything binds 127.0.0.1 and is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
rounds=${ROUNDS:-5} conns=${CONNS:-64} secs=${SECONDS_PER_RUN:-5}
cargo build --release --quiet --locked --bins -p gateway -p loadgen
tmp=$(mktemp -d)
out=${OUT:-$tmp/out}
mkdir -p "$out"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
B1=19501 B2=19502 B3=19503 BDOWN=19504 GW=19580 GWB=19581 NGINX=19582 TCP=19583 RAW=19584 MONO=19585
EPOLL=19586
start_mock_backends $B1 $B2 $B3
wait_port $B1 && wait_port $B2 && wait_port $B3
cat >"$tmp/gateway.yaml" <<YAML
listen: 127.0.0.1:$GW
workers: 1
pin_workers: false
services:
  bench: [http://127.0.0.1:$B1, http://127.0.0.1:$B2, http://127.0.0.1:$B3]
YAML
RUST_LOG=warn taskset -c 1 target/release/gateway --config "$tmp/gateway.yaml" >"$tmp/gateway.log" 2>&1 &
gw=$!
pids+=($gw)
targets=("gateway $GW $gw")
if [[ -n ${GATEWAY_B:-} ]]; then
  sed -e "s/^listen: .*/listen: 127.0.0.1:$GWB/" "$tmp/gateway.yaml" >"$tmp/gateway-b.yaml"
  RUST_LOG=warn taskset -c 1 "$GATEWAY_B" --config "$tmp/gateway-b.yaml" >"$tmp/gateway-b.log" 2>&1 &
  pids+=($!)
  targets+=("gateway-b $GWB $!")
  wait_port $GWB
fi
start_nginx $NGINX $B1 $B2 $B3 $BDOWN
ng=$nginx_pid
sed -e "s/@TCP_PORT@/$TCP/; s/@B1@/$B1/; s/@B2@/$B2/; s/@B3@/$B3/" bench/peers/haproxy-tcp.cfg >"$tmp/tcp.cfg"
taskset -c 1 haproxy -db -f "$tmp/tcp.cfg" >"$tmp/haproxy.log" 2>&1 &
hp=$!
pids+=($hp)
taskset -c 1 target/release/ring-relay $RAW $B1 $B2 $B3 >"$tmp/raw.log" 2>&1 &
raw=$!
pids+=($raw)
taskset -c 1 target/release/ring-relay --monoio $MONO $B1 $B2 $B3 >"$tmp/mono.log" 2>&1 &
mono=$!
pids+=($mono)
taskset -c 1 target/release/ring-relay --monoio-epoll $EPOLL $B1 $B2 $B3 >"$tmp/epoll.log" 2>&1 &
epoll=$!
pids+=($epoll)
for p in $GW $NGINX $TCP $RAW $MONO $EPOLL; do wait_port $p; done
targets+=("nginx $NGINX $ng" "haproxy-tcp $TCP $hp" "ring-relay $RAW $raw" "monoio-relay $MONO $mono"
  "monoio-epoll-relay $EPOLL $epoll")

# ticks PID: the user and system time so far of PID and its children (NGINX's worker), in
# clock ticks ("utime stime").
ticks() {
  local u=0 k=0 p s kids=()
  [[ -r /proc/$1/task/$1/children ]] && read -r -a kids <"/proc/$1/task/$1/children" || true
  for p in "$1" "${kids[@]}"; do
    s=$(<"/proc/$p/stat") || continue
    s=${s##*) }
    local -a f
    read -r -a f <<<"$s"
    u=$((u + f[11])) k=$((k + f[12]))
  done
  echo "$u $k"
}
hz=$(getconf CLK_TCK)
# measure LABEL PORT PID: one loadgen run; prints "LABEL us_per_req req_per_s user_us sys_us
# p99_us p999_us" (CPU µs per request: all, then its user and system parts; then loadgen's
# latency percentiles, in µs).
measure() {
  local label=$1 port=$2 pid=$3 log="$out/$1-r$round.txt" a b n rps
  # shellcheck disable=SC2086
  taskset -c 0 target/release/loadgen --url "http://127.0.0.1:$port/v1/proxy/bench/hello" \
    --threads 1 --connections "$conns" --warmup 2s --duration "${secs}s" --label "$label" \
    --out-dir "$out" ${LOADGEN_ARGS:-} >"$log" 2>&1 &
  local lg=$!
  until grep -q '^loadgen: window start' "$log" 2>/dev/null; do
    kill -0 $lg 2>/dev/null || grep -q '^loadgen: window start' "$log" || { cat "$log" >&2; exit 1; }
    sleep 0.005
  done
  a=$(ticks "$pid")
  until grep -q '^loadgen: window end' "$log" 2>/dev/null; do
    # It may have written the line and exited since the grep above.
    kill -0 $lg 2>/dev/null || grep -q '^loadgen: window end' "$log" || { cat "$log" >&2; exit 1; }
    sleep 0.005
  done
  b=$(ticks "$pid")
  wait $lg
  grep -q 'non-2xx 0, timeouts 0), errors: none' "$log" || echo "$label: loadgen saw failures ($log)" >&2
  n=$(grep -m1 'requests in' "$log" | awk '{ print $2 }')
  rps=$(grep -m1 -oE '[0-9.]+ req/s' "$log" | awk '{ print $1 }')
  p99=$(us "$(grep -m1 -oE ' p99 [0-9.]+(µs|ms|s)' "$log" | awk '{ print $2 }')")
  p999=$(us "$(grep -m1 -oE ' p99\.9 [0-9.]+(µs|ms|s)' "$log" | awk '{ print $2 }')")
  awk -v l="$label" -v a="$a" -v b="$b" -v hz="$hz" -v n="$n" -v r="$rps" -v p="$p99 $p999" 'BEGIN {
    split(a, x, " "); split(b, y, " "); u = (y[1] - x[1]) * 1e6 / hz / n; k = (y[2] - x[2]) * 1e6 / hz / n
    printf "%s %.2f %s %.2f %.2f %s\n", l, u + k, r, u, k, p }'
}
# us 6.17ms: a loadgen duration in µs.
us() {
  awk -v d="$1" 'BEGIN {
    m = 1; if (d ~ /µs$/) m = 1; else if (d ~ /ms$/) m = 1e3; else if (d ~ /s$/) m = 1e6
    sub(/(µs|ms|s)$/, "", d); printf "%.0f", d * m }'
}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') (family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')), $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ)"
echo "GET, $conns connections, loadgen 1 thread ${LOADGEN_ARGS:-}; per target: CPU µs per request over loadgen's ${secs} s window, req/s, user µs, system µs, p99 µs, p99.9 µs"
results=()
for round in $(seq "$rounds"); do
  for t in "${targets[@]}"; do
    [[ -z ${ONLY:-} || " $ONLY " == *" ${t%% *} "* ]] || continue
    # shellcheck disable=SC2086
    line=$(measure $t)
    echo "round $round: $line"
    results+=("$round $line")
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics as st
rows = [l.split() for l in sys.stdin if l.strip()]
by = {}
parts = {}
lat = {}
for r, label, us, rps, user, sys_, p99, p999 in rows:
    by.setdefault(label, {})[int(r)] = float(us)
    parts.setdefault(label, []).append((float(user), float(sys_), float(rps)))
    lat.setdefault(label, []).append((float(p99), float(p999)))
names = list(by)
med = {n: st.median(by[n].values()) for n in names}
print("medians, µs per request: " + ", ".join(f"{n} {med[n]:.2f}" for n in names))
for n in names:
    u, k, r = (st.median(p[i] for p in parts[n]) for i in range(3))
    print(f"  {n}: user {u:.2f}, system {k:.2f} µs per request (medians), {r:.0f} req/s")
for n in names:
    p = sorted(x[0] for x in lat[n]); q = sorted(x[1] for x in lat[n])
    print(f"  {n}: p99 {st.median(p):.0f} µs (rounds {p[0]:.0f}-{p[-1]:.0f}), p99.9 {st.median(q):.0f} µs (rounds {q[0]:.0f}-{q[-1]:.0f})")
for a in names:
    for b in names:
        if names.index(a) < names.index(b):
            per = [by[a][r] / by[b][r] for r in sorted(by[a]) if r in by[b]]
            print(f"  {a} / {b}: {med[a] / med[b]:.2f}x (per round {min(per):.2f}-{max(per):.2f})")
'
