#!/usr/bin/env python3
"""Sends K request heads of about 29 KB, two bytes at a time, round-robin over K
connections (so the proxy gets a few bytes per read), reads each response, and prints the
CPU time the proxy process spent per head.

usage: split_head.py PORT PID K
PID is the process that serves the connections (NGINX: its worker)."""
import os
import socket
import sys


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def main():
    port, pid, k = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    head = b"GET /v1/proxy/svc/split HTTP/1.1\r\nHost: bench\r\n"
    # 90 fields (under the gateway's default limits.max_headers of 100), ~28 KB in all.
    for i in range(90):
        head += f"x-pad-{i}: {'v' * 300}\r\n".encode()
    head += b"\r\n"
    socks = []
    for _ in range(k):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    before = cpu_seconds(pid)
    for at in range(0, len(head), 2):
        for s in socks:
            s.sendall(head[at:at + 2])
    statuses = []
    for s in socks:
        got = b""
        while b"\r\n" not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        statuses.append(got.split(b" ", 2)[1].decode() if got else "closed")
        s.close()
    after = cpu_seconds(pid)
    ok = statuses.count("200")
    if ok != k:
        print(f"statuses: {statuses}", file=sys.stderr)
    print(f"{k} {len(head)} {ok} {(after - before) / k * 1e3:.2f}")


if __name__ == "__main__":
    main()
