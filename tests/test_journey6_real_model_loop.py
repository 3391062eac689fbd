"""The SmolLM2-135M walkthrough of docs/model.md: its commands parse (fast), and training starts
from the real pretrained weights with SPEC §1's special-token rows (slow, the installed model)."""

from __future__ import annotations

import importlib
import json
import math
import re
import stat
from pathlib import Path

import pytest
import torch
from test_docs_commands import _commands

from reflectioncoder.cli import COMMANDS, _command_parser
from reflectioncoder.cli import main as cli_main
from reflectioncoder.install_model import default_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = default_folder("smollm2-135m-instruct")


def _walkthrough() -> str:
    text = (REPO_ROOT / "docs" / "model.md").read_text(encoding="utf-8")
    section = text.split("### The whole loop on a real model", 1)[1]
    return re.search(r"```bash\n(.*?)\n```", section, re.S).group(1)


def test_the_walkthrough_commands_parse():
    commands = _commands(_walkthrough())
    assert [c[0] for c in commands] == [
        "install-model", "evaluate", "evaluate", "build-data", "inspect", "train",
        "evaluate", "evaluate", "runs",
    ]  # fmt: skip
    for argv in commands:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        _command_parser(argv[0], module).parse_args(argv[1:])


@pytest.mark.slow
@pytest.mark.skipif(
    not (SMOLLM2 / "config.json").is_file(),
    reason="SmolLM2 not installed (reflectioncoder install-model smollm2-135m-instruct)",
)
def test_smollm2_trains_from_its_pretrained_weights(tmp_path):
    """One step (its lr is 0: the warm-up starts there), so the saved rows are the start's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    argv = ["train", "--preset", "smollm2", "--no-progress",
            "--set", "data.files=[tests/data/reflection_small.jsonl]",
            "--set", f"checkpoint.out_dir={out}", "--set", "train.max_steps=1",
            "--set", "train.samples_per_step=1", "--set", "train.threads=1",
            "--set", "packing.max_tokens=1024"]  # fmt: skip
    assert cli_main(argv) == 0
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    base_tok = AutoTokenizer.from_pretrained(SMOLLM2)
    assert first["loss"] < 0.5 * math.log(len(base_tok) + 7)  # random weights: about ln V (10.8)

    base = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32)
    final = AutoModelForCausalLM.from_pretrained(out / "final", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert final.config.tie_word_embeddings and len(tok) == len(base_tok) + 7
    old = base.get_input_embeddings().weight
    new = final.get_input_embeddings().weight
    assert new.data_ptr() == final.get_output_embeddings().weight.data_ptr()
    torch.testing.assert_close(new[: len(base_tok)], old, rtol=0, atol=0)
    for token in ("<|user|>", "<|code|>", "<|endofmessage|>"):
        split = base_tok.encode(token, add_special_tokens=False)
        row = new[tok.convert_tokens_to_ids(token)]
        torch.testing.assert_close(row, old[split].mean(0), rtol=1e-6, atol=1e-6)
    assert tok.convert_tokens_to_ids("<|endofmessage|>") in final.generation_config.eos_token_id
    config_mode = stat.S_IMODE((out / "final" / "config.json").stat().st_mode)
    assert stat.S_IMODE((out / "final" / "model.safetensors").stat().st_mode) == config_mode
