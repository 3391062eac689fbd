"""``evaluate --model`` stopped by Ctrl-C midway through generation (a whole HumanEval is half an
hour on a CPU), or by a server that went away, keeps what it generated; the same command run
again continues from it instead of generating everything again, and ends with the samples an
uninterrupted run writes."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reference.serialise import SPECIALS

from reflectioncoder.cli import main
from reflectioncoder.eval.cli import add_arguments
from reflectioncoder.eval.journal import generation_key
from reflectioncoder.eval.request import EvalRequest
from reflectioncoder.testing.cli import ctrl_c_reaches
from reflectioncoder.testing.http_stub import JsonHandler, serving
from reflectioncoder.testing.tiny_model import save_tiny_model

TASKS = 12


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    texts = ["def add(x, y):\n    return x + y\n", "Write a complete Python function."] * 20
    out = tmp_path_factory.mktemp("tiny") / "model"
    return save_tiny_model(out, texts, num_layers=2, special_tokens=SPECIALS)


def _argv(model: Path, shared_dir: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "reflectioncoder.cli", "evaluate", "--task", "humaneval",
        "--model", str(model), "--limit", str(TASKS), "--max-new-tokens", "32",
        "--batch-size", "1", "--device", "cpu", "--threads", "1", "--base-only",
        "--data-dir", str(shared_dir / "evaldata"), "--json", str(out), "--no-progress",
    ]  # fmt: skip


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # three real runs of the command (about 40 s on a loaded 2-core machine)
def test_ctrl_c_during_generation_then_the_same_command_continues(model, shared_dir, tmp_path):
    out = tmp_path / "he.json"
    samples = out.with_suffix(".samples.jsonl")
    partial = samples.with_name(samples.name + ".partial")
    proc = subprocess.Popen(
        _argv(model, shared_dir, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_reaches,
    )
    deadline = time.monotonic() + 240
    while not (partial.is_file() and len(partial.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not samples.exists() and not out.exists()
    kept = _rows(partial)[1:]  # the first line: what generated them
    assert 2 <= len(kept) < TASKS, "the interrupt came after the generation had ended"

    again = subprocess.run(_argv(model, shared_dir, out), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"{partial}: continuing an interrupted run: {len(kept)} samples kept" in again.stderr
    rows = _rows(samples)
    assert [r["task_id"] for r in rows] == [f"HumanEval/{i}" for i in range(TASKS)]
    by_id = {r["task_id"]: r for r in rows}
    assert all(by_id[r["task_id"]] == r for r in kept)  # kept, not generated again
    assert not partial.exists()
    assert json.loads(out.read_text())["samples"] == str(model)

    # Greedy, one prompt a batch: the same samples as a run never interrupted.
    fresh = tmp_path / "fresh.json"
    whole = subprocess.run(_argv(model, shared_dir, fresh), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    assert "continuing" not in whole.stderr
    assert _rows(fresh.with_suffix(".samples.jsonl")) == rows


def _in_process(model: Path, shared_dir: Path, out: Path, limit: int) -> int:
    argv = _argv(model, shared_dir, out)[3:]  # the command line after `python -m ...cli`
    argv[argv.index("--limit") + 1] = str(limit)
    return main(argv)


def test_kept_samples_are_not_generated_again(model, shared_dir, tmp_path, capsys):
    """What an interrupted run leaves (its key, whole tasks, a line a kill cut short) is
    continued: the kept rows are used as they are, the torn line's task generated again."""
    out = tmp_path / "he.json"
    samples = out.with_suffix(".samples.jsonl")
    partial = samples.with_name(samples.name + ".partial")
    assert _in_process(model, shared_dir, out, 3) == 0
    whole = _rows(samples)
    key = generation_key(EvalRequest.from_args(_parse(_argv(model, shared_dir, out)[4:])))
    kept = [{**whole[0], "completion": "def kept(): pass"}, whole[1]]
    torn = json.dumps(whole[2])[:20]
    partial.write_text("".join(json.dumps(r) + "\n" for r in [{"key": key}, *kept]) + torn)
    capsys.readouterr()
    assert _in_process(model, shared_dir, out, 3) == 0
    assert f"{partial}: continuing an interrupted run: 2 samples kept" in capsys.readouterr().err
    assert _rows(samples) == [*kept, whole[2]] and not partial.exists()


def test_another_model_in_the_folder_starts_over(model, shared_dir, tmp_path, capsys):
    """A journal left by other weights (the model trained again in place) is not mixed in."""
    out = tmp_path / "he.json"
    samples = out.with_suffix(".samples.jsonl")
    partial = samples.with_name(samples.name + ".partial")
    stale = {"task_id": "HumanEval/0", "completion": "STALE"}
    partial.write_text(json.dumps({"key": {"model": str(model)}}) + "\n" + json.dumps(stale))
    assert _in_process(model, shared_dir, out, 1) == 0
    assert "samples of another generation" in capsys.readouterr().err
    assert "STALE" not in samples.read_text() and not partial.exists()


def _parse(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


class _Flaky(JsonHandler):
    """An OpenAI-compatible server that answers ``answers`` requests, then fails with 503
    (``Retry-After: 0``: the retries come at once)."""

    answers = 1

    def do_POST(self) -> None:  # noqa: N802
        self.read_json()
        ok = _Flaky.answers > 0
        _Flaky.answers -= ok
        choices = [{"index": 0, "text": "    return 1\n```"}]
        retry_at_once = {"Retry-After": "0"}  # read on a 503 only
        self.reply({"choices": choices} if ok else b"", 200 if ok else 503, retry_at_once)


def test_a_server_that_goes_away_is_one_line_and_keeps_what_it_answered(
    shared_dir, tmp_path, capsys
):
    out = tmp_path / "he.json"
    with serving(_Flaky, threaded=False) as base:
        argv = ["evaluate", "--task", "humaneval", "--model", "m", "--backend", "openai"]
        argv += ["--base-url", base, "--limit", "3"]
        argv += ["--data-dir", str(shared_dir / "evaldata"), "--json", str(out), "--no-progress"]
        _Flaky.answers = 1
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("reflectioncoder evaluate: http://127.0.0.1:")
        assert "HTTP 503" in err and "after 5 retries" in err and "internal error" not in err
        _Flaky.answers = 2
        assert main(argv) == 0
        assert "continuing an interrupted run: 1 samples kept" in capsys.readouterr().err
    rows = _rows(out.with_suffix(".samples.jsonl"))
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_ctrl_c_while_scoring_then_nothing_is_generated_again(
    model, shared_dir, tmp_path, capsys, monkeypatch
):
    """The samples are all made, the scoring is stopped: the same command scores them again
    without loading the model (the journal goes only once the result is written)."""
    from reflectioncoder import generate
    from reflectioncoder.eval import score

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "he.json"
    with monkeypatch.context() as patched:
        patched.setattr(score, "score_python_samples", ctrl_c)
        assert _in_process(model, shared_dir, out, 2) == 130
    samples = out.with_suffix(".samples.jsonl")
    made = _rows(samples)
    assert len(made) == 2 and not out.exists()

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded to generate again")

    monkeypatch.setattr(generate, "LocalModel", no_model)
    capsys.readouterr()
    assert _in_process(model, shared_dir, out, 2) == 0
    assert "continuing an interrupted run: 2 samples kept" in capsys.readouterr().err
    assert _rows(samples) == made and out.is_file()
    assert not samples.with_name(samples.name + ".partial").exists()


def test_ctrl_c_during_generation_says_what_was_kept(model, shared_dir, tmp_path, capsys,
                                                     monkeypatch):  # fmt: skip
    """Ctrl-C says how many samples are kept and that the same command continues from them
    (journey9: it said "interrupted" alone, as if the half hour of generation was lost)."""
    from reflectioncoder.eval.journal import SampleJournal

    real_add = SampleJournal.add

    def ctrl_c_after_two_tasks(self, rows):
        real_add(self, rows)
        if self.saved == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(SampleJournal, "add", ctrl_c_after_two_tasks)
    out = tmp_path / "he.json"
    assert _in_process(model, shared_dir, out, 4) == 130
    partial = out.with_suffix(".samples.jsonl.partial")
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"reflectioncoder evaluate: interrupted; 2 samples kept in {partial}: the same command "
        "continues from them"
    )
