"""A command's output never replaces what it reads (one refusal, before any work; build-data's
own check: tests/test_build_problems.py), and a
resumed run's metrics history survives a kill while it is rewritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectioncoder.cli import main
from reflectioncoder.config import LoggingConfig
from reflectioncoder.train.metrics import MetricsLogger, read_metrics

LINE = '{"id": "p1", "prompt": "def f():", "tests": ["assert f() == 1"]}\n'


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "--data", "{x}", "--tokenizer", "{tmp}/no-tokenizer", "--json", "{same}"],
        ["prepare-data", "--in", "{x}", "--out", "{same}", "--no-decontaminate"],
    ],
    ids=["inspect", "prepare-data"],
)
def test_output_naming_an_input_is_refused(tmp_path, capsys, argv):
    data = tmp_path / "d.jsonl"
    data.write_text(LINE)
    names = {"x": str(data), "same": f"{tmp_path}/./d.jsonl", "tmp": str(tmp_path)}
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    flag = {"inspect": "--json"}.get(argv[0], "--out")
    source = {"inspect": "--data", "prepare-data": "--in"}[argv[0]]
    assert f"{flag}: is the {source} file: the output would overwrite it" in err
    assert len(err.splitlines()) == 1
    assert data.read_text() == LINE


def test_resume_killed_while_rewriting_metrics_keeps_the_history(tmp_path, monkeypatch):
    """On resume the rows after the checkpoint are dropped by rewriting metrics.jsonl; a kill
    in that moment left it cut (it was truncated, then written)."""
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    real = Path.write_text

    def killed(self, text, *args, **kwargs):
        real(self, text[: len(text) // 3], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed)
    cfg = LoggingConfig(progress=False, report_to=["none"], plot=False)
    with pytest.raises(KeyboardInterrupt):
        MetricsLogger(tmp_path, cfg, total_steps=10, start_step=3)
    monkeypatch.undo()
    assert read_metrics(path) == rows
    logger = MetricsLogger(tmp_path, cfg, total_steps=10, start_step=3)
    logger.close()
    assert read_metrics(path) == rows[:3]
    assert not list(tmp_path.glob(".metrics.jsonl.tmp*"))


@pytest.mark.parametrize(
    "line,want",
    [
        ("[1, 2]", "expected a JSON object, got an array"),
        ('"x"', "expected a JSON object, got a string"),
    ],
)
def test_samples_line_that_is_not_an_object_says_so(tmp_path, capsys, line, want):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "    return 1"}\n' + line + "\n")
    argv = ["evaluate", "--task", "humaneval", "--samples", str(samples), "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert f"{samples}:2: {want}" in err and "task_id" not in err


def test_convert_given_a_folder_says_it_is_a_folder(tmp_path, capsys):
    assert main(["convert-gguf", str(tmp_path), str(tmp_path / "out")]) == 1
    assert "GGUF file is a folder, not a file" in capsys.readouterr().err
