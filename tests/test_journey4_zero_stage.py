"""A ZeRO stage asked for while the backend is `none` (the tiny preset's, or the user's file's):
one line naming where the stage came from, before anything runs. Under torchrun it was dropped
silently: every rank held the whole state, the run logged DDP instead of the ZeRO asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reflectioncoder.config_loader import load_config, load_launch_config


def test_a_zero_stage_under_the_tiny_preset_is_refused_by_the_cli(tmp_path):
    args = [sys.executable, "-m", "reflectioncoder.cli", "train", "--config", "configs/tiny.yaml",
            "--set", "data.files=[tests/data/reflection_small.jsonl]",
            "--set", f"checkpoint.out_dir={tmp_path / 'run'}",
            "--set", "distributed.zero_stage=3"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == (
        "reflectioncoder train: --set distributed.zero_stage=3: distributed.zero_stage: 3 does "
        "not apply to distributed.backend none (every rank holds the whole state): add --set "
        "distributed.backend=deepspeed, or remove it\n"
    )
    assert not (tmp_path / "run").exists()


def test_a_file_with_both_is_located(tmp_path):
    config = tmp_path / "my.yaml"
    config.write_text("preset: tiny\ndistributed:\n  backend: none\n  zero_stage: 2\n")
    with pytest.raises(ValueError, match=r"my.yaml:4:15: distributed.zero_stage: 2 does not"):
        load_launch_config(config)
    assert load_config(config).distributed.zero_stage == 2  # reading it alone is no launch


@pytest.mark.parametrize(
    ("base", "path", "sets"),
    [
        ("tiny", None, ["distributed.backend=deepspeed", "distributed.zero_stage=3"]),
        (None, "configs/paper-34b.yaml", ["distributed.backend=none"]),  # the user's last word
        ("paper", None, ["distributed.backend=none"]),  # the default stage, not asked for
        ("tiny", None, ["distributed.zero_stage=0"]),
    ],
)
def test_what_still_loads(base, path, sets):
    load_launch_config(path, overrides=sets, base=base)
