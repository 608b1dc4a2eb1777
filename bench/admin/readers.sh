#!/usr/bin/env bash
# Memory under slow readers of a large admin answer: a gateway with SERVICES services of 10
# backends each (about 18 MB of `/admin/backends` at 5 000) is read by READERS curls at
# RATE, started 0.2 s apart; prints the gateway's RSS at start, its peak while they read,
# and 3 s after, and how many answers arrived whole.
#
#   bench/admin/readers.sh                       # SERVICES=5000 READERS=16 RATE=4M
#   bench/admin/readers.sh path/to/gateway       # another binary (e.g. an older build)
#
# Needs: cargo, curl, python3. Everything binds 127.0.0.1 (ephemeral ports) and is stopped
# by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
services=${SERVICES:-5000} readers=${READERS:-16} rate=${RATE:-4M}
cargo build --release --quiet --bin gateway
bin=${1:-target/release/gateway}
tmp=$(mktemp -d)
gw=""
trap '[ -n "$gw" ] && kill "$gw" 2>/dev/null; rm -rf "$tmp"' EXIT
python3 - "$services" > "$tmp/config.yaml" <<'PY'
import sys
n = int(sys.argv[1])
print("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nworkers: 1\npin_workers: false\nservices:")
for s in range(n):
    print(f"  svc-{s:05d}:")
    for b in range(10):
        print(f"    - http://127.0.0.1:{40000 + b}/s{s}/b{b}")
PY
"$bin" --config "$tmp/config.yaml" > /dev/null 2> "$tmp/log" &
gw=$!
admin=""
for _ in $(seq 1 300); do
    admin=$(sed -n 's/.*admin listening on \(127\.0\.0\.1:[0-9]*\).*/\1/p' "$tmp/log" | head -1)
    [ -n "$admin" ] && curl -sf -o /dev/null "http://$admin/healthz" && break
    sleep 0.1
done
[ -n "$admin" ] || { echo "the gateway did not start:"; tail -5 "$tmp/log"; exit 1; }
rss() { ps -o rss= -p "$gw" | tr -d ' '; }
echo "start: rss ${services} services $(rss) KiB"
pids=()
for i in $(seq 1 "$readers"); do
    timeout 60 curl -s --limit-rate "$rate" -o "$tmp/r$i" -w '%{http_code}\n' "http://$admin/admin/backends" > "$tmp/s$i" &
    pids+=($!)
    sleep 0.2
done
peak=0
while kill -0 "${pids[@]}" 2>/dev/null; do
    r=$(rss); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.2
done
wait "${pids[@]}" || true
echo "peak while $readers readers read at $rate/s: $peak KiB"
sleep 3
echo "3 s after: $(rss) KiB"
echo "answers (status, bytes, count):"
for i in $(seq 1 "$readers"); do echo "$(cat "$tmp/s$i") $(stat -c %s "$tmp/r$i")"; done | sort | uniq -c
