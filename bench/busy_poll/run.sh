#!/usr/bin/env bash
# What `busy_poll` buys and costs: the gateway (1 worker, core 1) with busy_poll off and
# on, one mock backend and loadgen on core 0. Closed loop at 1 connection (latency added
# over direct, CPU per request), then open loop at fixed rates over 8 connections: the
# share of core 1 the gateway uses (its utime+stime over the run) and loadgen's latency.
#
#   bench/busy_poll/run.sh [SPIN ...]        # default: 50us 200us
#   RATES="1000 10000" ROUNDS=2 bench/busy_poll/run.sh 200us
#
# Open-loop latency includes loadgen's own wake-up lag (it sleeps between sends), so it
# says less than the 1-connection figures. Needs: cargo, taskset, 2 cores. Everything
# binds 127.0.0.1 and is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
spins=("$@")
((${#spins[@]})) || spins=(50us 200us)
rates=${RATES:-1000 10000} rounds=${ROUNDS:-2}
cargo build --release --quiet --bin gateway --bin mock-backend
cargo build --release --quiet -p loadgen
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
B=19401 GW=19480
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
taskset -c 0 target/release/mock-backend "$B" >"$tmp/mock.log" 2>&1 &
pids+=($!)
wait_port "$B"
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# run MODE ARGS... : starts the gateway with busy_poll MODE (off: none), runs loadgen with
# ARGS against it (or straight at the backend for MODE direct), prints one line.
run() {
  local mode=$1 label=$1 g="" url="http://127.0.0.1:$GW/v1/proxy/svc/x"
  shift
  if [[ $mode == direct ]]; then
    url="http://127.0.0.1:$B/x"
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
  [[ -n $g ]] && t1=$(ticks "$g")
  local line reqs
  line=$(grep -m1 'requests in' "$tmp/lg.txt")
  reqs=$(awk '{ print $1 }' <<<"$line")
  if [[ -n $g ]]; then
    kill "$g"
    wait "$g" 2>/dev/null || true
  fi
  awk -v m="$label" -v t="$((t1 - t0))" -v hz="$hz" -v w="$(echo "$s1 - $s0" | bc -l)" \
    -v n="$reqs" -v l="$line" 'BEGIN {
      match(l, /[0-9.]+ req\/s/); rps = substr(l, RSTART, RLENGTH)
      match(l, /p50 [^ ]+ p99 [^ ]+ p99.9 [^ ]+/); lat = substr(l, RSTART, RLENGTH)
      cpu = (m == "direct") ? "—" : sprintf("%.0f%% of core 1 (whole run)", 100 * t / hz / w)
      printf "  %-7s %-14s %s, %s\n", m, rps, lat, cpu
    }'
}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%d)"
for r in $(seq "$rounds"); do
  echo "round $r: closed loop, 1 connection"
  for m in direct off "${spins[@]}"; do run "$m" --connections 1; done
  for rate in $rates; do
    echo "round $r: open loop, $rate req/s over 8 connections"
    for m in off "${spins[@]}"; do run "$m" --connections 8 --rate "$rate"; done
  done
done
