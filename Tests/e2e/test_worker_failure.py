"""A worker dies under `shoal serve` and comes back: requests fail naming it while a pair
has no holder, /health turns 503 without any request (the idle probe), the server stays up,
and once the worker is back /health is 200 again and answers are what they were.

usage: python3 Tests/e2e/test_worker_failure.py SHOAL MODEL_DIR
"""
import json
import re
import sys
import time
import urllib.error
import urllib.request

import serve

shoal, model = sys.argv[1], sys.argv[2]
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


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
b_proc, b = start_worker("4-7", "127.0.0.1:0")
proc, base, _ = serve.start_serve(shoal, model, ["--workers", f"{a},{b}", "--rpc-timeout", "5"])

check(health(base) == 200, "healthy with both workers")
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
print(f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)
