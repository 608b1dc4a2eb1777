#!/usr/bin/env bash
# A/B: CPU per MiB of two gateway builds with splice: true, download (or upload) 1 MiB, 16 conns.
set -u
cd /work/main
A=${A:-target/release/gateway} B=${B:-/tmp/gw-6a1} ROUNDS=${ROUNDS:-4} MODE=${MODE:-download} SPLICE=${SPLICE:-true}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
for p in 22001 22002 22003; do taskset -c 0 target/release/mock-backend $p >/dev/null 2>&1 & pids+=($!); done
mk() { printf 'splice: %s\nlisten: 127.0.0.1:%s\nworkers: 1\npin_workers: false\naccess_log: false\nservices:\n  bench: [http://127.0.0.1:22001, http://127.0.0.1:22002, http://127.0.0.1:22003]\n' "$SPLICE" "$1" > /tmp/ab/gw-$1.yaml; }
mk 22011; mk 22012
RUST_LOG=warn taskset -c 1 $A --config /tmp/ab/gw-22011.yaml >/tmp/ab/a.log 2>&1 & pa=$!; pids+=($pa)
RUST_LOG=warn taskset -c 1 $B --config /tmp/ab/gw-22012.yaml >/tmp/ab/b.log 2>&1 & pb=$!; pids+=($pb)
sleep 1
hz=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' /proc/$1/stat; }
args=(--connections 16 --warmup 2s --duration 5s --threads 1)
[[ $MODE == download ]] && args+=(--header 'x-mock-body-bytes: 1048576')
[[ $MODE == upload ]] && args+=(--method POST --body-size 1048576)
for r in $(seq $ROUNDS); do
  for t in a b; do
    port=22011; pid=$pa; [[ $t == b ]] && { port=22012; pid=$pb; }
    log=/tmp/ab/lg-$t-$r.txt
    taskset -c 0 target/release/loadgen --url http://127.0.0.1:$port/v1/proxy/bench/big/hello "${args[@]}" > $log 2>&1 &
    lg=$!
    until grep -q 'window start' $log 2>/dev/null; do sleep 0.005; done; a0=$(ticks $pid)
    until grep -q 'window end' $log 2>/dev/null; do sleep 0.005; done; a1=$(ticks $pid)
    wait $lg
    n=$(grep -m1 'requests in' $log | awk '{print $2}')
    echo "round $r $t: $(awk -v a=$a0 -v b=$a1 -v n=$n -v hz=$hz 'BEGIN{printf "%.0f us/MiB, %d req", (b-a)*1e6/hz/n, n}')"
  done
done
