"""A real Prometheus server (Debian's `prometheus`) scrapes `shoal serve`'s /metrics after a
few requests; its query API must then return Shoal's series.

usage: python3 Tests/e2e/test_prometheus.py SHOAL MODEL_DIR
"""
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.error
import urllib.request

import serve

shoal, model = sys.argv[1], sys.argv[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


proc, base, _ = serve.start_serve(shoal, model)
# The tokens the three answers say they used: what the counters must add up to exactly.
used = {"prompt": 0, "completion": 0}
for i in range(3):
    usage = post(base + "/v1/completions", {"prompt": f"Sea number {i}", "max_tokens": 6, "temperature": 0})["usage"]
    used["prompt"] += usage["prompt_tokens"]
    used["completion"] += usage["completion_tokens"]

target = base.removeprefix("http://")
work = tempfile.mkdtemp(prefix="shoal-prometheus-")
with open(f"{work}/prometheus.yml", "w") as f:
    f.write(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: shoal
    static_configs:
      - targets: ['{target}']
""")
port = free_port()
prom = subprocess.Popen(["prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/data",
                         f"--web.listen-address=127.0.0.1:{port}"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
serve._started.append(prom)


def query(q):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]["result"]


wanted = {
    'up{job="shoal"}': lambda v: v == 1,
    'shoal_requests_total{outcome="completed"}': lambda v: v == 3,
    'shoal_prompt_tokens_total': lambda v: v == used["prompt"],
    'shoal_completion_tokens_total': lambda v: v == used["completion"],
    # Every token run through the model (the prompts, and each sampled token but the last of a
    # request) is routed to 2 experts in each of the tiny model's 2 layers.
    'sum(shoal_expert_tokens_total)': lambda v: v == (used["prompt"] + used["completion"] - 3) * 2 * 2,
    'shoal_time_to_first_token_seconds_count': lambda v: v == 3,
    'shoal_kv_cache_tokens_capacity': lambda v: v > 0,
}
seen = {}
deadline = time.time() + 60
while time.time() < deadline and len(seen) < len(wanted):
    for q, ok in wanted.items():
        try:
            result = query(q)
        except OSError:
            break  # not up yet
        if result and ok(float(result[0]["value"][1])):
            seen[q] = result[0]["value"][1]
    time.sleep(1)

# The Grafana dashboard (Deploy/grafana): every panel's query must be one this Prometheus
# accepts, over metrics serve exports; those that do not need workers must show data.
import os
import re
dashboard = json.load(open(os.path.join(os.path.dirname(__file__), "../../Deploy/grafana/shoal-dashboard.json")))
with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
    exported = set(re.findall(r"^(shoal_[a-z_]+?)(?:_bucket|_count|_sum)?(?:\{| )", r.read().decode(), re.M))
panel_failures = []
for panel in dashboard["panels"]:
    for target in panel["targets"]:
        expr = target["expr"].replace("$__rate_interval", "1m")
        for name in set(re.findall(r"shoal_[a-z_]+", expr)):
            base_name = re.sub(r"_(bucket|count|sum)$", "", name)
            # Worker series appear with the first call to a worker; this serve has none.
            if base_name not in exported and not base_name.startswith(("shoal_worker_", "shoal_wire_")):
                panel_failures.append(f"{panel['title']}: {name} is not exported")
        try:
            result = query(expr)
        except urllib.error.HTTPError as e:
            panel_failures.append(f"{panel['title']}: Prometheus refused {expr!r}: {e.read()[:200]!r}")
            continue
        needs_workers = any(m in expr for m in ("shoal_worker_", "shoal_wire_", "shoal_fanout_"))
        if not result and not needs_workers:
            panel_failures.append(f"{panel['title']}: {expr!r} has no data after requests were served")
prom.terminate()
prom.wait(timeout=20)
code = serve.stop(proc)
for q in wanted:
    print(("ok   " if q in seen else "FAIL ") + f"{q} = {seen.get(q, 'missing or wrong')}")
for f in panel_failures:
    print("FAIL dashboard: " + f)
if not panel_failures:
    print(f"ok   the Grafana dashboard's {sum(len(p['targets']) for p in dashboard['panels'])} queries run on these metrics")
print(f"serve exit code {code}")
sys.exit(0 if len(seen) == len(wanted) and not panel_failures and code == 0 else 1)
