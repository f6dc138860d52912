"""Starts `shoal serve` (and optionally workers) on loopback port 0 for an end-to-end test.

Every process started here is killed at exit; nothing else is touched.
"""
import atexit
import re
import signal
import subprocess
import sys
import threading

_started = []


def _cleanup():
    for p in _started:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


atexit.register(_cleanup)


def _ready_line(proc, prefix, timeout):
    """Reads stdout until the ready line; fails after `timeout` seconds."""
    found = {}

    def read():
        for line in proc.stdout:
            if line.startswith(prefix):
                found["line"] = line.strip()
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    if "line" not in found:
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        sys.exit(f"no '{prefix}' line within {timeout}s; stderr:\n{err}")
    return found["line"]


def start(shoal, argv, prefix, timeout=120):
    proc = subprocess.Popen([shoal] + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _started.append(proc)
    line = _ready_line(proc, prefix, timeout)
    # Keep draining stderr so the child never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, line


def start_workers(shoal, model, specs):
    """One `shoal worker` per spec; returns their addresses."""
    addresses = []
    for spec in specs:
        _, line = start(shoal, ["worker", "--model", model, "--experts", spec, "--listen", "127.0.0.1:0",
                                "--threads", "1"], "shoal worker ready:")
        addresses.append(re.search(r"listening on (\S+),", line).group(1))
    return addresses


def start_serve(shoal, model, extra=()):
    """`shoal serve` on free ports; returns (process, http base URL, grpc address)."""
    proc, line = start(shoal, ["serve", "--model", model, "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
                               "--threads", "1", "--model-name", "tiny"] + list(extra), "shoal serve ready:")
    http = re.search(r"http (\S+),", line).group(1)
    grpc = re.search(r"grpc (\S+),", line).group(1)
    return proc, f"http://{http}", grpc


class Checks:
    """Prints each check as ok/FAIL; `finish()` exits 1 if any failed."""

    def __init__(self):
        self.failures = []

    def __call__(self, ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            self.failures.append(what)

    def finish(self):
        print(f"{len(self.failures)} failure(s)")
        sys.exit(1 if self.failures else 0)


def stop(proc, timeout=30):
    """SIGTERM, then the exit code (killed after `timeout`)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "killed after SIGTERM timeout"
