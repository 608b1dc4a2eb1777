#!/usr/bin/env bash
# Slow-client attacks against the gateway (+ a mock backend) on 127.0.0.1 with slowhttptest:
# slowloris (-H), slow body (-B) and slow read (-X), each bounded to SLOW_SECONDS (default
# 30) with SLOW_CONNS connections (default 500), while a probe (curl every 200 ms) checks that
# normal requests keep being served. Gateway timeouts: client_header 2s, body 5s.
# Usage: scripts/slow_clients.sh   (GATEWAY_BIN / MOCK_BIN skip the build)
# Prints per attack the probe success rate and slowhttptest's summary; exits 1 if the probe
# success rate of any attack is under PROBE_MIN percent (default 95).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${SLOW_SECONDS:-30}"
conns="${SLOW_CONNS:-500}"
probe_min="${PROBE_MIN:-95}"
if ! command -v slowhttptest >/dev/null; then
    apt-get install -y slowhttptest >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y slowhttptest >/dev/null; }
fi
command -v curl >/dev/null || { echo "curl is required" >&2; exit 2; }
if [[ -z "${GATEWAY_BIN:-}" || -z "${MOCK_BIN:-}" ]]; then
    cargo build --quiet --release --bins
    dir="${CARGO_TARGET_DIR:-$PWD/target}/release"
    GATEWAY_BIN="${GATEWAY_BIN:-$dir/gateway}"
    MOCK_BIN="${MOCK_BIN:-$dir/mock-backend}"
fi

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Waits for the "listening on ADDR" line in file $1 and prints ADDR.
listening_on() {
    for _ in $(seq 100); do
        grep -q '^listening on ' "$1" 2>/dev/null && { sed -n 's/^listening on //p' "$1" | head -1; return; }
        sleep 0.1
    done
    echo "no 'listening on' in $1" >&2
    exit 2
}

# Started here (not in a $(...) subshell) so that their PIDs reach the cleanup.
"$MOCK_BIN" 0 >"$work/mock" 2>"$work/mock.err" &
pids+=($!)
backend="$(listening_on "$work/mock")"
cat >"$work/gw.yaml" <<YAML
listen: 127.0.0.1:0
workers: 2
pin_workers: false
timeouts: {client_header: 2s, body: 5s}
services:
  svc: [http://$backend]
YAML
"$GATEWAY_BIN" --config "$work/gw.yaml" >"$work/gw" 2>"$work/gw.err" &
pids+=($!)
gw="$(listening_on "$work/gw")"
url="http://$gw/v1/proxy/svc/slow"
echo "gateway $gw, backend $backend; each attack ${secs}s with $conns connections"

# Probe: one normal request every 200 ms until stopped; one line per result.
probe() {
    while :; do
        code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true)"
        echo "$code"
        sleep 0.2
    done
}

failed=0
run_attack() {
    local name="$1"
    shift
    probe >"$work/probe" &
    local probe_pid=$!
    timeout $((secs + 30)) slowhttptest "$@" -c "$conns" -r 200 -l "$secs" -u "$url" -p 3 >"$work/slow" 2>&1 || true
    kill "$probe_pid" 2>/dev/null || true
    wait "$probe_pid" 2>/dev/null || true
    local total ok
    total="$(wc -l <"$work/probe")"
    ok="$(grep -c '^200$' "$work/probe" || true)"
    local rate=$((total > 0 ? 100 * ok / total : 0))
    echo "== $name: probe $ok/$total ok ($rate%)"
    # slowhttptest's own summary: its parameters, then its last status report.
    sed 's/\x1b\[[0-9;]*m//g; s/\x1b\[H//g' "$work/slow" >"$work/slow.txt"
    awk '/slow HTTP test status on/ { exit } /^(test type|number of connections|interval between|receive window|test duration)/ { print "   " $0 }' "$work/slow.txt"
    awk '/slow HTTP test status on/ { n = NR } { line[NR] = $0 } END { for (i = n; i <= NR && n > 0; i++) print "   " line[i] }' "$work/slow.txt" \
        | grep -vE '^ *(Sat|Sun|Mon|Tue|Wed|Thu|Fri) ' || true
    [[ $rate -ge $probe_min ]] || failed=1
}

run_attack "slowloris (-H)" -H -i 1 -x 24
run_attack "slow body (-B)" -B -i 10 -s 8192 -x 10
run_attack "slow read (-X)" -X -k 10 -w 64 -y 256 -n 2 -z 32

[[ $failed -eq 0 ]] && echo "slow clients: all probes above ${probe_min}%" || echo "slow clients: a probe fell under ${probe_min}%"
exit $failed
