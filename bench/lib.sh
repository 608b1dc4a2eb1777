# Shell helpers the bench/*/run.sh scripts source (from the repository root):
#   . bench/lib.sh

# wait_port PORT [TRIES]: waits until something listens on 127.0.0.1:PORT (TRIES × 50 ms,
# default 100), else exits the script.
wait_port() {
  for _ in $(seq "${2:-100}"); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  exit 1
}

# wait_port_free PORT: waits (up to 5 s) until nothing listens on 127.0.0.1:PORT. A process
# on io_uring that is killed with an accept in flight holds its listener a little longer:
# the ring is torn down after the process is gone, and a new bind meanwhile fails.
wait_port_free() {
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null || return 0
    sleep 0.05
  done
  echo "port $1 still taken" >&2
  exit 1
}

# start_mock_backends PORT...: one mock backend per port on core 0, their PIDs appended to
# the caller's `pids` array (for its cleanup).
start_mock_backends() {
  for port in "$@"; do
    taskset -c 0 target/release/mock-backend "$port" >/dev/null 2>&1 &
    pids+=($!)
  done
}

# start_gateway_alone: the rig of bench/c10k and bench/accept. Raises the open-file limit,
# builds the gateway and loadgen, makes `tmp` and arranges that on exit every PID in `pids`
# is stopped (the gateway drains first: the next run needs its port) and `tmp` removed.
# Then three mock backends on core 0 (ports 19701-19703) and one gateway worker on core 1
# (${GATEWAY_BIN:-the release build}) on 127.0.0.1:19780, admin :19790, with
# `limits.max_connections: 10100` (as bench.sh) and the caller's extra top-level YAML in
# $GATEWAY_EXTRA; sets GW, ADMIN and gw (its PID).
start_gateway_alone() {
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  cargo build --release --quiet --locked --bins -p gateway -p loadgen
  tmp=$(mktemp -d)
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
  B1=19701 B2=19702 B3=19703 GW=19780 ADMIN=19790
  start_mock_backends $B1 $B2 $B3
  cat >"$tmp/gateway.yaml" <<YAML
listen: 127.0.0.1:$GW
workers: 1
pin_workers: false
admin: 127.0.0.1:$ADMIN
${GATEWAY_EXTRA:-}
limits:
  max_connections: ${MAX_CONNECTIONS:-10100}
services:
  bench: [http://127.0.0.1:$B1, http://127.0.0.1:$B2, http://127.0.0.1:$B3]
YAML
  wait_port $B1 && wait_port $B2 && wait_port $B3
  taskset -c 1 "${GATEWAY_BIN:-target/release/gateway}" --config "$tmp/gateway.yaml" >"$tmp/gateway.log" 2>&1 &
  gw=$!
  pids+=($gw)
  wait_port $GW
}

# start_nginx PORT B1 B2 B3 BDOWN: NGINX as bench.sh's equal-work peer (bench/peers/nginx.conf,
# rendered into $tmp) on 127.0.0.1:PORT and core 1, its PID in `nginx_pid` and appended to
# the caller's `pids` array. It does not wait for the port.
start_nginx() {
  mkdir -p "$tmp/nginx-client-body" "$tmp/nginx-proxy-temp"
  sed -e "s|@DIR@|$tmp|g; s/@B1@/$2/g; s/@B2@/$3/g; s/@B3@/$4/g; s/@BDOWN@/$5/g; s/@NGINX_PORT@/$1/g" \
    bench/peers/nginx.conf >"$tmp/nginx.conf"
  taskset -c 1 nginx -p "$tmp/" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" >"$tmp/nginx.log" 2>&1 &
  nginx_pid=$!
  pids+=($nginx_pid)
}
