"""bench/gpu_call.sh as a lent GPU runs it (DEVICE=cuda), on the CPU in seconds: ``python3``
and ``nvidia-smi`` are stand-ins that record each call, and every ``python3 -m bench.X ...``
is parsed by bench.X's own argument parser (then nothing runs). So a renamed module or flag, a
choice the parser refuses, or a shell error in the call fails here, not in the one call a GPU
gets; and the budget's order: what cannot start is listed, and OUT has what was packed."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Runs bench.X's main with sys.argv as given, stopping right after its parser accepted them.
VALIDATE = """
import argparse, runpy, sys
parse = argparse.ArgumentParser.parse_args
def accepted(self, args=None, namespace=None):
    parse(self, args, namespace)
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = accepted
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__")
sys.exit(3)  # a module whose main parsed nothing
"""
STAND_IN = """#!/bin/sh
printf '%s\\n' "$*" >>"$RECORD"
if [ "$1" = -m ] && [ "${{2#bench.}}" != "$2" ]; then
  shift
  {python} -c '{validate}' "$@"
  rc=$?
  printf 'parsed %s %s\\n' "$rc" "$*" >>"$RECORD"
  exit $rc
fi
exit 0
"""


def _stand_ins(folder: Path) -> dict:
    folder.mkdir()
    python = folder / "python3"
    python.write_text(STAND_IN.format(python=sys.executable, validate=VALIDATE.replace("'", '"')))
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'name, driver_version'\n")
    for f in (python, smi):
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return dict(os.environ, PATH=f"{folder}:{os.environ['PATH']}", PYTHONPATH=str(REPO))


def _call(tmp_path: Path, budget: int) -> tuple[list[str], list[list[str]], Path]:
    env = _stand_ins(tmp_path / "bin")
    record, out = tmp_path / "calls.txt", tmp_path / "out"
    model = tmp_path / "model"  # the ablation's model, as if carried: its command is parsed too
    model.mkdir()
    (model / "config.json").write_text("{}")
    env |= {"RECORD": str(record), "DEVICE": "cuda", "CALL_BUDGET_S": str(budget)}
    env["ABLATION_MODEL"] = str(model)
    proc = subprocess.run(
        ["bash", "bench/gpu_call.sh", str(out)], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    return record.read_text().splitlines(), steps, out


@pytest.mark.slow
def test_every_command_of_the_gpu_call_is_accepted_by_its_parser(tmp_path):
    calls, steps, out = _call(tmp_path, budget=3600)
    parsed = [line.split(" ", 2) for line in calls if line.startswith("parsed ")]
    modules = {shlex.split(p[2])[0] for p in parsed}
    assert modules == {
        "bench.bench_host_replay", "bench.gpu_step_call", "bench.gpu_suite",
        "bench.bench_checkpointing", "bench.ablation",
    }  # fmt: skip
    assert [p for p in parsed if p[1] != "0"] == []
    assert [s[0] for s in steps] == [
        "replay_step_1b", "replay_cli", "checks", "step_call", "suite_loss", "suite_rest",
        "checkpointing", "ablation",
    ]  # fmt: skip
    # the GPU's flags: the replay on CUDA from the carried trees, no dry run anywhere
    assert all("--dry-run" not in p[2] for p in parsed)
    assert any("--device cuda" in p[2] and "--archives .replay" in p[2] for p in parsed)
    assert (out / "gpu_call.tar.gz").is_file()


def test_the_budget_runs_the_first_steps_and_lists_the_rest(tmp_path):
    # 70 s, less 15 for the packing: both replays get 55 s (their least: 40), the checks
    # cannot get their least (60 s), nor can what comes after them
    _, steps, _ = _call(tmp_path, budget=70)
    started = [s[0] for s in steps if s[1] != "not started"]
    assert started == ["replay_step_1b", "replay_cli"]
    assert [s[0] for s in steps if s[1] == "not started"] == [
        "checks", "step_call", "suite_loss", "suite_rest", "checkpointing", "ablation",
    ]  # fmt: skip


def _planned_steps(script: str) -> list[tuple[str, int, int]]:
    """(name, cap, least) of each ``step`` line of gpu_call.sh, caps at their defaults."""
    line = r'^(?:\w+=\S+ )?step (\w+) "?(?:\$\{\w+:-)?(\d+)\}?"? (\d+) '
    found = re.findall(line, script, re.MULTILINE)
    return [(name, int(cap), int(least)) for name, cap, least in found]


def test_the_predicted_call_is_under_8_minutes():
    """gpu_call.sh's PREDICTED seconds (each step on an H100 / H200, estimated) played through
    its budget's rule, as ``step`` applies it: the call's predicted time is under 8 minutes, the
    owed checks start, and each started step is predicted within its cap."""
    script = (REPO / "bench/gpu_call.sh").read_text()
    predicted = dict(
        (name, int(s)) for name, s in re.findall(r"(\w+)=(\d+)", re.search(
            r'^PREDICTED="([^"]*)"', script, re.MULTILINE).group(1))
    )  # fmt: skip
    budget = int(re.search(r"echo 3600 \|\| echo (\d+)\)", script).group(1))
    steps = _planned_steps(script)
    assert [s[0] for s in steps] == [n for n in predicted if n != "gpu_env"]
    t, started = predicted["gpu_env"], []
    for name, cap, least in steps:
        limit = min(cap, budget - t - 15)
        if limit < least:
            continue
        assert predicted[name] <= cap, name
        t += min(predicted[name], limit)
        started.append(name)
    assert t <= 8 * 60 and budget + 10 <= 8 * 60, (t, budget)
    assert started == ["replay_step_1b", "replay_cli", "checks", "step_call", "suite_loss"]
