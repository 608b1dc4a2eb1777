#!/usr/bin/env bash
# Changing the binary or `listen`/`workers`/`admin` under a stream of new connections:
# ten upgrades in place (SIGUSR2: the sockets handed to a new process), then ten
# restarts (SIGTERM, and at once a new process, started again each time one exits
# because the draining process still holds a port), each while 8 clients open a connection per request to the proxy and 2
# to /healthz. Prints, for each way, the requests and checks that got a whole 200 and how
# the others failed. A count of failures, not a timing.
#
#   bench/upgrade/run.sh        # ROUNDS=10 WORKERS=2
#
# Needs: cargo, python3, 2 cores. Everything binds 127.0.0.1 (mock backend 19901, gateway
# 19920, admin 19921) and is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${ROUNDS:-10} workers=${WORKERS:-2}
cargo build --release --quiet --locked --bins -p gateway
tmp=$(mktemp -d)
pids=()
cleanup() {
  [[ -s $tmp/pid ]] && kill "$(cat "$tmp/pid")" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
target/release/mock-backend 19901 >/dev/null 2>&1 &
pids+=($!)
cat >"$tmp/gateway.yaml" <<YAML
listen: 127.0.0.1:19920
admin: 127.0.0.1:19921
workers: $workers
pin_workers: false
services:
  bench: [http://127.0.0.1:19901]
YAML
start() {
  RUST_LOG=warn target/release/gateway --config "$tmp/gateway.yaml" --pid-file "$tmp/pid" \
    >>"$tmp/out" 2>>"$tmp/log" &
}
# new_pid OLD: waits up to 5 s for the pid file to name another process.
new_pid() {
  for _ in $(seq 100); do
    p=$(cat "$tmp/pid" 2>/dev/null || true)
    [[ -n $p && $p != "$1" ]] && return 0
    sleep 0.05
  done
  return 1
}
start
new_pid none
secs=$((rounds + 2))
for way in upgrade restart; do
  echo "== $way, $rounds times in ${secs}s"
  python3 bench/upgrade/clients.py 127.0.0.1 19920 /v1/proxy/bench/hello "$secs" 8 &
  c1=$!
  python3 bench/upgrade/clients.py 127.0.0.1 19921 /healthz "$secs" 2 &
  c2=$!
  failed_starts=0
  for _ in $(seq "$rounds"); do
    sleep 1
    old=$(cat "$tmp/pid")
    if [[ $way == upgrade ]]; then
      kill -USR2 "$old"
    else
      kill -TERM "$old"
      # A new process at once, and again each time one exits for want of a port (the
      # draining one holds `admin` until it exits).
      while :; do
        start
        fresh=$!
        while kill -0 "$fresh" 2>/dev/null && [[ $(cat "$tmp/pid" 2>/dev/null || true) != "$fresh" ]]; do
          sleep 0.02
        done
        kill -0 "$fresh" 2>/dev/null && break
        failed_starts=$((failed_starts + 1))
      done
    fi
    new_pid "$old" || { echo "no new process after $old" >&2; exit 1; }
  done
  wait "$c1" "$c2"
  [[ $way == restart ]] && echo "new processes that could not start at once: $failed_starts"
done
