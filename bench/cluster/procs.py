"""Loopback ports and processes for the scripts in bench/cluster."""
import os
import socket
import subprocess
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on {port}")


def start_redis(procs):
    """Starts a redis-server on a free loopback port, adds it to `procs`, returns the port."""
    port = free_port()
    procs.append(subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--loglevel", "warning"], stdout=subprocess.DEVNULL))
    wait_port(port)
    return port


def start_gateway(procs, bin_dir, tmp, name, config):
    """Starts a one-worker gateway on a free port with `config` (its lines after `listen`,
    `workers` and `pin_workers`), quiet but for errors; adds it to `procs`, returns the port."""
    port = free_port()
    path = os.path.join(tmp, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(f"listen: 127.0.0.1:{port}\nworkers: 1\npin_workers: false\n{config}")
    procs.append(subprocess.Popen([os.path.join(bin_dir, "gateway"), "--config", path],
                                  stdout=subprocess.DEVNULL,
                                  env=dict(os.environ, RUST_LOG="error")))
    wait_port(port)
    return port
