"""Saved and converted model folders as other tools read them: weights as readable as the rest of
the folder, and a converted tokenizer that knows the context length.

safetensors 0.8 writes model.safetensors through a temporary file created 0600 (safetensors#782):
the trained SmolLM2's final/ and checkpoint model/ folders, and the install-model / convert-gguf
folder, had config.json 0644 but model.safetensors 0600, so a vLLM server or container running
as another user could not read the weights it was pointed at."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest
from test_convert_gguf import write_tiny_gguf

from reflectioncoder.cli import main as cli_main
from reflectioncoder.model import build_tiny_llama
from reflectioncoder.train.checkpoint import save_hf_model


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640)])
def test_trained_model_weights_follow_the_umask(tmp_path, mask, expected):
    model = build_tiny_llama(64, hidden_size=16, intermediate_size=32, num_layers=1, seed=0)
    with _umask(mask):
        save_hf_model(model, None, model.state_dict(), tmp_path / "final")
    assert _mode(tmp_path / "final" / "config.json") == expected
    assert _mode(tmp_path / "final" / "model.safetensors") == expected


def test_converted_gguf_weights_follow_the_umask(tmp_path):
    gguf = tmp_path / "tiny.Q8_0.gguf"
    write_tiny_gguf(gguf)
    with _umask(0o022):
        assert cli_main(["convert-gguf", str(gguf), str(tmp_path / "hf"), "--no-progress"]) == 0
    assert _mode(tmp_path / "hf" / "model.safetensors") == 0o644


def test_converted_tokenizer_knows_the_context_length(tmp_path):
    """A GGUF carries no tokenizer model_max_length: SmolLM2's converted tokenizer said 1e30, so
    nothing warned of or truncated a prompt past the model's 8192 positions."""
    from transformers import AutoTokenizer

    gguf = tmp_path / "tiny.Q8_0.gguf"
    write_tiny_gguf(gguf)  # context length 256
    assert cli_main(["convert-gguf", str(gguf), str(tmp_path / "hf"), "--no-progress"]) == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").model_max_length == 256
