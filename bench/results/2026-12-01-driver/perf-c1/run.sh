#!/usr/bin/env bash
# ad hoc: perf profile of the gateway at 1 connection, io_uring vs epoll (same binary)
set -u
R=/work/main/target/release
T=/tmp/pf
: > $T/pids
for p in 19001 19002 19003; do taskset -c 0 $R/mock-backend $p >$T/mock-$p.log 2>&1 & echo $! >> $T/pids; done
start() { # name port driver
cat > $T/$1.yaml <<Y
listen: 127.0.0.1:$2
workers: 1
pin_workers: false
services:
  bench:
    - http://127.0.0.1:19001
    - http://127.0.0.1:19002
    - http://127.0.0.1:19003
Y
GATEWAY_DRIVER=$3 RUST_LOG=warn taskset -c 1 $R/gateway --config $T/$1.yaml >$T/$1.log 2>&1 & echo $! >> $T/pids; echo "$1 $2 $!" >> $T/variants
}
: > $T/variants
start uring 18090 ""
start epoll 18091 epoll
sleep 1
CONNS=${CONNS:-1}
for round in 1 2; do
while read name port pid; do
  $R/loadgen --url http://127.0.0.1:$port/v1/proxy/bench/hello --threads 1 --cores 0 --connections $CONNS --warmup 2s --duration 8s --label $name > $T/$name-c$CONNS-$round.txt 2>&1 &
  lg=$!
  sleep 3
  perf record -q -e cpu-clock -g -p $pid -o $T/$name-c$CONNS-$round.data -- sleep 5 >/dev/null 2>&1
  perf stat -e 'syscalls:sys_enter_*' -p $pid -- sleep 1 2> $T/$name-c$CONNS-$round.stat >/dev/null
  wait $lg
done < $T/variants
done
for p in $(cat $T/pids); do kill $p 2>/dev/null; done
