"""`shoal serve` as an attacker and a careless operator meet it: API keys with the official
`openai` client and over gRPC (`shoal generate --coordinator --api-key`), a key file edited
while serving, a DNS-rebinding Host and a foreign web page's Origin, an unknown model, a tool
call it cannot honour, a listener off loopback without keys (refused to start), and HTTPS
with --tls-cert/--tls-key (a client that trusts the issuing authority is answered the same,
one that does not is refused, plain HTTP to the port gets no answer).

usage: python3 Tests/e2e/test_security.py SHOAL MODEL_DIR
"""
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time

import openai

import serve

shoal, model = sys.argv[1], sys.argv[2]
check = serve.Checks()
tmp = tempfile.mkdtemp(prefix="shoal-security-")
keys = os.path.join(tmp, "keys")
with open(keys, "w") as f:
    f.write("# one key per line\nsk-first\n")

proc, base, grpc = serve.start_serve(shoal, model, ["--api-key-file", keys])
host, port = base[len("http://"):].rsplit(":", 1)
messages = [{"role": "user", "content": "Name a fish."}]


def chat(key, **extra):
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    return client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0, **extra)


def refused(call, error):
    try:
        call()
        return False
    except error:
        return True


check(refused(lambda: chat("sk-wrong"), openai.AuthenticationError), "a wrong key gets 401 (AuthenticationError)")
check(chat("sk-first").choices[0].message.content is not None, "the right key gets a completion")
check(refused(lambda: chat("sk-first", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]),
              openai.BadRequestError), "tools get 400, not an answer that ignores them")
check(refused(lambda: openai.OpenAI(base_url=base + "/v1", api_key="sk-first", max_retries=0).chat.completions.create(
    model="gpt-4o", messages=messages, max_tokens=4), openai.NotFoundError), "an unknown model gets 404")

# The key file is re-read when it changes: the new key works, the old one no longer does.
with open(keys, "w") as f:
    f.write("sk-second\n")
os.utime(keys, (time.time() + 5, time.time() + 5))
deadline = time.time() + 10
while time.time() < deadline and refused(lambda: chat("sk-second"), openai.AuthenticationError):
    time.sleep(0.2)
check(not refused(lambda: chat("sk-second"), openai.AuthenticationError), "a key added to the file works without a restart")
check(refused(lambda: chat("sk-first"), openai.AuthenticationError), "a key removed from the file stops working")


def raw(headers):
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/v1/models", headers={"Authorization": "Bearer sk-second", **headers})
    status = conn.getresponse().status
    conn.close()
    return status


check(raw({"Host": f"attacker.example:{port}"}) == 403, "a DNS-rebinding Host gets 403")
check(raw({"Origin": "https://attacker.example"}) == 403, "a foreign page's Origin gets 403")
check(raw({}) == 200, "the listen address as Host, without Origin, gets 200")


def run(args):
    return subprocess.run([shoal] + args, capture_output=True, text=True, timeout=120)


gen = ["generate", "--coordinator", grpc, "--ids", "1,415", "--max-tokens", "4"]
no_key = run(gen)
check(no_key.returncode == 1 and "API key" in no_key.stderr, f"gRPC without a key is refused: {no_key.stderr.strip()[:120]}")
with_key = run(gen + ["--api-key", "sk-second"])
check(with_key.returncode == 0, f"gRPC with the key works: {with_key.stderr.strip()[:200]}")
env_key = subprocess.run([shoal] + gen, capture_output=True, text=True, timeout=120, env={**os.environ, "SHOAL_API_KEY": "sk-second"})
check(env_key.returncode == 0, "gRPC with SHOAL_API_KEY works")

COMPLETION = json.dumps({"model": "tiny", "prompt": "The shoal", "max_tokens": 8, "temperature": 0})


def complete(connection):
    connection.request("POST", "/v1/completions", COMPLETION,
                       {"Content-Type": "application/json", "Authorization": "Bearer sk-second"})
    response = connection.getresponse()
    return response.status, json.loads(response.read()).get("choices", [{}])[0].get("text")


plain_answer = complete(http.client.HTTPConnection(host, int(port), timeout=60))
check(plain_answer[0] == 200 and plain_answer[1], f"a completion over plain HTTP: {plain_answer}")
check(serve.stop(proc) == 0, "serve stops cleanly")

# HTTPS: a certificate for 127.0.0.1 from an authority of our own.
authority, identity = os.path.join(tmp, "ca"), os.path.join(tmp, "serve")
made = [run(["certs", "init", "--out", authority]),
        run(["certs", "issue", "--ca", authority, "--name", "serve", "--host", "127.0.0.1", "--out", identity])]
check(all(r.returncode == 0 for r in made), f"certs made: {[r.stderr.strip()[:100] for r in made]}")
tls_proc, line = serve.start(shoal, ["serve", "--model", model, "--http", "127.0.0.1:0", "--grpc", "off", "--threads", "1",
                                     "--model-name", "tiny", "--api-key-file", keys,
                                     "--tls-cert", os.path.join(identity, "node.pem"),
                                     "--tls-key", os.path.join(identity, "node-key.pem")], "shoal serve ready:")
https = re.search(r"https (\S+),", line)
check(https is not None, f"the ready line names an https listener: {line.strip()[:120]}")
tls_host, tls_port = https.group(1).rsplit(":", 1)
trusting = ssl.create_default_context(cafile=os.path.join(authority, "ca.pem"))
answer = complete(http.client.HTTPSConnection(tls_host, int(tls_port), timeout=60, context=trusting))
check(answer == plain_answer, f"over HTTPS, trusting the authority: the same completion as plain HTTP ({answer})")


def fails(call):
    try:
        call()
        return None
    except Exception as e:  # noqa: BLE001 - which error depends on where the handshake stops
        return type(e).__name__


untrusted = fails(lambda: complete(http.client.HTTPSConnection(tls_host, int(tls_port), timeout=10,
                                                               context=ssl.create_default_context())))
check(untrusted == "SSLCertVerificationError", f"a client that does not trust the authority is refused: {untrusted}")
plaintext = fails(lambda: complete(http.client.HTTPConnection(tls_host, int(tls_port), timeout=10)))
check(plaintext is not None, f"plain HTTP to the HTTPS port gets no HTTP answer: {plaintext}")
check(serve.stop(tls_proc) == 0, "the HTTPS server stops cleanly")

exposed = run(["serve", "--model", model, "--http", "0.0.0.0:0", "--grpc", "off", "--threads", "1"])
check(exposed.returncode == 1 and "--api-key-file" in exposed.stderr,
      f"serve off loopback without keys refuses to start: {exposed.stderr.strip()[:160]}")
check.finish()
