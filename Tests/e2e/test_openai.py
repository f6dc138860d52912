"""The official `openai` Python client against `shoal serve`: chat and completions, streaming
and not, and errors. Each answer is checked against `shoal generate` run alone in one process
on the same model (greedy, so the text must be identical).

usage: python3 Tests/e2e/test_openai.py SHOAL MODEL_DIR
"""
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import openai

import serve

shoal, model = sys.argv[1], sys.argv[2]
check = serve.Checks()


def generate_alone(args, max_tokens, sampling=("--temperature", "0")):
    out = subprocess.run([shoal, "generate", "--model", model, "--max-tokens", str(max_tokens), "--threads", "1",
                          "--json"] + list(sampling) + args, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)["text"]


proc, base, _ = serve.start_serve(shoal, model)
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=120, max_retries=0)

messages = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Name three colours of the sea."}]
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(messages, f)
chat_alone = generate_alone(["--chat", f.name], 12)
prompt = "The sea at night is"
completion_alone = generate_alone(["--prompt", prompt], 10)

models = client.models.list()
check([m.id for m in models.data] == ["tiny"], f"models.list: {[m.id for m in models.data]}")

# Chat, not streamed.
r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
c = r.choices[0]
check(r.object == "chat.completion" and c.message.role == "assistant", "chat: object and role")
check(c.message.content == chat_alone, f"chat text equals shoal generate alone: {c.message.content!r} vs {chat_alone!r}")
check(c.finish_reason in ("stop", "length"), f"chat finish_reason {c.finish_reason}")
u = r.usage
check(u.prompt_tokens > 0 and u.completion_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens,
      f"chat usage {u}")

# Chat, streamed, with usage.
pieces, finish, usage, roles = [], None, None, []
for chunk in client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}):
    check(chunk.object == "chat.completion.chunk", "chunk object") if chunk.object != "chat.completion.chunk" else None
    if chunk.usage:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.role:
            roles.append(choice.delta.role)
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
check("".join(pieces) == chat_alone, f"streamed chat text equals alone: {''.join(pieces)!r}")
check(len(pieces) > 1, f"streamed chat came in {len(pieces)} pieces")
check(roles == ["assistant"] and finish == c.finish_reason, f"stream role {roles} and finish {finish}")
check(usage is not None and usage.completion_tokens == u.completion_tokens, f"stream usage {usage}")

# Completions, not streamed and streamed.
r = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
check(r.object == "text_completion" and r.choices[0].text == completion_alone,
      f"completion text equals alone: {r.choices[0].text!r} vs {completion_alone!r}")
check(r.usage.completion_tokens <= 10 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens,
      f"completion usage {r.usage}")
text = "".join(ch.choices[0].text for ch in client.completions.create(
    model="tiny", prompt=prompt, max_tokens=10, temperature=0, stream=True) if ch.choices)
check(text == completion_alone, f"streamed completion equals alone: {text!r}")

# A stop string through the real scheduler: the greedy text up to (not including) its first
# occurrence, finish_reason "stop", streamed and not. The stop string is cut from the middle
# of the text `shoal generate` gave alone.
middle = len(completion_alone) // 2
stop = completion_alone[middle:middle + 3]
cut = completion_alone[:completion_alone.find(stop)]
r = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0, stop=[stop])
check(r.choices[0].text == cut and r.choices[0].finish_reason == "stop",
      f"stop {stop!r}: {r.choices[0].text!r} ({r.choices[0].finish_reason}) vs {cut!r}")
chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0, stop=[stop],
                                        stream=True))
text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
check(text == cut and finish == ["stop"], f"streamed stop {stop!r}: {text!r} {finish} vs {cut!r}")

# Sampling with a seed repeats itself.
a = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0.9, top_p=0.9, seed=7)
b = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0.9, top_p=0.9, seed=7)
check(a.choices[0].text == b.choices[0].text, "seeded sampling repeats")
# ... and is the sampling `shoal generate` does alone with the same seed: the same sampler.
sampled_alone = generate_alone(["--prompt", prompt], 10, ("--temperature", "0.9", "--top-p", "0.9", "--seed", "7"))
check(a.choices[0].text == sampled_alone, f"seeded sampling equals shoal generate alone: {a.choices[0].text!r} vs {sampled_alone!r}")
greedy = completion_alone
check(sampled_alone != greedy, f"the seeded sample is not the greedy text (so the check above can fail): {greedy!r}")

# Errors: 400 with an OpenAI error object, and the server keeps serving.
for what, call in [
    ("empty messages", lambda: client.chat.completions.create(model="tiny", messages=[], max_tokens=4)),
    ("max_tokens past the context",
     lambda: client.completions.create(model="tiny", prompt=prompt, max_tokens=10**6)),
    ("content of the wrong type",
     lambda: client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": 5}])),
    ("a conversation ending with the assistant",
     lambda: client.chat.completions.create(model="tiny", messages=[{"role": "assistant", "content": "hi"}])),
]:
    try:
        call()
        check(False, f"{what}: no error")
    except openai.BadRequestError as e:
        body = e.body if isinstance(e.body, dict) else {}
        check(e.status_code == 400 and isinstance(body.get("message"), str) and body["message"] != "",
              f"{what}: 400 {body.get('message')!r}")
r = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
check(r.choices[0].text == completion_alone, "still serving after the errors")

code = serve.stop(proc)
check(code == 0, f"SIGTERM: exit {code}")

# The real queue: one batch slot and one waiting place. One request runs (its stream has begun),
# one waits (the queue gauge says so), and the next is refused with OpenAI's 429; when the
# running one hangs up, the waiting one is served.
proc, base, _ = serve.start_serve(shoal, model, ["--max-batch", "1", "--max-queue", "1"])
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=120, max_retries=0)


def queue_depth():
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    return float(re.search(r"^shoal_queue_depth (\S+)$", text, re.M).group(1))


running = client.completions.create(model="tiny", prompt=prompt, max_tokens=400, temperature=0, stream=True)
first = next(iter(running))
waiting = {}
waiter = threading.Thread(target=lambda: waiting.update(
    r=client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)))
waiter.start()
deadline = time.time() + 30
while queue_depth() < 1 and time.time() < deadline:
    time.sleep(0.05)
try:
    client.completions.create(model="tiny", prompt=prompt, max_tokens=4)
    check(False, "a third request while the queue is full: no error")
except openai.RateLimitError as e:
    body = e.body if isinstance(e.body, dict) else {}
    check(e.status_code == 429 and body.get("code") == "rate_limit_exceeded", f"queue full: 429 {body.get('message')!r}")
running.close()
waiter.join(timeout=120)
check("r" in waiting and waiting["r"].choices[0].text == completion_alone,
      "the waiting request is served once the running one hangs up")
code = serve.stop(proc)
check(code == 0, f"SIGTERM: exit {code}")
check.finish()
