"""`build-data --n` (--workers samples made at a time), evaluate's generation (a batch of prompts
at a time) and its scoring (--parallel sandboxed runs) run items concurrently: once every item
left is running, their progress lines say how many are still running, not a time left that the
rate of those done cannot know (a hanging run takes its whole time limit; the last batch holds
the longest prompts). Plain lines (a log file), a fake clock."""

from __future__ import annotations

import types

import reflectioncoder.construct.cli as construct_cli
import reflectioncoder.generate as gn
import reflectioncoder.progress as progress
from reflectioncoder.cli import main as cli_main
from reflectioncoder.construct.build import BuildStats
from reflectioncoder.eval import completions, pipeline
from reflectioncoder.eval.multiple import MultiplEResult
from reflectioncoder.eval.request import Decoding


def _plain_lines_at(monkeypatch, seconds: list[float]) -> None:
    """Plain lines; the bar reads ``seconds`` from its clock (its start, then one per line)."""
    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    monkeypatch.setattr(progress, "_enabled", True)
    clock = iter(seconds)
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))


def test_build_data_n_says_the_last_workers_are_running(tmp_path, monkeypatch, capsys):
    _plain_lines_at(monkeypatch, [100.0, 101.0, 102.0, 103.0, 120.0])

    def build(n, seed, *, workers, progress, **_):
        assert workers == 2
        for done in range(1, 5):
            progress(done, 4)
        return [], BuildStats()

    monkeypatch.setattr(construct_cli, "build_dataset", build)
    out = tmp_path / "out.jsonl"
    assert cli_main(["build-data", "--n", "5", "--workers", "2", "--out", str(out)]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "reflection samples: 1/4 samples  (1 s, 3 s left)",  # 3 left, 2 at a time: some wait
        "reflection samples: 2/4 samples  (2 s, the last 2 running)",
        "reflection samples: 3/4 samples  (3 s, the last 1 running)",
        "reflection samples: 4/4 samples  (20 s)",
    ]


def test_evaluate_score_says_the_last_parallel_runs_are_running(monkeypatch, capsys):
    _plain_lines_at(monkeypatch, [0.0, 2.0, 4.0, 6.0, 30.0, 31.0])
    rows = [{"task_id": f"T{i}", "completion": "x"} for i in range(5)]

    def score(tasks, samples, *, parallel, progress):
        for _ in samples:
            progress(1)
        return [MultiplEResult(s["task_id"], 0, "fail", 1, "", "", "", 0.1) for s in samples]

    monkeypatch.setattr(pipeline.ml, "score_multiple_samples", score)
    req = types.SimpleNamespace(parallel=3, progress=True)
    scores, _ = pipeline._score_multiple(req, {}, rows, (1,), "MultiPL-E cs")
    assert scores == {"MultiPL-E cs": {"pass@1": 0.0}}
    assert capsys.readouterr().err.splitlines() == [
        "score: 1/5 items  (2 s, 8 s left)",  # 4 left, 3 at a time: one still waits
        "score: 2/5 items  (4 s, the last 3 running)",
        "score: 3/5 items  (6 s, the last 2 running)",
        "score: 4/5 items  (30 s, the last 1 running)",
        "score: 5/5 items  (31 s)",
    ]


def test_evaluate_generate_says_the_last_batch_is_running(monkeypatch, capsys):
    _plain_lines_at(monkeypatch, [0.0, 10.0, 20.0, 50.0])

    class Model:  # generates batch_size prompts at a time, as LocalModel does
        def __init__(self, *args, **kwargs):
            pass

        def complete(self, prompts, config, *, progress, stats, on_done):
            for start in range(0, len(prompts), config.batch_size):
                progress(len(prompts[start : start + config.batch_size]))
            stats.update(new_tokens=1, seconds=1.0, cpu_seconds=1.0, threads=1, batch_size=2)

    monkeypatch.setattr(gn, "LocalModel", Model)
    decoding = Decoding(max_new_tokens=8, temperature=0.0, top_p=1.0, n=1, batch_size=2, seed=0)
    req = types.SimpleNamespace(
        backend="hf", decoding=decoding, progress=True, model="m", device=None, threads=None
    )
    completions._generate(req, ["p"] * 5, lambda i, texts: None, {})
    assert capsys.readouterr().err.splitlines() == [
        "generate: 2/5 items  (10 s, 15 s left)",  # 3 left, 2 a batch: a batch still waits
        "generate: 4/5 items  (20 s, the last 1 running)",
        "generate: 5/5 items  (50 s)",
    ]
    # an endpoint asks one prompt at a time; vLLM takes them all at once
    assert completions._prompts_at_a_time(types.SimpleNamespace(backend="openai"), 5) == 1
    assert completions._prompts_at_a_time(types.SimpleNamespace(backend="vllm"), 5) == 5
