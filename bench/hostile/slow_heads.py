"""One address's slow-head flood: N connections from SRC, each sending a request head one
byte every INTERVAL s, each reconnected at once when the gateway closes or resets it.

    python3 slow_heads.py SRC PORT N INTERVAL SECONDS

Prints a JSON line of counts (connects, closes, resets) and its own CPU time.
"""
import errno
import json
import os
import random
import selectors
import socket
import sys
import time

SRC, PORT, N = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
INTERVAL, SECONDS = float(sys.argv[4]), float(sys.argv[5])
HEAD = b"GET /v1/proxy/a/slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100000
sel = selectors.DefaultSelector()
slots = {}  # fd -> [socket, bytes sent, next send]
stats = {"connects": 0, "closed": 0, "resets": 0, "connect_errors": 0}


def open_one(now):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.bind((SRC, 0))
        r = s.connect_ex(("127.0.0.1", PORT))
    except OSError:
        s.close()
        stats["connect_errors"] += 1
        return False
    if r not in (0, errno.EINPROGRESS):
        s.close()
        stats["connect_errors"] += 1
        return False
    stats["connects"] += 1
    slots[s.fileno()] = [s, 0, now + random.uniform(0, 0.05)]
    sel.register(s, selectors.EVENT_READ)
    return True


def drop(fd):
    s = slots.pop(fd)[0]
    sel.unregister(s)
    s.close()


end = time.time() + SECONDS
while time.time() < end:
    now = time.time()
    while len(slots) < N and open_one(now):
        pass
    for key, _ in sel.select(timeout=0.02):
        if key.fd not in slots:
            continue
        try:
            slots[key.fd][0].recv(4096)
            stats["closed"] += 1  # a 408, or a FIN
        except OSError:
            stats["resets"] += 1
        drop(key.fd)
    now = time.time()
    for fd in list(slots):
        slot = slots[fd]
        if slot[2] > now:
            continue
        try:
            slot[1] += slot[0].send(HEAD[slot[1]:slot[1] + 1])
            slot[2] = now + INTERVAL
        except BlockingIOError:
            slot[2] = now + 0.05  # still connecting
        except OSError:
            stats["resets"] += 1
            drop(fd)
t = os.times()
stats["cpu_s"] = round(t.user + t.system, 2)
print(json.dumps(stats), flush=True)
