"""`reflectioncoder train` run as a user runs it (a subprocess, logging to the terminal): a bad
data file, model folder or run folder ends in exactly one line on stderr, naming the file (and
line), exit 1, no output folder. The thread-count INFO line (said on every start without
train.threads) came first, so every such failure printed two lines."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _good_rows(n: int) -> list[str]:
    rows = []
    for i in range(n):
        fn = f"f{random.randrange(10**6)}"
        rows.append(
            json.dumps(
                {
                    "type": "generation",
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "text", "content": f"Write {fn}()."}],
                        },
                        {
                            "role": "assistant",
                            "content": [
                                {"type": "code", "content": f"def {fn}():\n    return {i}\n"}
                            ],
                        },
                    ],
                }
            )
        )
    return rows


def _train(tmp_path: Path, *sets: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "reflectioncoder.cli", "train", "--preset", "tiny"]
    argv += ["--set", f"checkpoint.out_dir={tmp_path / 'out'}"]
    for s in sets:
        argv += ["--set", s]
    env = {**os.environ, "REFLECTIONCODER_DEBUG": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


def _cases(tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(_good_rows(40)) + "\n")
    n_bad = random.randint(2, 30)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join(_good_rows(n_bad - 1) + ['{"type": "generation", "messages": 5}']) + "\n"
    )
    (tmp_path / "empty.jsonl").write_text("")
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("preset: tiny\n")
    return {
        "missing": (["data.files=[missing.jsonl]"], ["missing.jsonl", "not found"]),
        "bad line": ([f"data.files=[{bad}]"], [f"bad.jsonl:{n_bad}", "messages"]),
        "empty": ([f"data.files=[{tmp_path / 'empty.jsonl'}]"], ["empty.jsonl", "empty"]),
        "no model": ([f"data.files=[{good}]", "model.name_or_path=nomodel"], ["nomodel"]),
        "run folder as model": ([f"data.files=[{good}]", f"model.name_or_path={run}"], ["final"]),
    }


@pytest.mark.slow
def test_a_bad_start_is_one_line(tmp_path):
    for name, (sets, words) in _cases(tmp_path).items():
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        proc = _train(tmp_path, *sets)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1, (name, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("reflectioncoder train: "), (name, lines)
        assert all(w in lines[0] for w in words), (name, lines[0])
        assert not (tmp_path / "out").exists(), name
