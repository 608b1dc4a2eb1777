#!/usr/bin/env python3
"""Shares of a fleet budget under equal overload, with Redis near or far.

Starts redis-server, a relay in front of it that holds every chunk DELAY ms in each
direction (in order), one mock-backend and two gateways (A and B, one worker each, one
cluster name) whose service `fl` has `rate_limit: {rate: 100/s, burst: 50, scope:
cluster}` and reaches Redis through the relay. Then THREADS keep-alive clients per gateway
ask as fast as they are answered for SECONDS, and it prints what each gateway admitted,
A's share and the total against the fleet's bound (burst + rate x seconds). Each round
starts every process afresh, so the gateways' rounds fall into new phases. Everything it
started is stopped by PID.

usage: bench/cluster/shares.py [--bin target/release] [--delay-ms 60] [--seconds 8]
                               [--rounds 5] [--threads 3]
"""
import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from procs import free_port, start_gateway, start_redis, wait_port


def relay(listener, target, delay, stop):
    """Accepts on `listener` and forwards to `target`, each chunk `delay` s late."""
    def pump(src, dst):
        try:
            while not stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        try:
            server = socket.create_connection(("127.0.0.1", target))
        except OSError:
            client.close()
            continue
        for a, b in ((client, server), (server, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()


def load(port, seconds, counts, lock):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            conn.request("GET", "/v1/proxy/fl/x")
            r = conn.getresponse()
            r.read()
            status = r.status
        except (OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            status = 0
        with lock:
            counts[status] = counts.get(status, 0) + 1


def one_round(args, n):
    procs = []
    stop = threading.Event()
    tmp = tempfile.mkdtemp(prefix="gw-shares-")
    try:
        rport = start_redis(procs)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        far = listener.getsockname()[1]
        threading.Thread(target=relay, args=(listener, rport, args.delay_ms / 1000, stop),
                         daemon=True).start()
        bport = free_port()
        procs.append(subprocess.Popen([os.path.join(args.bin, "mock-backend"), str(bport)],
                                      stdout=subprocess.DEVNULL))
        wait_port(bport)
        config = (f"cluster: {{redis: redis://127.0.0.1:{far}/0, name: shares{os.getpid()}x{n}}}\n"
                  f"services:\n  fl:\n    backends: [http://127.0.0.1:{bport}]\n"
                  f"    rate_limit: {{rate: 100/s, burst: 50, scope: cluster}}\n")
        ports = {name: start_gateway(procs, args.bin, tmp, name, config) for name in ("a", "b")}
        time.sleep(2)  # both heartbeats in, the first slices taken
        counts = {"a": {}, "b": {}}
        lock = threading.Lock()
        threads = [threading.Thread(target=load, args=(ports[name], args.seconds, counts[name], lock))
                   for name in ("a", "b") for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return counts["a"].get(200, 0), counts["b"].get(200, 0), counts
    finally:
        stop.set()
        for p in reversed(procs):
            p.send_signal(signal.SIGKILL)
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--delay-ms", type=float, default=60)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=3)
    args = ap.parse_args()
    bound = 50 + 100 * args.seconds
    print(f"bin {args.bin}, Redis {args.delay_ms:g} ms away each way, {args.seconds:g} s, "
          f"{args.threads} clients per gateway, bound {bound:.0f}")
    shares = []
    for n in range(args.rounds):
        a, b, counts = one_round(args, n)
        share = a / max(1, a + b)
        shares.append(share)
        other = {k: v for k, v in list(counts["a"].items()) + list(counts["b"].items())
                 if k not in (200, 429)}
        print(f"round {n + 1}: A {a}, B {b}, A's share {share:.2f}, total {a + b}"
              + (f", other answers {other}" if other else ""))
    worst = max(abs(s - 0.5) for s in shares)
    print(f"A's shares {' '.join(f'{s:.2f}' for s in shares)}; furthest from even: "
          f"{0.5 - worst:.2f}/{0.5 + worst:.2f}")


if __name__ == "__main__":
    sys.exit(main())
