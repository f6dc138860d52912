"""Hard to break: many clients at once against `shoal serve`, a third of them hanging up
mid-stream or mid-request, others sending garbage; then 1500 randomly mutated HTTP requests
(bytes flipped, cut, inserted, stray headers). The server must answer each with a 4xx or a
2xx (never a 500) or close, stay up, leave nothing running, free the KV cache, and still
give exactly the answer it gave before.

usage: python3 Tests/e2e/test_stress.py SHOAL MODEL_DIR
"""
import json
import random
import socket
import sys
import threading
import time
import urllib.request

import serve

shoal, model = sys.argv[1], sys.argv[2]
# A mutated request may stay valid without its max_tokens (a mangled key is ignored): it is
# answered, half-close or not, so the default is kept short for the fuzz loop below.
proc, base, _ = serve.start_serve(shoal, model, ["--max-batch", "8", "--max-queue", "64", "--default-max-tokens", "16"])
host, port = base.removeprefix("http://").rsplit(":", 1)
port = int(port)


def post(path, body, timeout=120):
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def metric(name):
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return None


probe = {"prompt": "The shoal", "max_tokens": 12, "temperature": 0}
before = post("/v1/completions", probe)["choices"][0]["text"]

outcomes = {"completed": 0, "hung_up": 0, "garbage_400": 0, "unexpected": []}
lock = threading.Lock()


def raw(request_bytes, read_until=None, hang_up_after=None):
    s = socket.create_connection((host, port), timeout=60)
    s.sendall(request_bytes)
    got = b""
    try:
        while True:
            if hang_up_after is not None and len(got) >= hang_up_after:
                return got
            chunk = s.recv(4096)
            if not chunk:
                return got
            got += chunk
            if read_until and read_until in got:
                return got
    finally:
        s.close()


def client(i):
    rng = random.Random(i)
    kind = rng.choice(["stream", "plain", "hangup_stream", "hangup_wait", "garbage"])
    body = json.dumps({"prompt": f"Client {i} says", "max_tokens": rng.randint(4, 40), "temperature": 0.7,
                       "seed": i, "stream": kind in ("stream", "hangup_stream")}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    try:
        if kind == "garbage":
            junk = rng.choice([b"{not json", b'{"prompt": 5}', b'{"prompt": "x", "max_tokens": "many"}', b"[]"])
            reply = raw(head.replace(str(len(body)).encode(), str(len(junk)).encode()) + junk)
            ok = reply.startswith(b"HTTP/1.1 400")
            with lock:
                outcomes["garbage_400" if ok else "unexpected"] += 1 if ok else [reply[:80]]
        elif kind == "hangup_stream":
            raw(head + body, hang_up_after=rng.randint(1, 400))
            with lock:
                outcomes["hung_up"] += 1
        elif kind == "hangup_wait":
            s = socket.create_connection((host, port), timeout=60)
            s.sendall(head + body)
            time.sleep(rng.random() * 0.3)
            s.close()
            with lock:
                outcomes["hung_up"] += 1
        else:
            reply = raw(head + body)
            ok = reply.startswith(b"HTTP/1.1 200") and (b"[DONE]" in reply if kind == "stream" else b'"usage"' in reply)
            with lock:
                if ok:
                    outcomes["completed"] += 1
                else:
                    outcomes["unexpected"].append(reply[:120])
    except Exception as e:  # noqa: BLE001 — every failure is reported below
        with lock:
            outcomes["unexpected"].append(repr(e))


threads = [threading.Thread(target=client, args=(i,)) for i in range(48)]
[t.start() for t in threads]
[t.join(timeout=180) for t in threads]

# Mutated requests, each on its own connection, sent whole then half-closed.
valid_body = json.dumps({"prompt": "hi", "max_tokens": 2}).encode()
valid = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
         + str(len(valid_body)).encode() + b"\r\n\r\n" + valid_body)
rng = random.Random(1)
fuzz_statuses = {}
for i in range(1500):
    b = bytearray(valid)
    for _ in range(rng.randint(1, 8)):
        op, pos = rng.random(), rng.randrange(len(b))
        if op < 0.4:
            b[pos] = rng.randrange(256)
        elif op < 0.6:
            del b[pos:pos + rng.randint(1, 10)]
        elif op < 0.8:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        else:
            b[pos:pos] = rng.choice([b"\r\n", b": ", b"Transfer-Encoding: chunked\r\n", b"\x00",
                                     b"Content-Length: 99999999999999999999\r\n", b"Expect: 100-continue\r\n"])
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(bytes(b))
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    status = reply[9:12].decode(errors="replace") or "closed"
    fuzz_statuses[status] = fuzz_statuses.get(status, 0) + 1
    # 505 is the right answer to a mangled HTTP version; any other 5xx is a server fault, and
    # so is no answer at all: the client only half-closed, it is still reading.
    if (status.startswith("5") and status != "505") or status == "closed" or proc.poll() is not None:
        outcomes["unexpected"].append(f"mutated request {bytes(b)[:200]!r} -> {reply[:200]!r}")
        break
print(f"mutated requests: {fuzz_statuses}")

# Hung-up sequences are dropped at their next step: wait for the scheduler to drain.
deadline = time.time() + 60
while time.time() < deadline and (metric("shoal_running_sequences") or metric("shoal_queue_depth")):
    time.sleep(0.2)
running, queued, kv = metric("shoal_running_sequences"), metric("shoal_queue_depth"), metric("shoal_kv_cache_tokens_used")
cancelled = metric('shoal_requests_total{outcome="cancelled"}')
after = post("/v1/completions", probe)["choices"][0]["text"]

print(f"outcomes: {outcomes}; the server counted {cancelled} cancelled")
failures = []
if outcomes["unexpected"]:
    failures.append(f"unexpected replies: {outcomes['unexpected'][:3]}")
if outcomes["completed"] == 0 or outcomes["hung_up"] == 0 or outcomes["garbage_400"] == 0:
    failures.append("every kind of client should have run")
if not cancelled:
    failures.append("no hung-up client's sequence was cancelled")
if (running, queued, kv) != (0, 0, 0):
    failures.append(f"left behind: running {running}, queued {queued}, KV tokens {kv}")
if after != before:
    failures.append(f"the probe changed: {after!r} vs {before!r}")
code = serve.stop(proc)
if code != 0:
    failures.append(f"SIGTERM: exit {code}")
print("\n".join("FAIL " + f for f in failures) or "ok   48 clients; nothing left running; the same answer after")
sys.exit(1 if failures else 0)
