#!/usr/bin/env python3
"""Opens N keep-alive connections to a proxy, sends one GET on each (one at a time, so
the proxy never holds more than one request in flight), keeps them all open and idle, and
prints how much the proxy's resident memory grew, per connection.

usage: idle_rss.py PORT PID N [HEADER_BYTES]
PID is the process that serves the connections (NGINX: its worker). HEADER_BYTES adds one
header of that size to each request (a connection that carried a large head)."""
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def main():
    port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    pad = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    extra = f"x-pad: {'a' * pad}\r\n" if pad else ""
    req = f"GET /v1/proxy/svc/idle HTTP/1.1\r\nHost: bench\r\n{extra}\r\n".encode()
    before = rss_kib(pid)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("connection closed before a response")
            got += chunk
        socks.append(s)
    time.sleep(2)
    after = rss_kib(pid)
    per = (after - before) * 1024 / n
    print(f"{n} {pad} {before} {after} {per:.0f}")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
