"""Workers that come up after `shoal serve`, then one that dies under it and comes back:
/health is 503 until every pair has a holder (the idle probe notices without any request),
requests fail naming the worker or the pairs meanwhile, the server stays up, and once the
worker is back answers are what they were.

usage: python3 Tests/e2e/test_worker_failure.py SHOAL MODEL_DIR
"""
import json
import re
import socket
import sys
import time
import urllib.error
import urllib.request

import serve

shoal, model = sys.argv[1], sys.argv[2]
check = serve.Checks()


def health(base):
    try:
        with urllib.request.urlopen(base + "/health", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def complete(base):
    body = json.dumps({"prompt": "The shoal", "max_tokens": 10, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)["choices"][0]["text"]
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)["error"]["message"]


def wait_for(base, status, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if health(base) == status:
            return True
        time.sleep(0.2)
    return False


def start_worker(spec, listen):
    p, line = serve.start(shoal, ["worker", "--model", model, "--experts", spec, "--listen", listen, "--threads", "1"],
                          "shoal worker ready:")
    return p, re.search(r"listening on (\S+),", line).group(1)


_, a = start_worker("0-3", "127.0.0.1:0")
with socket.socket() as s:  # a free port for the worker that starts late
    s.bind(("127.0.0.1", 0))
    b = f"127.0.0.1:{s.getsockname()[1]}"
proc, base, _ = serve.start_serve(shoal, model, ["--workers", f"{a},{b}", "--rpc-timeout", "5"])
check(health(base) == 503, "started before a worker: /health 503")
status, message = complete(base)
check(status == 503 and "no live worker" in message, f"a request meanwhile names the pairs: {message[:80]!r}")
b_proc, _ = start_worker("4-7", b)
check(wait_for(base, 200, 15), "healthy once the late worker is up (no request needed)")
status, text = complete(base)
check(status == 200, f"a completion: {text!r}")

b_proc.kill()
b_proc.wait()
status, message = complete(base)
check(status == 503 and b in message, f"with a worker dead: {status} {message!r}")
check(wait_for(base, 503, 10), "/health 503 while experts 4-7 have no holder")
status, message = complete(base)
check(status == 503 and "no live worker" in message, f"a later request is refused, naming the pairs: {message[:100]!r}")

start_worker("4-7", b)
check(wait_for(base, 200, 15), "/health 200 once the worker is back (no request needed)")
status, again = complete(base)
check(status == 200 and again == text, f"the same answer as before: {again!r}")

code = serve.stop(proc)
check(code == 0, f"SIGTERM: exit {code}")
check.finish()
