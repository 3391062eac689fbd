"""`reflectioncoder build-data --problems --backend http` end to end against a scripted
OpenAI-compatible server on loopback: the chat's stages, the rate limit spread over threads, and
the HTTP errors that retrying cannot fix stopping the run (the rest: test_build_problems.py)."""

from __future__ import annotations

import contextlib
import json
import threading
import time

from test_build_problems import problem_rows, rows

from reflectioncoder.cli import main as cli_main
from reflectioncoder.construct.backend import ANSWER_PROMPT
from reflectioncoder.construct.execute import run_program
from reflectioncoder.construct.from_problems import done_ids
from reflectioncoder.testing.http_stub import JsonHandler, serving

BUGGY = {
    "sum_even": "def sum_even(nums):\n    return sum(nums)\n",
    "digits_sum": "def digits_sum(n):\n    return len(str(n))\n",
    "clamp": "def clamp(x, lo, hi):\n    return max(lo, x)\n",
}


class Script:
    """Scripted replies, keyed by the problem (its prompt) and the stage of the chat; some
    requests fail first (HTTP 500, 429 with Retry-After, a reply slower than the timeout)."""

    def __init__(self, problems: list[dict]) -> None:
        self.problems = {p["prompt"]: p for p in problems}
        self.requests: list[dict] = []
        self.failures = {("digits_sum", "attempt"): [500], ("digits_sum", "reflect"): [429]}
        self.failures[("clamp", "attempt")] = ["slow"]
        self.down: set[str] = set()  # problems whose requests always get 503
        self.lock = threading.Lock()

    def reply(self, body: dict) -> tuple[int, str, dict]:
        messages = body["messages"]
        problem = self.problems[messages[1]["content"]]
        pid = problem["id"]
        last = messages[-1]["content"]
        if last == ANSWER_PROMPT.format(instruction=problem["prompt"].strip()):
            stage = "answer"
        else:
            stage = "attempt" if len(messages) == 2 else "reflect"
        with self.lock:
            self.requests.append({"id": pid, "stage": stage, "body": body})
            if pid in self.down:
                return 503, "", {}
            pending = self.failures.get((pid, stage))
            failure = pending.pop(0) if pending else None
        if failure == 500:
            return 500, "", {}
        if failure == 429:
            return 429, "", {"Retry-After": "0"}
        if failure == "slow":
            time.sleep(2.0)  # longer than --request-timeout: the client gives up and retries
        if pid == "no_code":
            return 200, "I would rather not write code.", {}
        code = BUGGY.get(pid, problem["reference"]) if stage == "attempt" else problem["reference"]
        text = {
            "attempt": "First try.",
            "reflect": "The output shows the bug; fixed.",
            "answer": "",
        }[stage]
        return 200, f"{text}\n```python\n{code}```", {}


def scripted_handler(script: Script) -> type[JsonHandler]:
    class Handler(JsonHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.read_json()
            assert self.path == "/v1/chat/completions"
            assert self.headers["Authorization"] == "Bearer sk-test"
            assert body["model"] == "stub-coder"
            status, content, headers = script.reply(body)
            message = {"index": 0, "message": {"role": "assistant", "content": content}}
            self.reply({"choices": [message]}, status, headers)

    return Handler


def test_http_backend_end_to_end(tmp_path, monkeypatch, capsys):
    problems = problem_rows(["sum_even", "digits_sum", "clamp", "is_palindrome"])
    problems.append(
        {"id": "no_code", "prompt": "Write `noop()`.", "tests": ["assert noop() is None"]}
    )
    problems.append(
        {"id": "later", "prompt": "Write `later(x)`.", "tests": ["assert later(1) == 1"]}
    )
    BUGGY["later"] = "def later(x):\n    return 0\n"
    problems[-1]["reference"] = "def later(x):\n    return x\n"
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    script = Script(problems)
    script.down.add("later")  # unreachable for this problem in the first run
    server = contextlib.ExitStack()
    url = server.enter_context(serving(scripted_handler(script))) + "/v1"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = tmp_path / "o.jsonl"
    argv = ["build-data", "--problems", str(path), "--out", str(out), "--backend", "openai"]
    argv += ["--base-url", url, "--model", "stub-coder", "--request-timeout", "0.5"]
    argv += ["--retries", "2", "--workers", "4", "--rate-limit", "50"]
    try:
        assert cli_main(argv) == 1  # a problem is not done: the exit code says so
        printed = capsys.readouterr().out
        assert "NOT DONE (run again to retry): 1: " in printed and "HTTP 503" in printed
        assert "reply: no python code fence: 1" in printed
        first = rows(out)
        ids = ["clamp", "digits_sum", "is_palindrome", "sum_even"]
        assert sorted(s["task_id"] for s in first) == ids
        # right the first time: a sample with 0 rounds, the answer asked for and run all the same
        right = next(s for s in first if s["task_id"] == "is_palindrome")
        assert right["construct"]["rounds"] == 0 and right["construct"]["final_passed"] is True
        assert right["messages"][1]["content"][2]["content"] == "All tests passed."
        assert [r["stage"] for r in script.requests if r["id"] == "is_palindrome"] == [
            "attempt",
            "answer",
        ]
        first = [s for s in first if s["task_id"] != "is_palindrome"]
        stages = [(r["id"], r["stage"]) for r in script.requests]
        # retried: 500, 429 (Retry-After: 0) and the slow reply each cost one extra request
        assert stages.count(("digits_sum", "attempt")) == 2
        assert stages.count(("digits_sum", "reflect")) == 2
        assert stages.count(("clamp", "attempt")) == 2
        assert stages.count(("later", "attempt")) == 3  # 1 + 2 retries, then left for later
        for s in first:
            pid = s["task_id"]
            # real execution feedback: what the sandbox printed for the buggy attempt ...
            program = s["messages"][1]["content"][1]["content"]
            assert program.startswith(BUGGY[pid].rstrip())
            printed_by_sandbox = run_program(program).output
            assert s["messages"][1]["content"][2]["content"] == printed_by_sandbox
            assert "AssertionError: got" in printed_by_sandbox
            # ... is what the model was shown before it reflected
            reflect = next(r for r in script.requests if r["id"] == pid and r["stage"] == "reflect")
            assert printed_by_sandbox in reflect["body"]["messages"][-1]["content"]
            assert s["construct"]["final_passed"] is True and s["construct"]["rounds"] == 1
        # resume with the endpoint back: only the problem left over is asked for
        script.down.clear()
        before = len(script.requests)
        assert cli_main(argv) == 0
        asked = {r["id"] for r in script.requests[before:]}
        assert asked == {"later"}
        samples = rows(out)
        assert [s for s in samples[:4] if s["task_id"] != "is_palindrome"] == first
        assert sorted(s["task_id"] for s in samples) == sorted([*ids, "later"])
    finally:
        server.close()
        BUGGY.pop("later", None)


def test_rate_limit_spaces_requests_over_threads():
    from concurrent.futures import ThreadPoolExecutor

    from reflectioncoder.generate import RateLimiter

    limiter = RateLimiter(per_second=40)
    stamps: list[float] = []

    def call(_):
        limiter.wait()
        stamps.append(time.monotonic())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, range(12)))
    stamps.sort()
    assert stamps[-1] - stamps[0] >= 11 / 40 - 0.01  # 12 calls at 40/s: 11 intervals
    assert RateLimiter(0).interval == 0.0  # no limit


def test_http_errors_that_retrying_cannot_fix_stop_the_run(tmp_path, monkeypatch, capsys):
    class Handler(JsonHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.read_json()
            self.reply(b'{"error": {"message": "model not found"}}', 404)

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in problem_rows(["sum_even"])))
    with serving(Handler) as base:
        argv = ["build-data", "--problems", str(path), "--out", str(tmp_path / "o.jsonl")]
        argv += ["--backend", "openai", "--base-url", base + "/v1", "--model", "nope"]
        assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "model not found" in err
    assert done_ids(tmp_path / "o.jsonl") == set()  # nothing recorded: a rerun does it all
