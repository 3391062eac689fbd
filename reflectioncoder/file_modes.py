"""File modes of what we save: weights readable by whoever can read the rest of the folder."""

from __future__ import annotations

import os
from pathlib import Path


def weights_mode_like_config(folder: str | Path) -> None:
    """Give each ``*.safetensors`` file of ``folder`` the mode of its ``config.json``.

    safetensors 0.8 writes through a temporary file created 0600 and renames it into place
    (safetensors#782), so a saved model's weights were readable by their owner only while
    config.json and the tokenizer had the umask's mode: a vLLM server or a container running as
    another user found the folder but not the weights. config.json was written by a plain
    ``open()``, so its mode is what the user's umask asks for."""
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        return
    mode = config.stat().st_mode & 0o777
    for weights in folder.glob("*.safetensors"):
        os.chmod(weights, mode)
