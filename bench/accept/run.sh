#!/usr/bin/env bash
# How fast a busy gateway takes in a burst of new clients: loadgen keeps LOAD connections
# busy (closed loop), then BURST more connect at once; the gateway's own accept counter
# says when they were all taken in, and nstat how many SYNs its listen backlog dropped
# (each one is retried by the client only after 1 s, then 3 s).
#
#   bench/accept/run.sh          # LOAD=5000 BURST=3000 GATEWAY_BIN=path (for an A/B)
#
# Needs: cargo, python3, taskset, nstat (iproute2), 2 cores, an open-file limit of 20000.
# Everything binds 127.0.0.1 and is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
load=${LOAD:-5000} burst=${BURST:-3000}
. bench/lib.sh
start_gateway_alone
taskset -c 0 target/release/loadgen --url "http://127.0.0.1:$GW/v1/proxy/bench/hello" \
  --connections "$load" --warmup 1s --duration 8s --threads 1 >"$tmp/loadgen.txt" 2>&1 &
pids+=($!)
sleep 3 # connections open, load running
nstat -n >/dev/null
taskset -c 0 python3 bench/accept/burst.py $GW $ADMIN "$burst"
echo "SYNs dropped at the listen backlog: $(nstat 2>/dev/null | awk '/TcpExtListenDrops/ {print $2}' | grep . || echo 0)"
