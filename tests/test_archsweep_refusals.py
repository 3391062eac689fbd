"""archsweep: causal LMs transformers ships that passed the start's checks, wrote the run folder
and then trained wrong or stopped (reflectioncoder/testing/archsweep.py found them) are refused by
``check_supported`` in one line naming the model, the reason and its folder: MiniMax's linear
attention layers trained silently on hidden states mixed across the packed samples (2e-2 off the
unpacked model), DeepSeek-V3.2 / GLM-MoE-DSA's indexed sparse attention and Doge's dynamic mask
stopped at the first step (their attention reads a dense mask), and so did Gemma 4's assistant
(a drafter: its attention reads its target model's keys and values). GPT-Neo, whose
attention keeps its own table of implementations, stopped the load itself with
``KeyError: 'reflectioncoder_varlen'``: ``load_model`` refuses it before reading the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from reflectioncoder.cli import main
from reflectioncoder.model import load_model
from reflectioncoder.model_support import check_supported
from reflectioncoder.testing.archsweep import build_folder, tiny_config
from reflectioncoder.testing.cli import train_argv

DATA = Path(__file__).parent / "data" / "reflection_small.jsonl"


def _tiny(model_type: str):
    config, why = tiny_config(model_type, 64, {})
    assert why is None, why
    torch.manual_seed(0)
    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)


@pytest.mark.parametrize(
    "model_type, words",
    [
        ("minimax", r"layer_types\[1\] = 'linear_attention'"),
        ("deepseek_v32", r"layer_types\[0\] = 'indexed_attention'"),
        ("glm_moe_dsa", r"layer_types\[0\] = 'indexed_attention'"),
        ("doge", "dynamic mask"),
        ("gemma4_unified_assistant", "speculative-decoding drafter"),
    ],
)
def test_refused_in_one_line_naming_the_model(model_type, words):
    model = _tiny(model_type)
    with pytest.raises(ValueError, match=rf"^model: {type(model).__name__}: .*{words}") as err:
        check_supported(model, max_len=64)
    assert "\n" not in str(err.value) and "not supported" in str(err.value)


def test_the_line_names_the_model_folder(tmp_path):
    _tiny("minimax").save_pretrained(tmp_path / "minimax")
    model = load_model(tmp_path / "minimax", dtype=torch.float32)
    with pytest.raises(ValueError, match=r"linear_attention.*\(model folder: .*minimax\)$"):
        check_supported(model, max_len=64)


@pytest.mark.parametrize("model_type", ["gemma3_text", "ministral"])
def test_full_and_sliding_layers_still_accepted(model_type):
    check_supported(_tiny(model_type), max_len=64)


def test_load_refuses_an_attention_of_its_own_before_the_weights(tmp_path):
    _tiny("gpt_neo").save_pretrained(tmp_path / "neo")
    with pytest.raises(ValueError, match=r"^model: GPTNeoForCausalLM does not run its attention.*"
                       r"\(model folder: .*neo\)$"):  # fmt: skip
        load_model(tmp_path / "neo", dtype=torch.float32)


def test_train_refuses_in_one_line_before_writing_the_run_folder(tmp_path, capsys):
    from transformers import AutoTokenizer

    from reflectioncoder.testing.tiny_model import save_tiny_model

    tok = AutoTokenizer.from_pretrained(save_tiny_model(tmp_path / "tok", ["a b c", "d e f"]))
    assert build_folder("minimax", tmp_path / "minimax", tok) is None
    capsys.readouterr()  # the save's progress bar
    out = tmp_path / "run"
    sets = {"model.name_or_path": tmp_path / "minimax", "data.files": f"[{DATA}]",
            "checkpoint.out_dir": out, "logging.report_to": "[none]"}  # fmt: skip
    assert main(train_argv(sets, "--no-progress")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layer_types[1] = 'linear_attention'" in err[0], err
    assert "minimax" in err[0].rsplit("model folder:", 1)[-1]
    assert not out.exists()
