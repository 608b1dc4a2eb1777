#!/usr/bin/env bash
# What hostile clients cost: the gateway and NGINX, measured the same way in one run.
# 1. Resident memory per idle keep-alive client connection (idle_rss.py: N connections,
#    one GET each, then idle): the growth of the serving process's RSS divided by N, after
#    small requests and after requests with a 20 KB header.
# 2. Parse cost of heads that arrive a few bytes at a time (split_head.py: 20 heads of
#    29 KB sent 2 bytes at a time, round-robin over 20 connections): the proxy's CPU time
#    per head.
#
#   bench/hostile/run.sh [N ...]      # idle connection counts; default: 1000 10000
#
# Each proxy runs one worker, a fresh process per measurement. Needs: cargo, python3, nginx (apt-get install -y nginx), an open-file
# limit above N + 100 (`ulimit -n`). Everything binds 127.0.0.1 and is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
counts=("$@")
[[ ${#counts[@]} -gt 0 ]] || counts=(1000 10000)
limit=$(ulimit -n)
cargo build --release --quiet --bin gateway --bin mock-backend
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
BACKEND=19201 GW=19280 NG=19281
target/release/mock-backend "$BACKEND" >"$tmp/mock.log" 2>&1 &
pids+=($!)
. bench/lib.sh
wait_port "$BACKEND"
# The gateway gets NGINX's default header deadline (client_header_timeout 60s), so a head sent
# slowly is parsed by both rather than cut off by one. Idle connections hold no upstream
# descriptor, so the connection cap is lifted (auto would halve the descriptor limit).
printf 'listen: 127.0.0.1:%s\nworkers: 1\npin_workers: false\nlimits: {max_head_bytes: 65536, max_connections: 1000000}\ntimeouts: {client_header: 60s}\nservices:\n  svc: [http://127.0.0.1:%s]\n' "$GW" "$BACKEND" >"$tmp/gw.yaml"
mkdir -p "$tmp/ng"
cat >"$tmp/ng/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $tmp/ng/nginx.pid;
error_log $tmp/ng/error.log warn;
worker_rlimit_nofile $limit;
events { worker_connections $((limit - 100)); }
http {
    access_log off;
    client_body_temp_path $tmp/ng/cb; proxy_temp_path $tmp/ng/pt; fastcgi_temp_path $tmp/ng/ft;
    uwsgi_temp_path $tmp/ng/ut; scgi_temp_path $tmp/ng/st;
    keepalive_timeout 300s;
    large_client_header_buffers 4 64k;
    upstream svc { server 127.0.0.1:$BACKEND; keepalive 64; }
    server {
        listen 127.0.0.1:$NG;
        location /v1/proxy/svc/ {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://svc/;
        }
    }
}
NGINX
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores, $(uname -r); nginx $(nginx -v 2>&1 | sed 's/^nginx version: nginx\///'); $(date -u +%Y-%m-%d)"
echo "| proxy | idle connections | header bytes | RSS before (KiB) | RSS after (KiB) | bytes per idle connection |"
echo "|---|---|---|---|---|---|"
for n in "${counts[@]}"; do
  if (( n + 100 > limit )); then echo "skipping N=$n: open-file limit $limit" >&2; continue; fi
  for pad in 0 20000; do
    RUST_LOG=warn target/release/gateway --config "$tmp/gw.yaml" >"$tmp/gw.log" 2>&1 &
    gw=$!; pids+=("$gw"); wait_port "$GW"
    read -r _ _ b a per < <(python3 bench/hostile/idle_rss.py "$GW" "$gw" "$n" "$pad")
    echo "| gateway | $n | $pad | $b | $a | $per |"
    kill "$gw"; wait "$gw" 2>/dev/null || true
    nginx -p "$tmp/ng/" -c "$tmp/ng/nginx.conf" -e "$tmp/ng/error.log" &
    master=$!; pids+=("$master"); wait_port "$NG"
    worker=$(pgrep -P "$master" | head -1)
    read -r _ _ b a per < <(python3 bench/hostile/idle_rss.py "$NG" "$worker" "$n" "$pad")
    echo "| nginx | $n | $pad | $b | $a | $per |"
    kill "$master"; wait "$master" 2>/dev/null || true
  done
done
echo
echo "| proxy | heads | head bytes | answered 200 | CPU ms per head (2-byte pieces) |"
echo "|---|---|---|---|---|"
RUST_LOG=warn target/release/gateway --config "$tmp/gw.yaml" >"$tmp/gw.log" 2>&1 &
gw=$!; pids+=("$gw"); wait_port "$GW"
read -r k len ok ms < <(python3 bench/hostile/split_head.py "$GW" "$gw" 20)
echo "| gateway | $k | $len | $ok | $ms |"
kill "$gw"; wait "$gw" 2>/dev/null || true
nginx -p "$tmp/ng/" -c "$tmp/ng/nginx.conf" -e "$tmp/ng/error.log" &
master=$!; pids+=("$master"); wait_port "$NG"
worker=$(pgrep -P "$master" | head -1)
read -r k len ok ms < <(python3 bench/hostile/split_head.py "$NG" "$worker" 20)
echo "| nginx | $k | $len | $ok | $ms |"
kill "$master"; wait "$master" 2>/dev/null || true
