"""Clients that open a connection for every request until SECONDS pass; prints how many
answers were a whole 200 and how the others failed (refused, reset, another status).

    python3 bench/upgrade/clients.py HOST PORT PATH SECONDS THREADS
"""
import socket
import sys
import threading
import time

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
secs, n = float(sys.argv[4]), int(sys.argv[5])
ok = [0] * n
bad = [[] for _ in range(n)]
end = time.time() + secs
request = f"GET {path} HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n".encode()


def run(i):
    while time.time() < end:
        try:
            s = socket.create_connection((host, port), timeout=3)
            s.sendall(request)
            got = b""
            while True:
                c = s.recv(65536)
                if not c:
                    break
                got += c
            s.close()
            if got.startswith(b"HTTP/1.1 200 "):
                ok[i] += 1
            else:
                bad[i].append(got.split(b"\r\n", 1)[0].decode(errors="replace"))
        except OSError as e:
            bad[i].append(type(e).__name__)


threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
failed = sum(bad, [])
kinds = {k: failed.count(k) for k in set(failed)}
print(f"{path}: {sum(ok)} ok, {len(failed)} failed {kinds}")
