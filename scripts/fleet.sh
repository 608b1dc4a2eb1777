#!/usr/bin/env bash
# A local fleet: redis-server (127.0.0.1:6390), one mock backend (8001) and two gateways
# sharing circuit state (A: 8000, admin 9901; B: 8010, admin 9911). Stops everything it
# started, by PID, on Ctrl-C or after FLEET_SECONDS (default 600).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FLEET_SECONDS:-600}"
redis_port="${REDIS_PORT:-6390}"
command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server" >&2; exit 1; }

cargo build --release --locked --bins 2>&1 | tail -n 1
bin=target/release
dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning &
pids+=($!)
"$bin/mock-backend" 8001 >/dev/null &
pids+=($!)
for gw in "A 8000 9901" "B 8010 9911"; do
  set -- $gw
  cat >"$dir/$1.yaml" <<YAML
listen: 127.0.0.1:$2
admin: 127.0.0.1:$3
workers: 2
breaker: {failure_threshold: 3, cooldown: 10s}
cluster: {redis: redis://127.0.0.1:$redis_port/0, name: demo, open_quorum: 1}
services:
  orders: [http://127.0.0.1:8001]
YAML
  "$bin/gateway" --config "$dir/$1.yaml" >/dev/null &
  pids+=($!)
done
sleep 1
cat <<TXT

Fleet up: gateway A on 8000, gateway B on 8010, both on Redis 127.0.0.1:$redis_port. Try:

  for i in 1 2 3; do curl -s -o /dev/null -w '%{http_code}\n' -H 'x-mock-status: 503' localhost:8000/v1/proxy/orders/x; done
  curl -si localhost:8010/v1/proxy/orders/x          # B: 503 no_backend_available, opened by A
  curl -s localhost:9911/admin/backends              # "source": "remote" on B
  curl -s localhost:9901/admin/cluster               # instance id, Redis state, peers, last sync
  redis-cli -p $redis_port hgetall 'demo:breaker:orders:http://127.0.0.1:8001'
TXT
echo "Ctrl-C to stop (stops by itself after ${seconds}s)."
sleep "$seconds" &
pids+=($!)
wait $!
