#!/usr/bin/env bash
# TCP segments and ACKs per request: the gateway against HAProxy in `mode tcp` (a blind
# relay), GET over 64 keep-alive connections (wrk). Counts come from the kernel (`nstat`,
# machine-wide, so keep the machine otherwise quiet); CPU per request is the proxy's
# utime+stime over the run.
#
#   bench/segments/run.sh            # SECONDS_PER_RUN=5 CONNS=64
#
# A proxy that delays or splits its writes, or makes the kernel send pure ACKs, shows here
# as more than 4 segments out per request (client->proxy, proxy->backend, and back).
# Needs: cargo, wrk, haproxy, nstat (iproute2), taskset, 2 cores. Everything binds
# 127.0.0.1 and is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${SECONDS_PER_RUN:-5} conns=${CONNS:-64}
cargo build --release --quiet --bin gateway --bin mock-backend
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
B1=19501 B2=19502 GW=19580 RELAY=19583
. bench/lib.sh
start_mock_backends $B1 $B2
printf 'listen: 127.0.0.1:%s\nworkers: 1\npin_workers: false\naccess_log: false\nservices:\n  svc: [http://127.0.0.1:%s, http://127.0.0.1:%s]\n' \
  "$GW" "$B1" "$B2" >"$tmp/gateway.yaml"
cat >"$tmp/relay.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend relay
    bind 127.0.0.1:$RELAY
    default_backend b
backend b
    balance roundrobin
    server b1 127.0.0.1:$B1
    server b2 127.0.0.1:$B2
EOF
taskset -c 1 target/release/gateway --config "$tmp/gateway.yaml" >"$tmp/gateway.log" 2>&1 &
gw=$!
pids+=($gw)
taskset -c 1 haproxy -db -f "$tmp/relay.cfg" >"$tmp/relay.log" 2>&1 &
relay=$!
pids+=($relay)
for p in $B1 $B2 $GW $RELAY; do wait_port "$p"; done
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
keys="TcpOutSegs TcpExtTCPPureAcks TcpExtDelayedACKs TcpExtTCPAutoCorking"
printf '%-8s %9s %10s' target requests "CPU µs/req"
for k in $keys; do printf ' %s/req' "$k"; done
echo
for t in "gateway $gw $GW /v1/proxy/svc/x" "tcp-relay $relay $RELAY /x"; do
  read -r name pid port path <<<"$t"
  taskset -c 0 timeout 30 wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port$path" >/dev/null
  nstat -n >/dev/null
  t0=$(ticks "$pid")
  out=$(taskset -c 0 timeout $((secs + 30)) wrk -t1 -c"$conns" -d"${secs}s" "http://127.0.0.1:$port$path")
  t1=$(ticks "$pid")
  counts=$(nstat 2>/dev/null)
  n=$(awk '/requests in/ { print $1 }' <<<"$out")
  printf '%-8s %9s %10.2f' "$name" "$n" "$(echo "($t1 - $t0) * 1000000 / $hz / $n" | bc -l)"
  for k in $keys; do
    v=$(awk -v k="$k" '$1 == k { print $2 }' <<<"$counts")
    printf ' %.3f' "$(echo "${v:-0} / $n" | bc -l)"
  done
  echo
done
