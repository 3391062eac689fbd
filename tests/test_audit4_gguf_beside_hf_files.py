"""convert-gguf reads the GGUF file alone: a tokenizer.json / tokenizer_config.json / config.json
beside it (a Hub repo that ships both, another model in the same folder) replaced the GGUF's own
tokenizer, silently: the output had another model's vocabulary for a 290-row
embedding, no end token and no chat template (issue 22: a folder every command takes)."""

from __future__ import annotations

import shutil

from test_convert_gguf import tiny_gguf  # noqa: F401 (a fixture)

from reflectioncoder.cli import main
from reflectioncoder.testing.tiny_model import save_tiny_model


def test_files_beside_the_gguf_are_not_read(tiny_gguf, tmp_path):  # noqa: F811
    from transformers import AutoTokenizer

    path, _, tok = tiny_gguf
    other = save_tiny_model(tmp_path / "other", ["print('unrelated text')"] * 10)
    folder = tmp_path / "repo"
    shutil.copytree(other, folder)  # config.json, tokenizer.json, tokenizer_config.json, ...
    shutil.copy(path, folder / path.name)
    out = tmp_path / "hf"
    assert main(["convert-gguf", str(folder / path.name), str(out), "--no-progress"]) == 0

    hf_tok = AutoTokenizer.from_pretrained(out)
    assert len(hf_tok) == tok.get_vocab_size()
    assert hf_tok.eos_token == "<|im_end|>"
    assert hf_tok.chat_template is not None
    text = "def add(a, b):\n    return a + b"
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text).ids
