#!/usr/bin/env bash
# What `busy_poll` buys and costs: the gateway (1 worker, core 1) with busy_poll off and
# on, one mock backend and loadgen on core 0. Closed loop at 1 connection (latency added
# over direct, CPU per request), then open loop at fixed rates over 8 connections: the
# share of core 1 the gateway uses (its utime+stime over the run) and loadgen's latency.
#
#   bench/busy_poll/run.sh [SPIN ...]        # default: 50us 200us
#   RATES="1000 10000" ROUNDS=2 bench/busy_poll/run.sh 200us
#   FLOORS=1 RATES= bench/busy_poll/run.sh 200us   # also NGINX and the blind relays at 1 conn
#
# FLOORS=1 adds, to the 1-connection runs, NGINX (bench/peers/nginx.conf, bench.sh's
# equal-work peer) and `ring-relay` (bench/src/bin/ring_relay.rs, a blind relay that does no
# HTTP work), the relay also with `--spin` for each SPIN: the least any proxy on core 1
# can add over direct, sleeping between requests and spinning.
#
# Open-loop latency includes loadgen's own wake-up lag (it sleeps between sends), so it
# says less than the 1-connection figures. Needs: cargo, taskset, 2 cores. Everything
# binds 127.0.0.1 and is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
spins=("$@")
((${#spins[@]})) || spins=(50us 200us)
rates=${RATES-1000 10000} rounds=${ROUNDS:-2}
cargo build --release --quiet --bin gateway --bin mock-backend
cargo build --release --quiet -p loadgen --bins
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
B=19401 GW=19480
taskset -c 0 target/release/mock-backend "$B" >"$tmp/mock.log" 2>&1 &
pids+=($!)
wait_port "$B"
# ticks PID: utime+stime of PID and its children (NGINX's worker), in clock ticks.
ticks() {
  local t=0 p kids=()
  [[ -r /proc/$1/task/$1/children ]] && read -r -a kids <"/proc/$1/task/$1/children" || true
  for p in "$1" "${kids[@]}"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
  echo "$t"
}
# us_of 200us|1ms: microseconds.
us_of() { case $1 in *us) echo "${1%us}" ;; *ms) echo $((${1%ms} * 1000)) ;; *) echo "$1" ;; esac; }
BDOWN=19402
hz=$(getconf CLK_TCK)
# run MODE ARGS... : starts the gateway with busy_poll MODE (off: none), or NGINX, or the
# relay (relay, relay-SPIN), runs loadgen with ARGS against it (or straight at the backend
# for MODE direct), stops it, prints one line.
run() {
  local mode=$1 label=$1 g="" url="http://127.0.0.1:$GW/v1/proxy/svc/x"
  shift
  if [[ $mode == direct ]]; then
    url="http://127.0.0.1:$B/x"
  elif [[ $mode == relay* ]]; then
    url="http://127.0.0.1:$GW/x"
    local spin_us=()
    [[ $mode == relay-* ]] && spin_us=(--spin "$(us_of "${mode#relay-}")")
    taskset -c 1 target/release/ring-relay "${spin_us[@]}" "$GW" "$B" >"$tmp/relay.log" 2>&1 &
    g=$!
    pids+=($g)
    wait_port "$GW"
  elif [[ $mode == nginx ]]; then
    url="http://127.0.0.1:$GW/v1/proxy/bench/x"
    start_nginx "$GW" "$B" "$B" "$B" "$BDOWN"
    g=$nginx_pid
    wait_port "$GW"
  else
    { [[ $mode == off ]] || echo "busy_poll: $mode"
      printf 'listen: 127.0.0.1:%s\nworkers: 1\npin_workers: false\naccess_log: false\n' "$GW"
      printf 'services:\n  svc: [http://127.0.0.1:%s]\n' "$B"; } >"$tmp/gw.yaml"
    RUST_LOG=warn taskset -c 1 target/release/gateway --config "$tmp/gw.yaml" >"$tmp/gw.log" 2>&1 &
    g=$!
    pids+=($g)
    wait_port "$GW"
  fi
  local t0=0 t1=0 s0 s1
  [[ -n $g ]] && t0=$(ticks "$g")
  s0=$(date +%s.%N)
  taskset -c 0 target/release/loadgen --url "$url" "$@" --warmup 1s --duration 4s \
    --label "$label" --out-dir "$tmp" >"$tmp/lg.txt" 2>&1
  s1=$(date +%s.%N)
  if [[ -n $g ]] && ! kill -0 "$g" 2>/dev/null; then
    echo "$label ended before its run did:" >&2
    cat "$tmp"/*.log >&2
    exit 1
  fi
  [[ -n $g ]] && t1=$(ticks "$g")
  local line reqs
  line=$(grep -m1 'requests in' "$tmp/lg.txt")
  reqs=$(awk '{ print $1 }' <<<"$line")
  if [[ -n $g ]]; then
    kill "$g"
    wait "$g" 2>/dev/null || true
    wait_port_free "$GW"
  fi
  awk -v m="$label" -v t="$((t1 - t0))" -v hz="$hz" -v w="$(echo "$s1 - $s0" | bc -l)" \
    -v n="$reqs" -v l="$line" 'BEGIN {
      match(l, /[0-9.]+ req\/s/); rps = substr(l, RSTART, RLENGTH)
      match(l, /p50 [^ ]+ p99 [^ ]+ p99.9 [^ ]+/); lat = substr(l, RSTART, RLENGTH)
      cpu = (m == "direct") ? "—" : sprintf("%.0f%% of core 1 (whole run)", 100 * t / hz / w)
      printf "  %-13s %-14s %s, %s\n", m, rps, lat, cpu
    }'
}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%d)"
for r in $(seq "$rounds"); do
  echo "round $r: closed loop, 1 connection"
  modes=(direct off "${spins[@]}")
  if [[ -n ${FLOORS:-} ]]; then
    modes+=(nginx relay)
    for s in "${spins[@]}"; do modes+=("relay-$s"); done
  fi
  for m in "${modes[@]}"; do run "$m" --connections 1; done
  for rate in $rates; do
    echo "round $r: open loop, $rate req/s over 8 connections"
    for m in off "${spins[@]}"; do run "$m" --connections 8 --rate "$rate"; done
  done
done
