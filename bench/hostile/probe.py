"""A new client every PERIOD s for SECONDS s, from SRC: a GET on a new connection, timed to
its 200 (at most TIMEOUT s).

    python3 probe.py SRC PORT PERIOD SECONDS TIMEOUT

Prints a JSON line: probes, p50/p90/max in ms of those answered 200, and failures by kind.
"""
import json
import socket
import sys
import threading
import time
from collections import Counter

SRC, PORT = sys.argv[1], int(sys.argv[2])
PERIOD, SECONDS, TIMEOUT = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
results = []
lock = threading.Lock()


def one():
    t0 = time.monotonic()
    s = socket.socket()
    s.settimeout(TIMEOUT)
    try:
        s.bind((SRC, 0))
        s.connect(("127.0.0.1", PORT))
        s.sendall(b"GET /v1/proxy/a/probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        buf = b""
        while b"\r\n" not in buf:
            d = s.recv(4096)
            if not d:
                break
            buf += d
        out = "ok" if buf.startswith(b"HTTP/1.1 200") else "status " + buf[:12].decode(errors="replace")
    except Exception as e:  # noqa: BLE001 - any failure is a failed probe
        out = type(e).__name__
    finally:
        s.close()
    with lock:
        results.append((time.monotonic() - t0, out))


threads = []
start = time.monotonic()
while time.monotonic() < start + SECONDS:
    th = threading.Thread(target=one)
    th.start()
    threads.append(th)
    time.sleep(max(0.0, start + len(threads) * PERIOD - time.monotonic()))
for th in threads:
    th.join()
ok = sorted(t for t, o in results if o == "ok")
failed = [o for _, o in results if o != "ok"]


def ms(q):
    return round(ok[min(len(ok) - 1, int(q * len(ok)))] * 1000, 1) if ok else None


print(json.dumps({"probes": len(results), "ok": len(ok), "p50_ms": ms(0.5), "p90_ms": ms(0.9),
                  "max_ms": ms(1.0), "failures": len(failed), "kinds": dict(Counter(failed))}),
      flush=True)
