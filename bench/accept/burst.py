"""Opens N connections to the gateway at once (connect only) and reports how long the
gateway took to accept them, from its own counter (gateway_accepted_connections_total)."""
import re
import socket
import sys
import time
import urllib.request

port, admin, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])


def accepted():
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r"^gateway_accepted_connections_total\{[^}]*\} (\S+)", text, re.M))


before = accepted()
t0 = time.monotonic()
socks = []
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    socks.append(s)
issued = time.monotonic() - t0
marks = {}
while time.monotonic() - t0 < 20:
    got = accepted() - before
    for q in (0.5, 0.9, 0.99, 1.0):
        if q not in marks and got >= q * n:
            marks[q] = time.monotonic() - t0
    if got >= n:
        break
    time.sleep(0.01)
ms = lambda q: f"{marks[q] * 1000:.0f} ms" if q in marks else "not within 20 s"
print(f"{n} connects issued in {issued * 1000:.0f} ms; accepted: half {ms(0.5)}, 90% {ms(0.9)}, 99% {ms(0.99)}, all {ms(1.0)}")
