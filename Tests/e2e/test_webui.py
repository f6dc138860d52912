"""The web console at `/` in a real browser (Debian's chromium, headless): on a cluster of two
workers (experts 0-3 and 2-7, so 2 and 3 are replicated) the page shows each worker, the
placement map with the holders we started, the heat map once tokens flowed, and a chat reply
streamed from the API that equals the API's own answer to the same request. With API keys the
page still loads (it is static) but shows nothing of the cluster until given a key. Saves a
screenshot to .shoal-cache/test-artifacts/webui.png for a person to look at.

usage: python3 Tests/e2e/test_webui.py SHOAL MODEL_DIR
"""
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import serve

shoal, model = sys.argv[1], sys.argv[2]
check = serve.Checks()
browser = shutil.which("chromium") or sys.exit("chromium is missing: apt-get install chromium")
LAYERS, EXPERTS = 2, 8  # the tiny fixture's shape (fixtures/README.md)


def get(base, path, headers=None):
    req = urllib.request.Request(base + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def chromium(args, url):
    """Runs headless chromium on `url`; its stdout. Virtual time lets the page's fetches and
    the streamed reply finish before the DOM is dumped, without sleeping."""
    sandbox = ["--no-sandbox"] if os.geteuid() == 0 else []
    run = subprocess.run([browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,1100",
                          "--virtual-time-budget=20000"] + sandbox + args + [url],
                         capture_output=True, text=True, timeout=90)
    return run.stdout


def reply_text(dom, n):
    m = re.search(rf'<div class="msg assistant" id="reply-{n}" data-done="true">(.*?)</div>', dom, re.S)
    return html.unescape(m.group(1)) if m else None


w1, w2 = serve.start_workers(shoal, model, ["0-3", "2-7"])
_, base, _ = serve.start_serve(shoal, model, ["--workers", f"{w1},{w2}"])

status, headers, page = get(base, "/")
check(status == 200 and headers.get("Content-Type", "").startswith("text/html"), "GET / serves the page")
csp = headers.get("Content-Security-Policy", "")
check("default-src 'none'" in csp and "connect-src 'self'" in csp, f"the page may fetch only from this server: {csp}")
check(b"://" not in page, "the page names no other site (no CDN, nothing fetched from elsewhere)")

question = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "temperature": 0, "max_tokens": 12}
req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(question).encode(), {"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=60) as r:
    expected = json.load(r)["choices"][0]["message"]["content"]

dom = chromium(["--dump-dom"], base + "/?ask=Hello&temperature=0&max_tokens=12")
got = reply_text(dom, 1)
check(got == expected, f"the chat reply streamed into the page equals the API's answer: {got!r} vs {expected!r}")

rows = re.findall(r'<tr class="worker" data-address="([^"]+)" data-state="([^"]+)"', dom)
check(sorted(rows) == sorted([(w1, "serving"), (w2, "serving")]), f"both workers listed as serving: {rows}")

cells = {(int(l), int(e)): h.split() for l, e, h in
         re.findall(r'<td data-layer="(\d+)" data-expert="(\d+)" data-holders="([^"]*)"', dom)}
want = {(l, e): ([w1] if e < 2 else [w1, w2] if e < 4 else [w2]) for l in range(LAYERS) for e in range(EXPERTS)}
check(len(cells) == LAYERS * EXPERTS and all(sorted(cells[k]) == sorted(v) for k, v in want.items()),
      "the placement map shows every (layer, expert) with the workers started for it")
replicas = len(re.findall(r'<td[^>]* class="replica"', dom))
check(replicas == LAYERS * 2, f"replicated pairs are marked: {replicas} of {LAYERS * 2}")
check('id="heat-grid"' in dom, "the heat map shows tokens per expert")

artifacts = os.path.join(".shoal-cache", "test-artifacts")
os.makedirs(artifacts, exist_ok=True)
shot = os.path.abspath(os.path.join(artifacts, "webui.png"))
if os.path.exists(shot):
    os.remove(shot)
chromium([f"--screenshot={shot}"], base + "/?ask=Hello&temperature=0&max_tokens=12")
with open(shot, "rb") as f:
    png = f.read()
check(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000, f"screenshot saved: {shot} ({len(png)} bytes)")

# With API keys: the page loads without one, the cluster does not.
folder = tempfile.mkdtemp()
with open(os.path.join(folder, "keys"), "w") as f:
    f.write("sk-webui-test\n")
_, keyed, _ = serve.start_serve(shoal, model, ["--workers", f"{w1},{w2}", "--api-key-file", os.path.join(folder, "keys")])
check(get(keyed, "/")[0] == 200, "with keys, the page itself needs none")
check(get(keyed, "/v1/cluster")[0] == 401, "with keys, /v1/cluster without one is 401")
check(get(keyed, "/v1/cluster", {"Authorization": "Bearer sk-webui-test"})[0] == 200, "with the key, /v1/cluster answers")
dom = chromium(["--dump-dom"], keyed + "/")
check('<b id="model">API key needed</b>' in dom and "<td data-layer=" not in dom, "without a key the page shows no cluster and asks for one")
shutil.rmtree(folder)

check.finish()
