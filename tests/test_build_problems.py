"""`reflectioncoder build-data --problems`: the user's problems, every program in the sandbox,
final answers that really pass, bad problems skipped with their reason, a killed run resumed,
the transformers backend from disk (the HTTP backend: test_build_problems_http.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reference.construct import structure_errors

from reflectioncoder.cli import main as cli_main
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


@pytest.mark.slow
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


def test_ctrl_c_says_what_is_kept_and_that_the_command_continues(tmp_path, capsys, monkeypatch):
    """journey9: Ctrl-C said "interrupted" alone; the run is resumable, so it says so."""
    from reflectioncoder.construct import from_problems

    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in problem_rows(GOOD[:3])))
    real_record = from_problems._record

    def ctrl_c_after_one(future, problem, samples, log, summary):
        real_record(future, problem, samples, log, summary)
        raise KeyboardInterrupt

    monkeypatch.setattr(from_problems, "_record", ctrl_c_after_one)
    out = tmp_path / "mine.jsonl"
    argv = ["build-data", "--problems", str(problems), "--workers", "1", "--no-progress"]
    assert cli_main([*argv, "--out", str(out)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"reflectioncoder build-data: interrupted; 1 problem(s) done, kept in {out}: the same "
        "command continues with the rest"
    )
    assert len(rows(out)) == 1
