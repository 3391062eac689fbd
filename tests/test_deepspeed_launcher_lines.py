"""What a user sees when a run fails under the ``deepspeed`` launcher (docs/training.md): our
one line on stderr, then DeepSpeed's own report of the failed rank on stdout; DeepSpeed's
``--log_level critical`` leaves our line alone, with the rank's exit code. The launcher loads
no plugin of ours (unlike torchrun's ``torchrun.handlers``), so this is the flag to give."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "reflection_small.jsonl"
LINE = "reflectioncoder train: --set optim.lr=-1: optim.lr: must be > 0, got -1.0"


def _launch(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    deepspeed = Path(sys.executable).parent / "deepspeed"
    out = tmp_path / "run"
    command = [str(deepspeed), *flags, "--no_local_rank", "--num_gpus", "2", "--module",
               "reflectioncoder.cli", "train", "--preset", "tiny", "--set", f"data.files=[{DATA}]",
               "--set", "optim.lr=-1", "--set", f"checkpoint.out_dir={out}"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.mark.slow  # two launches of two ranks each (~25 s apiece on a busy CPU)
def test_deepspeed_launcher_lines_and_the_flag_that_quiets_them(tmp_path):
    if not (Path(sys.executable).parent / "deepspeed").is_file():
        pytest.skip("no deepspeed launcher installed beside this Python")
    plain = _launch(tmp_path)
    assert plain.returncode == 2
    assert plain.stderr.splitlines() == [LINE]
    assert "exits with return code = 2" in plain.stdout  # DeepSpeed's own, after ours
    quiet = _launch(tmp_path, "--log_level", "critical")
    assert quiet.returncode == 2
    assert quiet.stderr.splitlines() == [LINE]
    assert "sigkill_handler" not in quiet.stdout and "[INFO]" not in quiet.stdout, quiet.stdout
