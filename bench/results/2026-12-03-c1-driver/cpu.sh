#!/bin/bash
# usage: cpu.sh PID PORT [loadgen args...]  -> prints req/s and CPU us/req of PID over 5 s
pid=$1; port=$2; shift 2
t() { awk '{print $14+$15}' /proc/$pid/stat; }
taskset -c 0 /work/main/target/release/loadgen --url http://127.0.0.1:$port/v1/proxy/bench/x --duration 5s --warmup 1s --cores 0 "$@" > /tmp/rig/lg.out 2>&1 &
lp=$!
sleep 1; a=$(t); wait $lp; b=$(t)
n=$(grep -o '[0-9]* requests in' /tmp/rig/lg.out | awk '{print $1}')
echo "$(grep -o '[0-9.]* req/s' /tmp/rig/lg.out) cpu_us/req=$(echo "($b-$a)*10000/$n" | bc -l | cut -c1-6)"
