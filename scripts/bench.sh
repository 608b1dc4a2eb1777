#!/usr/bin/env bash
# Benchmark the gateway against NGINX and HAProxy on this machine, in one run.
#
#   scripts/bench.sh            # full: 9 scenarios x 3 interleaved rounds, ~22 min on 2 cores
#                               # (3 x 49 runs of ~8.5 s, get-c10k ~12 s; BENCH_ROUNDS=5,
#                               # the README's runs: ~36 min)
#   scripts/bench.sh --quick    # GET c64, open loop, breaker; 1 round, short runs (< 2 min)
#
# Builds release (gateway, mock-backend, loadgen, ring-relay), starts 3 mock backends and
# every target below, and measures with the same load, interleaved per scenario (A B C D A B C D ...):
#   direct     loadgen -> mock-backend :19001 (the ceiling)
#   gateway    1 worker                 :18080
#   nginx      1 worker                 :18081  (bench/peers/nginx.conf)
#   haproxy    1 thread                 :18082  (bench/peers/haproxy.cfg)
#   tcp-relay  1 thread                 :18083  (bench/peers/haproxy-tcp.cfg: HAProxy in
#              mode tcp, a blind relay that does no HTTP work: the floor, not a peer)
#   ring-relay 1 thread                 :18086  (ring-relay from bench/: the same blind relay
#              straight on io_uring with the gateway's ring setup, the floor for a proxy
#              on the ring; bench/README.md, *Floors*; GET and POST 16 KiB only: its reads
#              are 16 KiB, so it says nothing about long bodies)
#   gateway-spin  1 worker, busy_poll: 200us  :18084  (get-c1 and open-loop only: the opt-in
#              setting that polls the ring instead of sleeping between requests)
#   ring-relay-spin 1 thread, --spin 200      :18087  (get-c1 only: ring-relay polling its
#              ring for 200 µs after each completion as busy_poll does: the least any
#              proxy on the proxy core adds over direct, spinning)
#   gateway-splice  1 worker, splice: true    :18085  (1 MiB scenarios only: the opt-in
#              setting that splices long bodies socket to socket)
# Pinning: loadgen (1 thread) and the mock backends on core 0, the proxy under test alone
# on core 1 (every target runs all the time, idle when not measured).
#
# Scenarios (closed loop unless said): get-c1, get-c64, get-c256 (GET at 1/64/256
# connections), post16k-c64 (POST, 16 KiB body), open-loop (GET at a fixed rate, 10k
# req/s unless BENCH_RATE, 64 connections), breaker (one of three backends down),
# upload-1m (POST, 1 MiB body, 16 connections), download-1m (GET answered with 1 MiB, 16
# connections; the request carries `x-mock-body-bytes: 1048576`), get-c10k (GET at 10000
# connections, warm-up at least 5 s, loadgen timeout 30 s; no tcp-relay there: it needs
# two descriptors per connection, over the open-file limit of 20000 here).
#
# For every run it records the proxy process's CPU time (utime+stime of the process and
# its children from /proc/PID/stat) over loadgen's measurement window (from its
# `loadgen: window start` line to its `loadgen: window end` line), divided by the
# requests loadgen reports (the primary figure), and the utilization of core 0 (load) and
# core 1 (proxy) from /proc/stat over the same window.
#
# Output: bench/results/<YYYY-MM-DD>/ (--quick: <YYYY-MM-DD>-quick/; a later run the same day
# -2, -3, ...: never overwritten): report.md, the
# loadgen .json/.hgrm files (<scenario>/r<N>/<target>.*), plot-<scenario>.svg, runs.tsv;
# process logs and rendered configs in tmp/ (git-ignored).
#
# Environment: BENCH_OUT (result directory), BENCH_RATE (open-loop req/s; default 10000, a
# rate the load core sustains without saturating, see OPEN_LOOP_RATE), BENCH_ROUNDS,
# BENCH_DURATION / BENCH_WARMUP (seconds per run), BENCH_MAX_SECONDS (watchdog, 3600),
# BENCH_PERF=1 (one extra gateway run under perf record -g), BENCH_NOTE (text for the report),
# BENCH_NICE (nice level for every benchmark process, e.g. -5 on a shared machine),
# BENCH_SCENARIOS (space-separated subset of: get-c1 get-c64 get-c256 post16k-c64
# open-loop breaker upload-1m download-1m get-c10k limits; `limits` is the gateway with
# and without a service-wide rate limit and max_in_flight above the load, not in the
# default set), CARGO_TARGET_DIR (honoured). Needs: cargo, python3, taskset, nginx,
# haproxy (installed with apt-get when missing), 2+ cores, and an open-file limit
# (ulimit -n) of at least 20000 for get-c10k.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=0
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $a (use --quick)" >&2; exit 2 ;;
  esac
done

# Ports (all on 127.0.0.1).
GW_PORT=18080
NGINX_PORT=18081
HAPROXY_PORT=18082
TCP_PORT=18083 # HAProxy in mode tcp: the tcp-relay target
SPIN_PORT=18084 # the gateway with busy_poll: the gateway-spin target
SPIN_POLL=200us
SPLICE_PORT=18085 # the gateway with splice: true: the gateway-splice target
RING_PORT=18086 # bench/src/bin/ring_relay.rs: the ring-relay target
RING_SPIN_PORT=18087 # the same with --spin (as busy_poll: $SPIN_POLL): the ring-relay-spin target
B1=19001 B2=19002 B3=19003
BDOWN=19004 # nothing listens here: the "down" backend of the breaker scenario
LOAD_CORE=0
PROXY_CORE=1

if ((quick)); then
  rounds=${BENCH_ROUNDS:-1} warmup=${BENCH_WARMUP:-1} duration=${BENCH_DURATION:-3}
  scenarios=(get-c64 open-loop breaker)
else
  rounds=${BENCH_ROUNDS:-3} warmup=${BENCH_WARMUP:-2} duration=${BENCH_DURATION:-6}
  scenarios=(get-c1 get-c64 get-c256 post16k-c64 open-loop breaker upload-1m download-1m get-c10k)
fi
if [[ -n "${BENCH_SCENARIOS:-}" ]]; then
  read -r -a scenarios <<<"$BENCH_SCENARIOS"
fi
max_seconds=${BENCH_MAX_SECONDS:-3600}
# BENCH_NICE=-5 (say) runs every benchmark process at that priority, so that other work on
# a shared machine takes less of the two cores; the same for every target.
nice_cmd=()
[[ -n "${BENCH_NICE:-}" ]] && nice_cmd=(nice -n "$BENCH_NICE")
date_dir=$(date -u +%F)
((quick)) && date_dir="$date_dir-quick"
out=${BENCH_OUT:-bench/results/$date_dir}
# A second run on the same day gets its own directory (…-2, …-3): never overwrite results.
if [[ -z "${BENCH_OUT:-}" ]]; then
  n=2
  while [[ -e "$out" ]]; do out="bench/results/$date_dir-$n" n=$((n + 1)); done
fi
command_line="scripts/bench.sh${*:+ $*}"
for v in CARGO_TARGET_DIR BENCH_OUT BENCH_RATE BENCH_ROUNDS BENCH_DURATION BENCH_WARMUP \
  BENCH_SCENARIOS BENCH_NICE BENCH_PERF; do
  [[ -n "${!v:-}" ]] && command_line="$v=${!v@Q} $command_line"
done

# get-c10k: 10000 client connections plus the proxies' backend connections. Every
# process started from here inherits the soft limit, raised to the hard one.
if [[ " ${scenarios[*]} " == *" get-c10k "* ]]; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  if [[ "$(ulimit -n)" != unlimited ]] && (($(ulimit -n) < 20000)); then
    echo "bench.sh: get-c10k needs an open-file limit of 20000 (ulimit -n is $(ulimit -n))" >&2
    exit 1
  fi
fi

if (($(nproc) < 2)); then
  echo "bench.sh: needs at least 2 cores (load on core $LOAD_CORE, proxy on core $PROXY_CORE)" >&2
  exit 1
fi

# --- tools ------------------------------------------------------------------------------
need_pkgs=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need_pkgs+=(nginx)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need_pkgs+=(haproxy)
if ((${#need_pkgs[@]})); then
  echo "installing ${need_pkgs[*]} (apt-get)..."
  sudo_cmd=()
  ((EUID == 0)) || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
PATH="$PATH:/usr/sbin:/sbin"
for t in python3 taskset nginx haproxy cargo; do
  command -v "$t" >/dev/null || { echo "bench.sh: $t not found" >&2; exit 1; }
done

echo "building (release)..."
build_log=$(mktemp)
if ! cargo build --release --locked --bins -p gateway -p loadgen >"$build_log" 2>&1; then
  tail -n 30 "$build_log" >&2
  rm -f "$build_log"
  echo "bench.sh: build failed" >&2
  exit 1
fi
tail -n 1 "$build_log"
rm -f "$build_log"
bin="${CARGO_TARGET_DIR:-target}/release"
[[ "$bin" == /* ]] || bin="$root/$bin"
loadgen="$bin/loadgen"

# --- processes --------------------------------------------------------------------------
# Checked before the result directory exists: a run that cannot start leaves nothing behind
# (an empty directory would push the next run of the day to a "-2" name).
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $GW_PORT $NGINX_PORT $HAPROXY_PORT $TCP_PORT $SPIN_PORT $SPLICE_PORT $RING_PORT $RING_SPIN_PORT $B1 $B2 $B3 $BDOWN; do
  port_free "$p" || { echo "bench.sh: port $p is in use on 127.0.0.1" >&2; exit 1; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp="$out/tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
rm -f "$out"/runs.tsv "$out"/plot-*.svg "$out"/report.md "$out"/meta.txt "$out"/profile-gateway-c64.txt
for s in "${scenarios[@]}"; do rm -rf "${out:?}/$s"; done

pids=()
backend_pids=()
lg_pid=
cleanup() {
  local rc=$?
  if [[ -n "$lg_pid" ]]; then kill "$lg_pid" 2>/dev/null || true; fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Watchdog: the whole run is bounded in time.
(
  sleep "$max_seconds" &
  s=$!
  trap 'kill $s 2>/dev/null; exit 0' TERM
  wait $s && echo "bench.sh: over ${max_seconds}s, stopping" >&2 && kill -TERM $$
) &
pids+=($!)

# wait_listening PORT NAME: poll until a TCP connect succeeds (bounded: 10 s).
wait_listening() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench.sh: $2 did not start listening on $1 (logs in $tmp)" >&2
  exit 1
}

render() { # template -> rendered file
  sed -e "s|@DIR@|$tmp|g" -e "s/@B1@/$B1/g" -e "s/@B2@/$B2/g" -e "s/@B3@/$B3/g" \
    -e "s/@BDOWN@/$BDOWN/g" -e "s/@NGINX_PORT@/$NGINX_PORT/g" \
    -e "s/@HAPROXY_PORT@/$HAPROXY_PORT/g" -e "s/@TCP_PORT@/$TCP_PORT/g" "$1" >"$2"
}

for p in $B1 $B2 $B3; do
  "${nice_cmd[@]}" taskset -c "$LOAD_CORE" "$bin/mock-backend" "$p" >"$tmp/mock-$p.log" 2>&1 &
  pids+=($!)
  backend_pids+=($!)
  wait_listening "$p" "mock-backend"
done

# timeouts.connect 10s (default 2s): at 10k connections a proxy opens thousands of backend
# connections within a second; the mock backends' accept queues (1024) drop SYNs that the
# kernel retries after 1 s and 3 s. In a trial (before loadgen spread its first requests)
# those connects failed with 504 after 2 s and the breaker opened every backend: 503 for
# 60 s, into the following scenarios. The peers wait as long: nginx's
# proxy_connect_timeout is 60 s, HAProxy's 2 s connect is retried 3 times. No other
# scenario ever waits for a connect.
# limits.max_connections 10100, as HAProxy's maxconn (bench/peers/haproxy.cfg): the
# default (auto) would be half the open-file limit less a reserve (9900 at 20000), and
# 100 of the 10000 clients would wait. The gateway logs a warning that 10100 connections
# could need more descriptors than the limit; a connect that runs out first closes idle
# pooled connections, then answers 503.
cat >"$tmp/gateway.yaml" <<YAML
listen: 127.0.0.1:$GW_PORT
workers: 1
pin_workers: false
timeouts:
  connect: 10s
limits:
  max_connections: 10100
services:
  bench:
    - http://127.0.0.1:$B1
    - http://127.0.0.1:$B2
    - http://127.0.0.1:$B3
  bench-down:
    - http://127.0.0.1:$B1
    - http://127.0.0.1:$B2
    - http://127.0.0.1:$BDOWN
  bench-limited:
    backends: [http://127.0.0.1:$B1, http://127.0.0.1:$B2, http://127.0.0.1:$B3]
    rate_limit: { rate: 1000000000/s, burst: 1000000, key: service }
    max_in_flight: 1000000
YAML
RUST_LOG=warn "${nice_cmd[@]}" taskset -c "$PROXY_CORE" "$bin/gateway" --config "$tmp/gateway.yaml" \
  >"$tmp/gateway.log" 2>&1 &
gw_pid=$!
pids+=($gw_pid)
wait_listening $GW_PORT gateway

# start_variant NAME PORT SETTING: the same gateway with one more setting, in its own process
# (busy_poll and splice are bound at start, so they must not touch the other scenarios).
# Sets variant_pid.
start_variant() {
  sed -e "s/^listen: .*/listen: 127.0.0.1:$2/" -e "1i $3" "$tmp/gateway.yaml" >"$tmp/$1.yaml"
  RUST_LOG=warn "${nice_cmd[@]}" taskset -c "$PROXY_CORE" "$bin/gateway" \
    --config "$tmp/$1.yaml" >"$tmp/$1.log" 2>&1 &
  variant_pid=$!
  pids+=($variant_pid)
  wait_listening "$2" "$1"
}
start_variant gateway-spin $SPIN_PORT "busy_poll: $SPIN_POLL"
spin_pid=$variant_pid
start_variant gateway-splice $SPLICE_PORT "splice: true"
splice_pid=$variant_pid

render bench/peers/nginx.conf "$tmp/nginx.conf"
mkdir -p "$tmp/nginx-client-body" "$tmp/nginx-proxy-temp"
"${nice_cmd[@]}" taskset -c "$PROXY_CORE" nginx -p "$tmp/" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" \
  >"$tmp/nginx.out" 2>&1 &
nginx_pid=$!
pids+=($nginx_pid)
wait_listening $NGINX_PORT nginx

render bench/peers/haproxy.cfg "$tmp/haproxy.cfg"
"${nice_cmd[@]}" taskset -c "$PROXY_CORE" haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
haproxy_pid=$!
pids+=($haproxy_pid)
wait_listening $HAPROXY_PORT haproxy

render bench/peers/haproxy-tcp.cfg "$tmp/haproxy-tcp.cfg"
"${nice_cmd[@]}" taskset -c "$PROXY_CORE" haproxy -db -f "$tmp/haproxy-tcp.cfg" \
  >"$tmp/haproxy-tcp.log" 2>&1 &
tcp_pid=$!
pids+=($tcp_pid)
wait_listening $TCP_PORT tcp-relay

"${nice_cmd[@]}" taskset -c "$PROXY_CORE" "$bin/ring-relay" $RING_PORT $B1 $B2 $B3 \
  >"$tmp/ring-relay.log" 2>&1 &
ring_pid=$!
pids+=($ring_pid)
wait_listening $RING_PORT ring-relay

"${nice_cmd[@]}" taskset -c "$PROXY_CORE" "$bin/ring-relay" --spin "${SPIN_POLL%us}" \
  $RING_SPIN_PORT $B1 $B2 $B3 >"$tmp/ring-relay-spin.log" 2>&1 &
ring_spin_pid=$!
pids+=($ring_spin_pid)
wait_listening $RING_SPIN_PORT ring-relay-spin

# --- measurement helpers ----------------------------------------------------------------
# cpu_ticks PID: utime+stime (fields 14+15 of /proc/PID/stat) of PID and its children.
cpu_ticks() {
  local total=0 p s rest
  local list=("$1")
  if [[ -r "/proc/$1/task/$1/children" ]]; then
    read -r -a rest <"/proc/$1/task/$1/children" || true
    list+=("${rest[@]}")
  fi
  for p in "${list[@]}"; do
    [[ -r "/proc/$p/stat" ]] || continue
    s=$(<"/proc/$p/stat")
    s=${s##*) }           # drop "pid (comm) "; field 3 (state) is now the first
    read -r -a rest <<<"$s"
    total=$((total + rest[11] + rest[12]))
  done
  echo "$total"
}
backend_ticks() {
  local t=0 p
  for p in "${backend_pids[@]}"; do t=$((t + $(cpu_ticks "$p"))); done
  echo "$t"
}
# core_idle CORE: idle + iowait of cpuN from /proc/stat, in clock ticks. With NO_HZ these
# two are measured (not sampled at timer ticks), so busy = wall time - idle is accurate;
# the user/system columns are tick samples and can miss time in a VM. (io_uring waits are
# counted as iowait, hence both.)
core_idle() {
  local line f
  line=$(grep "^cpu$1 " /proc/stat)
  read -r -a f <<<"$line"
  echo $((f[4] + f[5]))
}
util() { # idle_before idle_after window_s -> percent busy
  awk -v a="$1" -v b="$2" -v w="$3" -v hz="$clk_tck" \
    'BEGIN { u = 100 * (1 - (b - a) / (w * hz)); if (u < 0) u = 0; printf "%.1f", u }'
}

clk_tck=$(getconf CLK_TCK)
runs="$out/runs.tsv"
printf 'scenario\tround\ttarget\tjson\tproxy_ticks\tbackend_ticks\tloadgen_ticks\tclk_tck\tload_core_util\tproxy_core_util\tbusy_ticks\twindow_s\n' >"$runs"

target_pid() {
  case "$1" in
    gateway-spin) echo "$spin_pid" ;;
    gateway-splice) echo "$splice_pid" ;;
    gateway*) echo "$gw_pid" ;; nginx*) echo "$nginx_pid" ;; haproxy*) echo "$haproxy_pid" ;;
    tcp-relay) echo "$tcp_pid" ;; ring-relay) echo "$ring_pid" ;;
    ring-relay-spin) echo "$ring_spin_pid" ;; *) echo "" ;;
  esac
}
target_url() {
  local path=$2
  case "$1" in
    direct) echo "http://127.0.0.1:$B1/$path" ;;
    gateway) echo "http://127.0.0.1:$GW_PORT/v1/proxy/bench/$path" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT/v1/proxy/bench/$path" ;;
    haproxy) echo "http://127.0.0.1:$HAPROXY_PORT/v1/proxy/bench/$path" ;;
    # The relay passes the path on unchanged (no prefix strip): the backend answers any path.
    tcp-relay) echo "http://127.0.0.1:$TCP_PORT/v1/proxy/bench/$path" ;;
    ring-relay) echo "http://127.0.0.1:$RING_PORT/v1/proxy/bench/$path" ;;
    ring-relay-spin) echo "http://127.0.0.1:$RING_SPIN_PORT/v1/proxy/bench/$path" ;;
    gateway-1down) echo "http://127.0.0.1:$GW_PORT/v1/proxy/bench-down/$path" ;;
    gateway-spin) echo "http://127.0.0.1:$SPIN_PORT/v1/proxy/bench/$path" ;;
    gateway-splice) echo "http://127.0.0.1:$SPLICE_PORT/v1/proxy/bench/$path" ;;
    gateway-limited) echo "http://127.0.0.1:$GW_PORT/v1/proxy/bench-limited/$path" ;;
    nginx-1down) echo "http://127.0.0.1:$NGINX_PORT/v1/proxy/bench-down/$path" ;;
    haproxy-1down) echo "http://127.0.0.1:$HAPROXY_PORT/v1/proxy/bench-down/$path" ;;
  esac
}

# The open loop's fixed rate. A tail is the proxy's only while the load core (loadgen and
# the three backends) keeps up without queueing: at 60% of the slowest proxy's GET c64
# throughput (this script's default until 2026-11-30, 19.5-22.5k req/s on the Intel Xeon
# VM) and at 15k that core was 96-99% busy with every proxy and the proxies' p99.9 moved
# 2-3x between rounds; at 10k it is 75-90% busy (40-52% direct), and `direct` shows the tail
# the load side adds by itself. 10k req/s is also the rate issue 12 measured at.
OPEN_LOOP_RATE=10000
rate=${BENCH_RATE:-$OPEN_LOOP_RATE}

# scenario_args SCENARIO -> loadgen flags (one per line)
scenario_args() {
  case "$1" in
    get-c1) printf '%s\n' --connections 1 ;;
    get-c64 | breaker | limits) printf '%s\n' --connections 64 ;;
    get-c256) printf '%s\n' --connections 256 ;;
    post16k-c64) printf '%s\n' --connections 64 --method POST --body-size 16384 ;;
    open-loop) printf '%s\n' --connections 64 --rate "$rate" ;;
    upload-1m) printf '%s\n' --connections 16 --method POST --body-size 1048576 ;;
    download-1m) printf '%s\n' --connections 16 --header 'x-mock-body-bytes: 1048576' ;;
    # At 10k connections in closed loop a request waits ~10000 / throughput (~1 s) on
    # average: loadgen's 5 s default timeout would turn the tail into errors and
    # reconnects; 30 s is the gateway's response timeout and HAProxy's server timeout.
    get-c10k) printf '%s\n' --connections 10000 --timeout 30s ;;
  esac
}
# scenario_path SCENARIO -> the path after the proxy prefix. The 1 MiB scenarios use big/,
# where nginx streams bodies through in memory (bench/peers/nginx.conf); the gateway,
# HAProxy and the backends treat every path alike.
scenario_path() {
  case "$1" in
    upload-1m | download-1m) echo big/hello ;;
    *) echo hello ;;
  esac
}
# scenario_warmup SCENARIO -> warm-up seconds. At 10k connections the proxies take a few
# seconds to settle (each opens up to one backend connection per request in flight; in a
# trial HAProxy ran at 40% of its rate after a 3 s warm-up), hence at least 5 s. loadgen
# opens the connections 256 at a time during its setup and, in closed loop, spreads the
# first requests over the first second of the warm-up (half of it at most).
scenario_warmup() {
  case "$1" in
    get-c10k) awk -v w="$warmup" 'BEGIN { print (w < 5 ? 5 : w) }' ;;
    *) echo "$warmup" ;;
  esac
}
scenario_targets() {
  case "$1" in
    breaker) echo "gateway-1down nginx-1down haproxy-1down" ;;
    limits) echo "gateway gateway-limited" ;;
    get-c1) echo "direct gateway gateway-spin nginx haproxy tcp-relay ring-relay ring-relay-spin" ;;
    get-c64 | get-c256 | post16k-c64) echo "direct gateway nginx haproxy tcp-relay ring-relay" ;;
    upload-1m | download-1m) echo "direct gateway gateway-splice nginx haproxy tcp-relay" ;;
    open-loop) echo "direct gateway gateway-spin nginx haproxy" ;;
    get-c10k) echo "direct gateway nginx haproxy" ;;
    *) echo "bench.sh: unknown scenario $1" >&2; exit 2 ;;
  esac
}

# children_cpu_ms FILE: user+sys CPU, in ms, of this shell's reaped children as recorded in
# FILE by `times >FILE` (which must run in this shell: a forked subshell starts from zero).
children_cpu_ms() {
  awk 'NR == 2 {
    n = 0
    for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += (a[1] * 60 + a[2]) * 1000 }
    printf "%d", n
  }' "$1"
}

# wait_for_line FILE TEXT PID: returns once a line of FILE starts with TEXT (loadgen's
# window markers), or 1 if PID ended first. It polls every 5 ms: call it only when the
# line is due (after sleeping most of the wait), so its forks do not disturb the run.
wait_for_line() {
  until grep -q "^$2" "$1" 2>/dev/null; do
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.005
  done
}

# measure SCENARIO ROUND TARGET
measure() {
  local scen=$1 round=$2 target=$3 dir pid url args p0 p1 b0 b1 g0 k0 k1 t0 t1
  local i0 i1 j0 j1 wu
  dir="$out/$scen/r$round"
  mkdir -p "$dir"
  url=$(target_url "$target" "$(scenario_path "$scen")")
  mapfile -t args < <(scenario_args "$scen")
  wu=$(scenario_warmup "$scen")
  pid=$(target_pid "$target")
  times >"$tmp/times0.txt"
  "${nice_cmd[@]}" "$loadgen" --url "$url" "${args[@]}" --threads 1 --cores "$LOAD_CORE" \
    --warmup "${wu}s" --duration "${duration}s" --label "$target" --out-dir "$dir" \
    >"$dir/$target.txt" 2>&1 &
  lg_pid=$!
  # The window is loadgen's own: it opens when its setup (~300 ms) and warm-up are over and
  # the recorded requests start, and closes when the last of them has finished.
  sleep "$wu"
  wait_for_line "$dir/$target.txt" "loadgen: window start" "$lg_pid" || true
  t0=$(date +%s.%N)
  i0=$(core_idle "$LOAD_CORE")
  j0=$(core_idle "$PROXY_CORE")
  p0=$([[ -n "$pid" ]] && cpu_ticks "$pid" || echo 0)
  b0=$(backend_ticks)
  g0=$(cpu_ticks "$lg_pid")
  sleep "$duration"
  wait_for_line "$dir/$target.txt" "loadgen: window end" "$lg_pid" || true
  p1=$([[ -n "$pid" ]] && cpu_ticks "$pid" || echo 0)
  b1=$(backend_ticks)
  i1=$(core_idle "$LOAD_CORE")
  j1=$(core_idle "$PROXY_CORE")
  t1=$(date +%s.%N)
  if ! wait "$lg_pid"; then
    echo "bench.sh: loadgen failed for $scen/$target (see $dir/$target.txt)" >&2
    cat "$dir/$target.txt" >&2
    exit 1
  fi
  lg_pid=
  times >"$tmp/times1.txt"
  k0=$(children_cpu_ms "$tmp/times0.txt")
  k1=$(children_cpu_ms "$tmp/times1.txt")
  # loadgen's CPU in the window: its total (reaped) minus what it had used at the window
  # start. The few ms of the helper subshells reaped meanwhile are counted with it.
  local lg_ticks window busy
  lg_ticks=$(awk -v k="$((k1 - k0))" -v g="$g0" -v hz="$clk_tck" \
    'BEGIN { v = k * hz / 1000 - g; printf "%d", (v > 0 ? v : 0) }')
  window=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  # Busy ticks of the two cores together: 2 x wall time - idle.
  busy=$(awk -v w="$window" -v hz="$clk_tck" -v idle="$(((i1 - i0) + (j1 - j0)))" \
    'BEGIN { printf "%d", 2 * w * hz - idle }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scen" "$round" "$target" \
    "${dir#"$out"/}/$target.json" $((p1 - p0)) $((b1 - b0)) "$lg_ticks" "$clk_tck" \
    "$(util "$i0" "$i1" "$window")" "$(util "$j0" "$j1" "$window")" "$busy" "$window" >>"$runs"
  printf '  %-12s %-14s r%s  %s\n' "$scen" "$target" "$round" \
    "$(grep -m1 "^$target: " "$dir/$target.txt" | cut -d' ' -f2-)"
}

# --- machine description ----------------------------------------------------------------
{
  echo "date_utc=$(date -u '+%F %T')"
  echo "command=$command_line"
  echo "nproc=$(nproc)"
  echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  # Family/model/stepping name the CPU generation when the model name does not (VMs often
  # show a generic one); `hypervisor` in the flags means a VM.
  echo "cpu_id=$(awk -F': *' '/^cpu family/ { f = $2 } /^model\t/ { m = $2 } /^stepping/ { s = $2 }
    /^flags/ { v = ($2 ~ /(^| )hypervisor( |$)/) ? ", VM" : ""; exit }
    END { printf "family %s, model %s, stepping %s%s", f, m, s, v }' /proc/cpuinfo)"
  echo "kernel=$(uname -sr)"
  echo "nofile=$(ulimit -Sn)/$(ulimit -Hn)"
  echo "rustc=$(rustc --version 2>/dev/null || echo '?')"
  echo "nginx=$(nginx -v 2>&1 | sed 's/^nginx version: //')"
  echo "haproxy=$(haproxy -v 2>&1 | head -n 1)"
  echo "git=$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "note=${BENCH_NOTE:-}"
  echo "nice=${BENCH_NICE:-0}"
  echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "clk_tck=$clk_tck"
  echo "rounds=$rounds"
  echo "warmup_s=$warmup"
  echo "duration_s=$duration"
  echo "quick=$quick"
  echo "load_core=$LOAD_CORE"
  echo "proxy_core=$PROXY_CORE"
  echo "ports=gateway $GW_PORT, gateway-spin $SPIN_PORT, gateway-splice $SPLICE_PORT, nginx $NGINX_PORT, haproxy $HAPROXY_PORT, tcp-relay $TCP_PORT, ring-relay $RING_PORT, ring-relay-spin $RING_SPIN_PORT, backends $B1 $B2 $B3, down $BDOWN"
} >"$out/meta.txt"

# --- the run ----------------------------------------------------------------------------
start=$(date +%s)
echo "results in $out; ${rounds} round(s), ${warmup}s warm-up + ${duration}s per run"
for ((round = 1; round <= rounds; round++)); do
  echo "round $round/$rounds"
  for scen in "${scenarios[@]}"; do
    if [[ "$scen" == open-loop ]]; then echo "  open-loop rate: $rate req/s"; fi
    for target in $(scenario_targets "$scen"); do
      measure "$scen" "$round" "$target"
    done
  done
done
echo "open_loop_rate=$rate" >>"$out/meta.txt"

# Optional (BENCH_PERF=1): one extra, unrecorded GET c64 run of the gateway under
# `perf record -g` (perf itself on the load core), after the measured rounds.
if [[ "${BENCH_PERF:-0}" == 1 ]] && command -v perf >/dev/null; then
  echo "profiling the gateway (perf record -g, GET c64)..."
  "${nice_cmd[@]}" "$loadgen" --url "$(target_url gateway hello)" --connections 64 --threads 1 \
    --cores "$LOAD_CORE" --warmup "${warmup}s" --duration "${duration}s" \
    --label gateway-perf --out-dir "$tmp" >"$tmp/gateway-perf.txt" 2>&1 &
  lg_pid=$!
  sleep "$warmup"
  wait_for_line "$tmp/gateway-perf.txt" "loadgen: window start" "$lg_pid" || true
  taskset -c "$LOAD_CORE" perf record -F 999 -g -p "$gw_pid" -o "$tmp/perf.data" \
    -- sleep "$duration" >"$tmp/perf-record.log" 2>&1 || true
  wait "$lg_pid" || true
  lg_pid=
  {
    tidy() { grep -v '^#' | grep -v '^$' | sed -e 's/[[:space:]]*-[[:space:]]*-[[:space:]]*$//'; }
    echo "# by shared object (self time)"
    perf report -i "$tmp/perf.data" --no-children --sort dso --stdio -g none \
      --percent-limit 0.5 2>/dev/null | tidy || true
    echo
    echo "# by symbol (self time, >= 0.7%)"
    perf report -i "$tmp/perf.data" --no-children --sort symbol --stdio -g none \
      --percent-limit 0.7 2>/dev/null | tidy | head -n 40 || true
    echo
    echo "# inclusive (self + callees, >= 4%): where the kernel time is spent"
    perf report -i "$tmp/perf.data" --children --sort symbol --stdio -g none \
      --percent-limit 4 2>/dev/null | tidy | head -n 60 || true
  } >"$out/profile-gateway-c64.txt"
fi
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/meta.txt"
echo "elapsed_s=$(($(date +%s) - start))" >>"$out/meta.txt"

python3 scripts/bench_report.py "$out" --loadgen "$loadgen"
echo "report: $out/report.md"
