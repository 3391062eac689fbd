"""`reflectioncoder runs` and the MultiPL-E toolchain lines (eval-setup's language list, the
evaluate line that skips a language) print text read from files and programs: a tracker's run
name, the lock's holder, a checkpoint's trainer state, a toolchain's reason. Its control
characters are escaped (reflectioncoder/printable.py): no file can clear or retitle the
terminal of a user listing a run; bench/bench_multiple.py prints its skipped languages so too."""

from __future__ import annotations

import argparse
import fcntl
import json

from bench import bench_multiple
from reflectioncoder.cli import main as cli_main
from reflectioncoder.eval import multiple as ml
from reflectioncoder.eval import toolchains

CLEAR, TITLE = "\x1b[2J", "\x1b]0;owned\x07"


def _run_folder(tmp_path):
    out = tmp_path / "run"
    step = out / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    (step / "COMPLETE").write_text("")
    state = {"total_steps": f"9{CLEAR}", "model_only": True}
    (step / "trainer_state.json").write_text(json.dumps(state))
    ids = {"run_name": f"night{TITLE}", "wandb": f"id{CLEAR}"}
    (out / "tracker_runs.json").write_text(json.dumps(ids))
    rows = [{"step": 2, "loss": 1.5}, {"step": 3, "loss": f"x{CLEAR}"}]  # a string: no loss
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "config.yaml").write_text("checkpoint: {}\n")
    return out


def test_runs_prints_what_the_run_files_say_escaped(tmp_path, capsys):
    out = _run_folder(tmp_path)
    with (out / ".lock").open("w") as lock:  # a launch holding the folder
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"pid 7 on host{TITLE}")
        lock.flush()
        assert cli_main(["runs", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed
    row = printed.splitlines()[1].split()
    assert row[:3] == ["checkpoints/step-2", "2/9\\x1b[2J", "1.5000"]  # step 3's loss: a string
    assert "tracker runs: night\\x1b]0;owned\\x07 (wandb id\\x1b[2J)" in printed
    assert "training now: pid 7 on host\\x1b]0;owned\\x07 (" in printed


def test_eval_setup_prints_a_toolchains_reason_escaped(monkeypatch, capsys):
    monkeypatch.setattr(toolchains.ml, "setup_packages", lambda langs: [])
    monkeypatch.setattr(toolchains.ml, "toolchain_problem", lambda lang: f"no mcs{TITLE}")
    args = argparse.Namespace(languages=["cs"], print=False)
    assert toolchains.main(args) == 1
    assert capsys.readouterr().out == "cs      no mcs\\x1b]0;owned\\x07\n"


def test_evaluate_prints_a_toolchains_reason_escaped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ml, "toolchain_problem", lambda lang: f"multiple-cs: no mcs{CLEAR}")
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval_0", "completion": "x"}) + "\n")
    cli_main(["evaluate", "--task", "multiple-cs", "--samples", str(samples)])
    err = capsys.readouterr().err
    assert "reflectioncoder evaluate: multiple-cs: no mcs\\x1b[2J" in err and "\x1b" not in err


def test_bench_multiple_prints_a_toolchains_reason_escaped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_multiple.ml, "toolchain_problem", lambda lang: f"no mcs{TITLE}")
    out = tmp_path / "multiple.json"
    assert bench_multiple.main(["--languages", "cs", "--out", str(out)]) == 0
    assert capsys.readouterr().out == "no mcs\\x1b]0;owned\\x07\n"
    row = {"language": "cs", "unavailable": f"no mcs{TITLE}"}  # the file keeps it (JSON escapes)
    assert json.loads(out.read_text())["rows"] == [row]
