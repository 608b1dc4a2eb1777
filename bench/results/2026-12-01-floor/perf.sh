#!/usr/bin/env bash
# The profile behind perf-c64.txt: perf record of the gateway, monoio-relay and ring-relay, one
# after the other, under GET at 64 connections, in the rig of bench/floor/run.sh (needs
# `cargo build --release --workspace` first; writes /tmp/pp).
set -euo pipefail
cd "$(dirname "$0")/../../.."
mkdir -p /tmp/pp
. bench/lib.sh
pids=(); trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null||true; done; wait 2>/dev/null||true' EXIT
B1=19501 B2=19502 B3=19503 GW=19580 MONO=19585 RAW=19584
start_mock_backends $B1 $B2 $B3; wait_port $B1; wait_port $B2; wait_port $B3
cat >/tmp/pp/gateway.yaml <<YAML
listen: 127.0.0.1:$GW
workers: 1
pin_workers: false
services:
  bench: [http://127.0.0.1:$B1, http://127.0.0.1:$B2, http://127.0.0.1:$B3]
YAML
RUST_LOG=warn taskset -c 1 ${GWBIN:-target/release/gateway} --config /tmp/pp/gateway.yaml >/tmp/pp/gw.log 2>&1 & gw=$!; pids+=($gw)
taskset -c 1 target/release/ring-relay --monoio $MONO $B1 $B2 $B3 & mono=$!; pids+=($mono)
taskset -c 1 target/release/ring-relay $RAW $B1 $B2 $B3 & raw=$!; pids+=($raw)
wait_port $GW; wait_port $MONO; wait_port $RAW
for t in "gw $GW $gw" "mono $MONO $mono" "raw $RAW $raw"; do
  set -- $t
  taskset -c 0 target/release/loadgen --url http://127.0.0.1:$2/v1/proxy/bench/hello --threads 1 --connections 64 --warmup 1s --duration 7s --label $1 --out-dir /tmp/pp >/tmp/pp/lg-$1.txt 2>&1 &
  lg=$!
  sleep 2
  perf record -e cpu-clock -g -p $3 -o /tmp/pp/perf-$1.data -- sleep 4 >/dev/null 2>&1
  wait $lg
  grep -m1 'requests in' /tmp/pp/lg-$1.txt
done
