#!/usr/bin/env bash
# Rescheduling (RES) and function-call (CAL) interrupts per request on each core, from
# /proc/interrupts over loadgen's window: the gateway and monoio-relay at GET c64, 3 rounds
# (output: irq-c64.txt). Needs `cargo build --release --workspace` first.
set -euo pipefail
cd "$(dirname "$0")/../../.."
mkdir -p /tmp/pp
printf "listen: 127.0.0.1:19580\nworkers: 1\npin_workers: false\nservices:\n  bench: [http://127.0.0.1:19501, http://127.0.0.1:19502, http://127.0.0.1:19503]\n" >/tmp/pp/gateway.yaml
. bench/lib.sh
pids=(); trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null||true; done; wait 2>/dev/null||true' EXIT
B1=19501 B2=19502 B3=19503 GW=19580 MONO=19585
start_mock_backends $B1 $B2 $B3; wait_port $B1; wait_port $B2; wait_port $B3
RUST_LOG=warn taskset -c 1 target/release/gateway --config /tmp/pp/gateway.yaml >/tmp/pp/gw.log 2>&1 & gw=$!; pids+=($gw)
taskset -c 1 target/release/ring-relay --monoio $MONO $B1 $B2 $B3 >/dev/null & mono=$!; pids+=($mono)
wait_port $GW; wait_port $MONO
snap() { awk '/RES:|CAL:/ { print $1, $2, $3 }' /proc/interrupts | tr '\n' ' '; }
for round in 1 2 3; do
for t in "gw $GW" "mono $MONO"; do
  set -- $t
  taskset -c 0 target/release/loadgen --url http://127.0.0.1:$2/v1/proxy/bench/hello --threads 1 --connections 64 --warmup 1s --duration 5s --label $1 --out-dir /tmp/pp >/tmp/pp/irq-$1.txt 2>&1 &
  lg=$!
  until grep -q 'window start' /tmp/pp/irq-$1.txt 2>/dev/null; do sleep 0.005; done
  a=$(snap)
  until grep -q 'window end' /tmp/pp/irq-$1.txt 2>/dev/null; do sleep 0.005; done
  b=$(snap)
  wait $lg
  n=$(grep -m1 'requests in' /tmp/pp/irq-$1.txt | awk '{print $2}')
  python3 -c "
a='$a'.split(); b='$b'.split(); n=$n
out=[]
for i in range(0,len(a),3):
    out.append('%s cpu0 %.3f cpu1 %.3f' % (a[i], (int(b[i+1])-int(a[i+1]))/n, (int(b[i+2])-int(a[i+2]))/n))
print('$1', n, 'requests; per request:', '; '.join(out))"
done; done
