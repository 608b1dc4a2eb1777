#!/usr/bin/env bash
# One address's slow-head flood against the connection cap, with and without
# `limits.max_connections_per_client`: how long a new client from another address waits
# for its answer, and what the gateway's CPU pays for the refusals.
#
#   bench/hostile/per_client.sh [LIMIT]     # default 50
#
# One worker, `max_connections: 200`; slow_heads.py keeps 600 connections from 127.0.0.2
# sending a head a byte every 2 s (reconnecting at once); after 8 s, probe.py opens a new
# connection from 127.0.0.3 every 200 ms for 40 s. The gateway's CPU is its utime + stime
# over those 40 s. Needs cargo, python3; binds 127.0.0.1 ports 19290-19292; stops what it
# starts by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
limit=${1:-50}
cargo build --release --quiet --bin gateway --bin mock-backend
. bench/lib.sh
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
BACKEND=19290 GW=19291 ADMIN=19292
timeout 300 target/release/mock-backend "$BACKEND" >"$tmp/mock.log" 2>&1 &
pids+=($!)
wait_port "$BACKEND"
tck=$(getconf CLK_TCK)
for per_client in off "$limit"; do
  {
    echo "listen: 127.0.0.1:$GW"
    echo "workers: 1"
    echo "admin: 127.0.0.1:$ADMIN"
    echo "limits:"
    echo "  max_connections: 200"
    [[ $per_client == off ]] || echo "  max_connections_per_client: $per_client"
    echo "services:"
    echo "  a: [http://127.0.0.1:$BACKEND]"
  } >"$tmp/gw.yaml"
  wait_port_free "$GW"
  timeout 120 target/release/gateway --config "$tmp/gw.yaml" --pid-file "$tmp/gw.pid" \
    >"$tmp/gw.log" 2>&1 &
  pids+=($!)
  wait_port "$GW"
  gw=$(cat "$tmp/gw.pid")
  timeout 70 python3 bench/hostile/slow_heads.py 127.0.0.2 "$GW" 600 2 55 >"$tmp/flood.json" &
  flood=$!
  pids+=("$flood")
  sleep 8
  c0=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  probe=$(timeout 60 python3 bench/hostile/probe.py 127.0.0.3 "$GW" 0.2 40 10)
  c1=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  refused=$(curl -s "127.0.0.1:$ADMIN/metrics" | awk '/^gateway_client_connections_refused_total/ {print $2}')
  wait "$flood" || true
  kill -TERM "$gw"
  echo "max_connections_per_client: $per_client"
  echo "  probe: $probe"
  echo "  flood: $(cat "$tmp/flood.json")"
  echo "  gateway CPU over the probes: $(awk -v a="$c0" -v b="$c1" -v t="$tck" 'BEGIN {printf "%.2f s", (b - a) / t}'); refused: ${refused:-0}"
done
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(uname -r), $(date -u +%F)"
