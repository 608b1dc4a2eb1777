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

# start_mock_backends PORT...: one mock backend per port on core 0, their PIDs appended to
# the caller's `pids` array (for its cleanup).
start_mock_backends() {
  for port in "$@"; do
    taskset -c 0 target/release/mock-backend "$port" >/dev/null 2>&1 &
    pids+=($!)
  done
}
