#!/usr/bin/env bash
# Rate-limit accuracy under load: a service budget (default 2000/s, burst 100, key service)
# offered 3x its rate for 10 s by loadgen's open loop (64 connections), against a gateway
# with 2 workers, so the one budget word is shared by both cores. Reports the responses
# admitted (the gateway's own 2xx count) next to `rate x 10 s + burst`, and the 429s.
#
#   bench/admission/run.sh [RATE [BURST [SECONDS]]]
#
# Needs: cargo, curl. Everything binds 127.0.0.1 and is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
rate=${1:-2000} burst=${2:-100} secs=${3:-10}
cargo build --release --quiet --bin gateway --bin mock-backend
cargo build --release --quiet -p loadgen
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
B1=19301 B2=19302 GW=19380 ADMIN=19390
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
for p in $B1 $B2; do
  target/release/mock-backend "$p" >"$tmp/mock-$p.log" 2>&1 &
  pids+=($!)
  wait_port "$p"
done
cat >"$tmp/gw.yaml" <<YAML
listen: 127.0.0.1:$GW
admin: 127.0.0.1:$ADMIN
workers: 2
pin_workers: false
services:
  limited:
    backends: [http://127.0.0.1:$B1, http://127.0.0.1:$B2]
    rate_limit: { rate: $rate/s, burst: $burst, key: service }
YAML
RUST_LOG=warn target/release/gateway --config "$tmp/gw.yaml" >"$tmp/gw.log" 2>&1 &
pids+=($!)
wait_port "$GW"
offered=$((3 * rate))
target/release/loadgen --url "http://127.0.0.1:$GW/v1/proxy/limited/x" --connections 64 \
  --rate "$offered" --warmup 0s --duration "${secs}s" --label limited --out-dir "$tmp" \
  >"$tmp/loadgen.txt" 2>&1
metric() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" 'index($0, m) == 1 { print $2 }'; }
ok=$(metric 'gateway_requests_total{service="limited",class="2xx"}')
limited=$(metric 'gateway_rate_limited_total{service="limited"}')
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%d)"
echo "budget $rate/s burst $burst (key service), offered $offered req/s for ${secs} s over 64 connections, gateway 2 workers"
python3 - "$ok" "$limited" "$rate" "$burst" "$secs" <<'PY'
import sys
ok, limited, rate, burst, secs = (float(x) for x in sys.argv[1:])
want = rate * secs + burst
print(f"| admitted (2xx) | expected (rate x {secs:.0f} s + burst) | error | answered 429 |")
print("|---|---|---|---|")
print(f"| {ok:.0f} | {want:.0f} | {100 * (ok - want) / want:+.2f}% | {limited:.0f} |")
PY
