"""Elastic placement with real processes (issue 16): `shoal serve --placement auto` and
workers that `--join` it. Requests stream all along while one worker joins, two more join
(the placement spreads), one is drained with `shoal cluster drain` (it exits 0), one is
killed, a new one joins and the first leaves on SIGTERM (drained, exit 0). Every answer
equals the one a single process gives (f32 wire), `/health` is 503 until the experts are
held, and `shoal cluster status` / `GET /v1/cluster` show the workers.

usage: python3 Tests/e2e/test_elastic.py SHOAL MODEL_DIR
"""
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import serve

shoal, model = sys.argv[1], sys.argv[2]
check = serve.Checks()
PROMPTS = ["The shoal", "Once upon a time", "Swift is", "Experts of a mixture"]


def get(base, path):
    try:
        with urllib.request.urlopen(base + path, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def stream(base, prompt):
    """A streamed completion's text, or an error string."""
    body = json.dumps({"prompt": prompt, "max_tokens": 16, "temperature": 0, "stream": True}).encode()
    req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
    text = ""
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            for line in r:
                line = line.decode().strip()
                if line.startswith("data: ") and line != "data: [DONE]":
                    event = json.loads(line[6:])
                    if "error" in event:
                        return "ERROR " + json.dumps(event["error"])
                    text += event["choices"][0]["text"]
    except urllib.error.HTTPError as e:
        return f"ERROR {e.code} {e.read()!r}"
    return text


def wait_until(what, seconds, condition):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    print(f"     (timed out waiting for {what})")
    return False


def status(cluster):
    out = subprocess.run([shoal, "cluster", "status", "--coordinator", cluster, "--json"],
                         capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 else {"workers": [], "error": out.stderr}


def serving(cluster):
    return [w for w in status(cluster)["workers"] if w["state"] == "serving"]


def join(cluster, name):
    proc, line = serve.start(shoal, ["worker", "--model", model, "--join", cluster, "--listen", "127.0.0.1:0",
                                     "--memory", "1GiB", "--threads", "1", "--name", name,
                                     # Told, not measured: a startup read on this shared host can
                                     # differ by more than the 1.5x the planner treats as equal,
                                     # and then the spread below is weighted, not even.
                                     "--read-bandwidth", "10"], "shoal worker ready:")
    check("reads 10.0 GB/s (as told)" in line, f"{name} offers the bandwidth it was told: {line}")
    return proc, re.search(r"listening on (\S+),", line).group(1)


# The single process every answer must equal.
local, local_base, _ = serve.start_serve(shoal, model, ["--grpc", "off"])
expected = {p: stream(local_base, p) for p in PROMPTS}
serve.stop(local)
check(all(not t.startswith("ERROR") and t for t in expected.values()), "one process answers every prompt")

coordinator, line = serve.start(shoal, ["serve", "--model", model, "--http", "127.0.0.1:0", "--grpc", "off", "--threads", "1",
                                       "--model-name", "tiny", "--placement", "auto", "--cluster-listen", "127.0.0.1:0",
                                       "--wire-dtype", "f32"], "shoal serve ready:")
base = "http://" + re.search(r"http (\S+),", line).group(1)
cluster = re.search(r"join at (\S+),", line).group(1)
code, _ = get(base, "/health")
check(code == 503, f"no worker yet: /health {code}")
code, body = get(base, "/v1/cluster")
doc = json.loads(body) if code == 200 else {}
check(code == 200 and doc.get("placement") == "auto" and len(doc.get("unplaced", [])) > 0 and not doc.get("complete"),
      "GET /v1/cluster lists every pair unplaced before a worker joins")

# One worker joins: measured from its start to the first answer.
started = time.time()
w1, a1 = join(cluster, "w1")
check(wait_until("/health 200", 60, lambda: get(base, "/health")[0] == 200), "one joined worker holds every expert: /health 200")
first = stream(base, PROMPTS[0])
print(f"     join to serving: {time.time() - started:.2f} s (process start to first answer)")
check(first == expected[PROMPTS[0]], "the first answer equals one process's")

# Requests stream, one after another, while the cluster changes.
answers, stop_traffic = [], threading.Event()


def traffic():
    i = 0
    while not stop_traffic.is_set():
        p = PROMPTS[i % len(PROMPTS)]
        answers.append((p, stream(base, p)))
        i += 1


t = threading.Thread(target=traffic, daemon=True)
t.start()


def answered(n):
    target = len(answers) + n
    return wait_until(f"{n} more answers", 120, lambda: len(answers) >= target)


check(answered(3), "requests flow through one worker")
w2, a2 = join(cluster, "w2")
w3, a3 = join(cluster, "w3")
def pairs_held(doc):
    return sorted(sum(len(layer) for layer in w["experts"]) for w in doc["workers"] if w["state"] == "serving")


def spread(doc):
    held = pairs_held(doc)
    return (len(held) == 3 and doc["complete"] and all(len(h) == 2 for layer in doc["holders"] for h in layer)
            and held[-1] - held[0] <= 2 * len(doc["holders"]))


# The re-placement runs on its own after the joins: wait for it to settle, then look.
check(wait_until("the placement to spread over 3 workers", 60, lambda: spread(status(cluster))),
      f"two more join: every pair held twice, spread over three workers (pairs each: {pairs_held(status(cluster))})")
text = subprocess.run([shoal, "cluster", "status", "--coordinator", cluster], capture_output=True, text=True, timeout=30).stdout
check("serving" in text and a2 in text and "holders" in text, "shoal cluster status prints the workers and the map")
check(answered(3), "requests flow through three workers")

out = subprocess.run([shoal, "cluster", "drain", "--coordinator", cluster, a2], capture_output=True, text=True, timeout=120)
check(out.returncode == 0, f"shoal cluster drain {a2}: exit {out.returncode} {out.stderr.strip()}")
try:
    code = w2.wait(timeout=30)
except subprocess.TimeoutExpired:
    code = "still running"
check(code == 0, f"the drained worker exits 0 (got {code})")
check(answered(3), "requests flow after the drain")

w3.send_signal(signal.SIGKILL)
w3.wait(timeout=10)
check(answered(3), "requests flow after a worker is killed (its replica serves)")
check(wait_until("the killed worker counted gone", 30,
                 lambda: any(w["address"] == a3 and w["state"] == "gone" for w in status(cluster)["workers"])),
      "the killed worker is counted gone and its pairs re-placed")

w4, a4 = join(cluster, "w4")
check(wait_until("w4 serving", 60, lambda: any(w["address"] == a4 for w in serving(cluster))), "a new worker joins")
check(answered(3), "requests flow with the new worker")
w1.send_signal(signal.SIGTERM)
try:
    code = w1.wait(timeout=60)
except subprocess.TimeoutExpired:
    code = "still running"
check(code == 0, f"SIGTERM drains the first worker and it exits 0 (got {code})")
check([w["address"] for w in serving(cluster)] == [a4], "the new worker serves alone")
check(answered(3), "requests flow after the SIGTERM drain")

stop_traffic.set()
t.join(timeout=120)
wrong = [(p, a) for p, a in answers if a != expected[p]]
check(len(answers) >= 18 and not wrong,
      f"{len(answers)} streamed answers, all equal to one process's" + (f"; first wrong: {wrong[0]}" if wrong else ""))
check(serve.stop(coordinator) == 0, "serve stops with exit 0")
check(serve.stop(w4) == 0, "the last worker stops with exit 0")

# A one-off generate places the experts on the workers that join it, then computes as one
# process does.
import socket
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
ids = ["--ids", "1,2,3,4,5", "--max-tokens", "12", "--json"]
local_run = subprocess.run([shoal, "generate", "--model", model, "--threads", "1"] + ids, capture_output=True, text=True, timeout=120)
one_off = subprocess.Popen([shoal, "generate", "--model", model, "--threads", "1", "--placement", "auto", "--wire-dtype", "f32",
                            "--cluster-listen", f"127.0.0.1:{port}", "--join-wait", "60"] + ids,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
serve._started.append(one_off)
deadline = time.time() + 30
worker = None
while worker is None and time.time() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            worker, _ = join(f"127.0.0.1:{port}", "one-off")
    except OSError:
        time.sleep(0.1)
try:
    out, err = one_off.communicate(timeout=120)
except subprocess.TimeoutExpired:
    one_off.kill()
    out, err = one_off.communicate()
check(one_off.returncode == 0 and out == local_run.stdout and out.startswith('{"ids":['),
      f"generate --placement auto with a joined worker equals one process ({out.strip()[:80]} vs {local_run.stdout.strip()[:80]}; {err.strip()[-200:]})")
if worker is not None:
    worker.kill()
check.finish()
