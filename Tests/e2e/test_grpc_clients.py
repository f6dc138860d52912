"""`shoal generate --coordinator` and `shoal chat --coordinator` against `shoal serve`'s gRPC
API: the same output as one process, multi-turn history, /reset, /exit, and an error that
keeps the session.

usage: python3 Tests/e2e/test_grpc_clients.py SHOAL MODEL_DIR
"""
import json
import subprocess
import sys
import tempfile

import serve

shoal, model = sys.argv[1], sys.argv[2]
check = serve.Checks()


def run(args, stdin=None):
    return subprocess.run([shoal] + args, input=stdin, capture_output=True, text=True, timeout=120)


proc, _, grpc = serve.start_serve(shoal, model)

for prompt in [["--prompt", "The sea at night is"], ["--ids", "1,415,2125,349"]]:
    args = ["generate", "--max-tokens", "12", "--temperature", "0", "--json"] + prompt
    alone = run(args + ["--model", model, "--threads", "1"])
    remote = run(args + ["--coordinator", grpc])
    check(remote.returncode == 0 and json.loads(remote.stdout) == json.loads(alone.stdout),
          f"generate --coordinator {prompt[0]} equals one process: {remote.stdout.strip()}")

# Two turns, a reset, a turn, then /exit. Replies are greedy, so the first and the
# after-reset reply to the same question must match.
chat = run(["chat", "--coordinator", grpc, "--max-tokens", "8", "--temperature", "0"],
           "Name a fish.\nAnd another?\n/reset\nName a fish.\n/exit\nnever sent\n")
lines = [l for l in chat.stdout.split("\n") if l.strip()]
check(chat.returncode == 0, f"chat exits 0 (stderr: {chat.stderr.strip()[:200]})")
check(len(lines) == 3 and lines[0] == lines[2], f"chat: 3 replies, the first and post-reset equal: {lines}")
# The second reply is the one `shoal generate --chat` gives alone for the whole conversation
# (the first exchange included), and not the one for the second question alone: the history
# reached the coordinator.
def alone(messages):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(messages, f)
    out = run(["generate", "--model", model, "--threads", "1", "--max-tokens", "8", "--temperature", "0", "--json",
               "--chat", f.name])
    return json.loads(out.stdout)["text"]


if len(lines) == 3:
    with_history = alone([{"role": "user", "content": "Name a fish."}, {"role": "assistant", "content": lines[0]},
                          {"role": "user", "content": "And another?"}])
    without = alone([{"role": "user", "content": "And another?"}])
    check(lines[1] == with_history and with_history != without,
          f"chat: the second turn saw the history: {lines[1]!r}, alone with it {with_history!r}, without {without!r}")
else:
    check(False, "chat: the second turn saw the history (no second reply)")

bad = run(["generate", "--coordinator", grpc, "--ids", "1,99999", "--max-tokens", "4"])
check(bad.returncode == 1 and "error:" in bad.stderr and "99999" in bad.stderr,
      f"an id outside the vocabulary: exit 1, {bad.stderr.strip()}")

code = serve.stop(proc)
check(code == 0, f"SIGTERM: exit {code}")
check.finish()
