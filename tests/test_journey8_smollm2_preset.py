"""The smollm2 preset trains on all of what README's `build-data --n 96 --seed 0` writes: its
max_len was 1024 SmolLM2 ids, which dropped 16 of the 96 samples (up to 1408 ids) as
over-length, so README's run trained on 80 and docs/training.md's "96 samples give 24 steps"
was 20."""

from __future__ import annotations

from pathlib import Path

import pytest

from reflectioncoder.cli import main as cli_main
from reflectioncoder.config_presets import PRESETS
from reflectioncoder.data.config import DataConfig
from reflectioncoder.data.dataset import load_dataset
from reflectioncoder.data.tokenize import add_special_tokens
from reflectioncoder.install_model import default_folder

DATA = Path(__file__).parent / "data" / "reflection_small.jsonl"

SMOLLM2 = default_folder("smollm2-135m-instruct")


@pytest.mark.slow
@pytest.mark.skipif(
    not (SMOLLM2 / "config.json").is_file(),
    reason="SmolLM2 not installed (reflectioncoder install-model smollm2-135m-instruct)",
)
def test_the_smollm2_preset_keeps_every_sample_of_readmes_build_data(tmp_path):
    from transformers import AutoTokenizer

    data = tmp_path / "reflection.jsonl"
    argv = ["build-data", "--n", "96", "--seed", "0", "--out", str(data), "--no-progress"]
    assert cli_main(argv) == 0
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    add_special_tokens(tokenizer)
    max_len = PRESETS["smollm2"]()["data"]["max_len"]
    samples, report = load_dataset(DataConfig(files=[str(data)], max_len=max_len), tokenizer)
    assert report.over_length == [] and len(samples) == 96


def test_a_smollm2_preset_run_saves_checkpoints_to_resume_from(tmp_path):
    """A smollm2 step takes minutes on a CPU (README: 120-180 s): the preset saved no checkpoint
    (save_every 0), so a Ctrl-C an hour in left `--resume` nothing. Here with a tiny model in
    SmolLM2's place, 6 steps, the two newest checkpoints kept: one was saved mid-run."""
    from reflectioncoder.testing.tiny_model import save_tiny_model

    model = save_tiny_model(tmp_path / "model", DATA.read_text().splitlines() * 4)
    out = tmp_path / "run"
    argv = ["train", "--preset", "smollm2", "--no-progress",
            "--set", f"data.files=[{DATA}]", "--set", f"model.name_or_path={model}",
            "--set", f"checkpoint.out_dir={out}", "--set", "train.max_steps=6",
            "--set", "train.samples_per_step=1", "--set", "train.threads=1",
            "--set", "checkpoint.keep_last=2", "--set", "checkpoint.save_final=false",
            "--set", "logging.report_to=[none]"]  # fmt: skip
    assert cli_main(argv) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
