#!/usr/bin/env bash
# Runs the varnishtest (VTest) scripts in tests/vtc/ against a freshly built gateway: scripted
# fake backends (`server`), raw clients (`client`), the gateway as a `process`.
# Usage: scripts/vtc.sh [FILE.vtc ...]   (GATEWAY_BIN=path skips the build; needs `varnishtest`,
# Debian package `varnish`). Prints "N passed, N failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v varnishtest >/dev/null || { echo "varnishtest not found: apt-get install -y varnish" >&2; exit 2; }
if [[ -z "${GATEWAY_BIN:-}" ]]; then
    cargo build --quiet --bin gateway
    GATEWAY_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/gateway"
fi
[[ -x "$GATEWAY_BIN" ]] || { echo "no gateway binary at $GATEWAY_BIN" >&2; exit 2; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $((20000 + RANDOM % 20000))
}

files=("$@")
[[ ${#files[@]} -gt 0 ]] || files=(tests/vtc/*.vtc)
passed=0
failed=0
for f in "${files[@]}"; do
    # One gateway port per file; -t bounds each file.
    if varnishtest -q -t 60 -D gateway="$GATEWAY_BIN" -D gw_port="$(free_port)" "$f"; then
        passed=$((passed + 1))
        echo "ok   $f"
    else
        failed=$((failed + 1))
        echo "FAIL $f"
    fi
done
echo "vtc: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
