#!/usr/bin/env bash
# ad hoc: start 3 mock backends (core 0), gateway (core 1), tcp relay (core 1), nginx (core 1)
set -u
R=/work/main/target/release
T=/tmp/rig
for p in 19001 19002 19003; do taskset -c 0 $R/mock-backend $p >$T/mock-$p.log 2>&1 & echo $! >> $T/pids; done
cat > $T/gw.yaml <<Y
listen: 127.0.0.1:18080
workers: 1
pin_workers: false
services:
  bench:
    - http://127.0.0.1:19001
    - http://127.0.0.1:19002
    - http://127.0.0.1:19003
Y
RUST_LOG=warn taskset -c 1 ${GW:-$R/gateway} --config $T/gw.yaml >$T/gw.log 2>&1 & echo $! > $T/gw.pid; echo $! >> $T/pids
sed -e "s/@TCP_PORT@/18083/; s/@B1@/19001/; s/@B2@/19002/; s/@B3@/19003/" /work/main/bench/peers/haproxy-tcp.cfg > $T/tcp.cfg
taskset -c 1 haproxy -db -f $T/tcp.cfg >$T/tcp.log 2>&1 & echo $! > $T/tcp.pid; echo $! >> $T/pids
sleep 1
