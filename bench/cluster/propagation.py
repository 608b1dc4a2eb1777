#!/usr/bin/env python3
"""Propagation latency: from one gateway opening a circuit to another answering 503.

Starts redis-server and two gateways (A and B) on free loopback ports, sharing one cluster
name, with SAMPLES services that all point at a closed port. For each service in turn:
one request to A opens its circuit (threshold 1 on A; the 502 answer marks t0), then B is
polled on a keep-alive connection until it answers 503 (t1; B's threshold is high, so its
own 502s never open it). Prints p50/p90/p99/max of t1 - t0 in ms. Everything it started is
stopped by PID.

usage: bench/cluster/propagation.py [--samples 200] [--bin target/release]
"""
import argparse
import http.client
import os
import signal
import sys
import tempfile
import time

from procs import free_port, start_gateway, start_redis


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--bin", default="target/release")
    args = ap.parse_args()
    procs = []
    tmp = tempfile.mkdtemp(prefix="gw-prop-")
    try:
        rport = start_redis(procs)
        dead = free_port()  # nothing listens: every forward is a quick 502
        services = "".join(f"  s{i}: [http://127.0.0.1:{dead}]\n" for i in range(args.samples))
        ports = {
            name: start_gateway(
                procs, args.bin, tmp, name,
                f"breaker: {{failure_threshold: {threshold}, cooldown: 10m}}\n"
                f"cluster: {{redis: redis://127.0.0.1:{rport}/0, name: prop{os.getpid()}}}\n"
                f"services:\n{services}")
            for name, threshold in (("a", 1), ("b", 1000))
        }
        a = http.client.HTTPConnection("127.0.0.1", ports["a"], timeout=5)
        b = http.client.HTTPConnection("127.0.0.1", ports["b"], timeout=5)

        def get(conn, path):
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            return r.status

        lat = []
        for i in range(args.samples):
            path = f"/v1/proxy/s{i}/x"
            if get(a, path) != 502:
                raise SystemExit("A did not forward to the dead backend")
            t0 = time.monotonic()
            while get(b, path) != 503:
                if time.monotonic() - t0 > 5:
                    raise SystemExit(f"s{i}: B never answered 503")
            lat.append((time.monotonic() - t0) * 1000)
        lat.sort()
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
        print(f"samples {len(lat)}  p50 {q(0.50):.1f} ms  p90 {q(0.90):.1f} ms  "
              f"p99 {q(0.99):.1f} ms  max {lat[-1]:.1f} ms")
        print("histogram (5 ms buckets):")
        width = 5
        for lo in range(0, int(lat[-1]) + width, width):
            n = sum(1 for x in lat if lo <= x < lo + width)
            if n:
                print(f"  {lo:4d}-{lo + width:<4d} ms {n:5d} {'#' * max(1, n * 60 // len(lat))}")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGKILL)
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
