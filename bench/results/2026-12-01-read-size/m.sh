#!/usr/bin/env bash
# m.sh PORT PID LABEL [loadgen args...] -> µs CPU per request of PID over the window
# (loadgen output in ${RIG:-/tmp/rig}/LABEL.txt)
port=$1 pid=$2 label=$3; shift 3
R=/work/main/target/release
ticks() { s=$(<"/proc/$1/stat"); s=${s##*) }; read -r -a f <<<"$s"; echo $((f[11]+f[12])); }
$R/loadgen --url http://127.0.0.1:$port/v1/proxy/bench/${P:-hello} --threads 1 --cores 0 --warmup 2s --duration ${DUR:-6}s --label $label "$@" > ${RIG:-/tmp/rig}/$label.txt 2>&1 &
lg=$!
until grep -q "^loadgen: window start" ${RIG:-/tmp/rig}/$label.txt 2>/dev/null; do sleep 0.005; done
a=$(ticks $pid)
until grep -q "^loadgen: window end" ${RIG:-/tmp/rig}/$label.txt 2>/dev/null; do sleep 0.005; done
b=$(ticks $pid)
wait $lg
n=$(grep -oE '"requests": *[0-9]+|[0-9]+ requests' ${RIG:-/tmp/rig}/$label.txt | head -1 | grep -oE '[0-9]+')
rps=$(grep -m1 -oE '[0-9.]+ req/s' ${RIG:-/tmp/rig}/$label.txt)
echo "$label ticks=$((b-a)) n=$n us/req=$(awk -v t=$((b-a)) -v n=$n 'BEGIN{printf "%.1f", t*10000/n}') $rps"
