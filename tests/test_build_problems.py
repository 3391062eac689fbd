"""`reflectioncoder build-data --problems`: the user's problems, every program in the sandbox,
final answers that really pass, bad problems skipped with their reason, a killed run resumed,
and the HTTP backend end to end against a scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from reference.construct import structure_errors

from reflectioncoder.cli import main as cli_main
from reflectioncoder.construct.backend import ANSWER_PROMPT
from reflectioncoder.construct.execute import run_program
from reflectioncoder.construct.from_problems import (
    check_reference,
    done_ids,
    load_problems,
    parse_problem,
    progress_path,
)
from reflectioncoder.testing.tiny_model import save_tiny_model

REPO = Path(__file__).resolve().parents[1]
PROBLEMS = REPO / "examples" / "problems.jsonl"
GOOD = [
    "sum_even",
    "count_vowels",
    "max_gap",
    "is_palindrome",
    "clamp",
    "first_repeat",
    "digits_sum",
    "running_max",
]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def problem_rows(ids: list[str]) -> list[dict]:
    by_id = {}
    for line in PROBLEMS.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        by_id.setdefault(row["id"], row)
    return [by_id[i] for i in ids]


def answer_code(sample: dict) -> str:
    text = sample["messages"][3]["content"][0]["content"]
    return text.removeprefix("```python\n").removesuffix("\n```")


def test_mutation_backend_on_the_shipped_problems(tmp_path, capsys):
    out = tmp_path / "refl.jsonl"
    argv = ["build-data", "--problems", str(PROBLEMS), "--out", str(out), "--timeout", "2"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    samples = rows(out)
    assert sorted(s["task_id"] for s in samples) == sorted(GOOD)
    problems = {p.task_id: p for p in load_problems(PROBLEMS)[0]}
    for s in samples:
        assert structure_errors(s) == [], s["task_id"]
        assert s["construct"]["final_passed"] is True
        # the recorded answer really passes: run it again with the problem's tests
        program = problems[s["task_id"]].test_program(answer_code(s))
        assert run_program(program, timeout_s=5).passed, s["task_id"]
        execution = s["messages"][1]["content"][2]["content"]
        assert "Error" in execution  # the first attempt failed, and says how
    # every bad problem is named with its reason, and the good ones went on
    reasons = {
        "no_prompt": "prompt: missing or empty",
        "hangs": "the reference hangs",
        "kills": "the reference kills its process",
        "wrong_reference": "the tests fail on the reference: AssertionError: got 5",
        "ruby": "'ruby' is not supported",
        "duplicate": "id: 'sum_even' appears twice",
        "broken": "invalid JSON",
    }
    for reason in reasons.values():
        assert reason in printed, reason
    assert "8 samples (8 new)" in printed and "final answers pass 8/8" in printed
    log = rows(progress_path(out))
    assert {r["id"] for r in log} == set(GOOD) | {"hangs", "kills", "wrong_reference"}
    # run again: everything is done, nothing is added
    assert cli_main(argv) == 0
    assert len(rows(out)) == len(GOOD)
    again = capsys.readouterr().out
    assert "(11 done before): 8 samples (0 new)" in again and "skipped 7" in again


def test_problem_fields_are_checked():
    with pytest.raises(ValueError, match=r"f:1:tests: expected a non-empty list"):
        parse_problem({"id": 1, "prompt": "p", "tests": []}, "f:1")
    with pytest.raises(ValueError, match=r"f:2:reference: not Python"):
        parse_problem({"id": 1, "prompt": "p", "tests": ["assert 1"], "reference": "def"}, "f:2")
    p = parse_problem(
        {
            "id": 3,
            "prompt": "p",
            "tests": "assert f(1) == 2\nassert f(0)",
            "reference": "def f(x):\n    return x + 1\n",
        },
        "f:3",
    )
    assert p.task_id == "3" and p.entry_point == "f"
    assert p.tests[0].checked_assertion() == 'assert f(1) == 2, f"got {f(1)!r}"'
    assert p.tests[1].checked_assertion() == "assert f(0)"


@pytest.mark.parametrize("level", ["auto", "rlimits"])
def test_reference_reasons_come_from_how_the_run_ended(level, monkeypatch):
    """A reference stopped by the kernel's per-process CPU limit (SIGXCPU; bwrap reports it as
    status 152) hangs: it is not reported as killing its process, as it was (issue 21 item 7);
    one that kills itself is named with its signal."""
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", level)

    def problem(reference: str, call: str):
        row = {"id": "p", "prompt": "p", "reference": reference, "tests": [f"assert {call}"]}
        return parse_problem(row, "f:1")

    spin = "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1, 2))\n\n"
    spin += "def spin():\n    while True:\n        pass\n"
    assert check_reference(problem(spin, "spin() is None"), timeout_s=5) == (
        "the reference hangs (no end within 5 s)"
    )
    boom = "import os, signal\n\ndef boom():\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    assert check_reference(problem(boom, "boom() is None"), timeout_s=5) == (
        "the reference kills its process: killed by signal 9 (SIGKILL)"
    )


def test_a_partial_last_line_is_cut_on_resume(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps({"task_id": "a"}) + '\n{"task_id": "b", "mess')
    progress_path(out).write_text(json.dumps({"id": "c", "status": "skip"}) + "\n{")
    assert done_ids(out) == {"a", "c"}
    assert out.read_text().endswith("}\n") and progress_path(out).read_text().endswith("}\n")


def test_a_killed_run_resumes_with_nothing_lost_or_duplicated(tmp_path):
    problems = tmp_path / "p.jsonl"
    some = GOOD[:4]
    problems.write_text("".join(json.dumps(r) + "\n" for r in problem_rows(some)))
    out = tmp_path / "o.jsonl"
    cmd = [sys.executable, "-m", "reflectioncoder.cli", "build-data", "--problems", str(problems)]
    cmd += ["--out", str(out), "--workers", "1", "--seed", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_file() and out.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run, sandboxed children included
    proc.wait()
    first = rows(out)
    assert 1 <= len(first) < len(some)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"({len(first)} done before)" in done.stdout
    samples = rows(out)
    ids = [s["task_id"] for s in samples]
    assert sorted(ids) == sorted(some)  # none lost, none twice
    assert samples[: len(first)] == first  # what the killed run wrote is kept as it was
    assert all(s["construct"]["final_passed"] for s in samples)


# ----------------------------------------------------------------------------- HTTP backend

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


def serve(script: Script):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/v1/chat/completions"
            assert self.headers["Authorization"] == "Bearer sk-test"
            assert body["model"] == "stub-coder"
            status, content, headers = script.reply(body)
            data = json.dumps(
                {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
            ).encode()
            try:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out
                pass

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


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
    server = serve(script)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = tmp_path / "o.jsonl"
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
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
        server.shutdown()
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
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            data = b'{"error": {"message": "model not found"}}'
            self.send_response(404)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in problem_rows(["sum_even"])))
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    argv = ["build-data", "--problems", str(path), "--out", str(tmp_path / "o.jsonl")]
    argv += ["--backend", "openai", "--base-url", url, "--model", "nope"]
    try:
        assert cli_main(argv) == 1
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "model not found" in err
    assert done_ids(tmp_path / "o.jsonl") == set()  # nothing recorded: a rerun does it all


# ----------------------------------------------------------------------------- local model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama and a locally trained tokenizer with a chat template, on disk."""
    texts = ["def f(x):\n    return x + 1\n", "Write `clamp`. ```python"] * 20
    template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    out = tmp_path_factory.mktemp("tiny-chat")
    return save_tiny_model(out, texts, chat_template=template)


def test_transformers_backend_from_disk(tiny_model, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reflectioncoder.construct.backend import TransformersBackend

    backend = TransformersBackend(str(tiny_model), max_new_tokens=6)
    messages = [{"role": "user", "content": "Write `clamp`."}]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    text = "<user>Write `clamp`.\n<assistant>"  # the chat template's rendering
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    rendered = backend.model.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert rendered == text
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert backend._chat(messages) == tok.decode(
        greedy[0, ids.shape[1] :], skip_special_tokens=True
    )
    # the whole command: a random model writes no code block; that is a failure by kind
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in problem_rows(["clamp"])))
    out = tmp_path / "o.jsonl"
    argv = ["build-data", "--problems", str(path), "--out", str(out), "--backend", "transformers"]
    argv += ["--model", str(tiny_model), "--max-new-tokens", "4"]
    assert cli_main(argv) == 0
    assert "failed {reply: no python code fence: 1}" in capsys.readouterr().out
    assert rows(progress_path(out)) == [
        {"id": "clamp", "status": "fail", "reason": "reply: no python code fence"}
    ]


def test_two_runs_on_one_output_are_refused(tmp_path):
    import fcntl

    out = tmp_path / "o.jsonl"
    with progress_path(out).open("a") as held:  # as a running build-data holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        argv = ["build-data", "--problems", str(PROBLEMS), "--out", str(out)]
        assert cli_main(argv) == 1
    assert not out.exists()


def test_code_that_exits_0_before_its_tests_does_not_pass():
    """``sys.exit(0)`` / ``os._exit(0)`` in the code under test ends the program before the
    asserts run: exit code 0, but no pass (the recorded final_passed must mean the tests ran)."""
    row = {"id": "f", "prompt": "Write f()", "tests": ["assert f() == 1"]}
    for exit_call in ("import sys\nsys.exit(0)", "import os\nos._exit(0)"):
        source = f"def f():\n    return 2\n{exit_call}\n"
        problem = parse_problem({**row, "reference": source}, "p.jsonl:1")
        run = run_program(problem.test_program(source), timeout_s=5)
        assert run.exit_code == 0 and not run.passed
        assert check_reference(problem, 5) == (
            "the reference exits before its tests have run (exit code 0)"
        )
    good = parse_problem({**row, "reference": "def f():\n    return 1\n"}, "p.jsonl:1")
    assert check_reference(good, 5) is None


def test_an_out_that_build_data_did_not_write_is_refused_untouched(tmp_path, capsys):
    """--out naming the problems file, or any jsonl that holds no samples, is refused before
    anything is cut: the resume logic trims a partial last line only from its own files."""
    problems = tmp_path / "problems.jsonl"
    problems.write_text(PROBLEMS.read_text().splitlines()[0])  # no trailing newline
    before = problems.read_bytes()
    argv = ["build-data", "--problems", str(problems), "--no-progress", "--out"]
    assert cli_main([*argv, str(problems)]) == 2
    assert f"--out: {problems} is the problems file" in capsys.readouterr().err
    other = tmp_path / "train.jsonl"
    other.write_bytes(b'{"messages": []}\n{"messages": [')
    assert cli_main([*argv, str(other)]) == 1
    assert f"{other}:1: not written by build-data" in capsys.readouterr().err
    assert problems.read_bytes() == before
    (tmp_path / "empty.jsonl").write_text("\n")
    assert (
        cli_main([*argv[:2], str(tmp_path / "empty.jsonl"), *argv[3:], str(tmp_path / "e.jsonl")])
        == 1
    )
    assert "empty.jsonl: no problems in it" in capsys.readouterr().err
    assert other.read_bytes() == b'{"messages": []}\n{"messages": ['
