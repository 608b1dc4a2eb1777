#!/usr/bin/env bash
# Quick start: build, start three mock backends (8001-8003) and the gateway on the shipped
# config.yaml (127.0.0.1:8000), print example requests, and stop everything by PID on
# Ctrl-C or after DEMO_SECONDS (default 600).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${DEMO_SECONDS:-600}"

echo "building (release)..."
cargo build --release --locked --bins 2>&1 | tail -n 1
bin="${CARGO_TARGET_DIR:-target}/release"

pids=()
# The gateway's PID, which an upgrade in place (SIGUSR2) changes, is read from here.
pid_file="$(mktemp -d)/gateway.pid"
gw_pid=
cleanup() {
  # One SIGTERM to the gateway serving now (a second would cut its drain short): the one
  # the pid file names, else the one started here.
  gw=$(cat "$pid_file" 2>/dev/null || true)
  kill "${gw:-$gw_pid}" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # An upgraded gateway is not our child: wait for its drain by the pid file it removes as
  # it exits (timeouts.drain is 30s in config.yaml).
  for _ in $(seq 1 320); do [[ -e $pid_file ]] || break; sleep 0.1; done
  rm -rf "$(dirname "$pid_file")"
}
trap cleanup EXIT INT TERM

for port in 8001 8002 8003; do
  "$bin/mock-backend" "$port" >/dev/null &
  pids+=($!)
done
"$bin/gateway" --config config.yaml --pid-file "$pid_file" &
gw_pid=$!

# Wait until the gateway answers (bounded).
for _ in $(seq 1 50); do
  if (exec 3<>/dev/tcp/127.0.0.1/8000) 2>/dev/null; then break; fi
  sleep 0.1
done

cat <<TXT

gateway on http://127.0.0.1:8000, mock backends on 8001 8002 8003. Try:

  curl -s localhost:8000/v1/proxy/user-service/users/42?verbose=1      # echo from 8001 or 8002
  curl -s localhost:8000/v1/proxy/user-service/a localhost:8000/v1/proxy/user-service/b | grep -o '"port":[0-9]*'   # one connection, both backends in turn
  curl -s -X POST --data 'amount=10' localhost:8000/v1/proxy/payment-service/pay
  curl -si localhost:8000/v1/proxy/unknown/x                          # 404 service_not_found
  curl -si -H 'x-mock-status: 503' localhost:8000/v1/proxy/payment-service/x   # 5 of these open the circuit...
  curl -si localhost:8000/v1/proxy/payment-service/x                  # ...then 503 no_backend_available
  curl -si -H 'x-mock-fault: hang' localhost:8000/v1/proxy/user-service/x    # 504 after 30 s
  curl -s localhost:9901/admin/backends                               # breaker state per backend
  curl -s localhost:9901/metrics | grep gateway_requests_total         # Prometheus metrics
  kill -HUP \$(cat $pid_file)       # reload config.yaml
  kill -USR2 \$(cat $pid_file)      # upgrade in place: a new process takes the sockets over

Faults on demand (request headers for mock-backend): x-mock-status, x-mock-delay-ms,
x-mock-body-bytes, x-mock-fault: garbage|close-before-head|hang|close-mid-body|chunked|...
TXT
echo
echo "Ctrl-C to stop (stops by itself after ${seconds}s)."
sleep "$seconds" &
pids+=($!)
wait $!
