"""Whether a complete checkpoint's files are whole: the one look ``reflectioncoder runs`` and
``--resume`` share, before anything is loaded. A file cut short (a copy or a sync stopped
midway, a disk that filled) or garbled shows here, named: ``runs`` listed such a checkpoint as
complete, and ``--resume`` found it only in torch's reader.

What is looked at, cheaply (no tensor is read, torch is not imported): trainer_state.json
parses as a JSON object; each file ``torch.save`` wrote (optimizer.pt, rng/, deepspeed/) is a
whole zip archive (its directory, written last, is there; a file of torch's legacy format
starts as one); each model safetensors file's header
covers the file. A byte flipped inside a tensor is not seen: the load still names it
(``restore._damaged``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

TORCH_FILES = ("optimizer.pt", "rng/*.pt", "deepspeed/**/*.pt")  # what torch.save wrote


def trainer_state(path: Path) -> tuple[dict[str, Any], str | None]:
    """(the checkpoint's trainer state, None), or ({}, why it cannot be read)."""
    file = path / "trainer_state.json"
    if not file.is_file():
        return {}, "is missing"
    try:
        state = json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return {}, f"is not valid JSON ({getattr(err, 'msg', None) or err.reason})"
    return (state, None) if isinstance(state, dict) else ({}, "is not a JSON object")


def damage(path: Path) -> str | None:
    """What in the complete checkpoint at ``path`` is not whole (``optimizer.pt is cut short or
    garbled ...``), or None. A model-only checkpoint's model/ alone is looked at."""
    state, why = trainer_state(path)
    if why:
        return f"trainer_state.json {why}"
    files = [] if state.get("model_only") else _torch_files(path)
    for file in files:
        if not _whole_torch_file(file):
            return f"{file.relative_to(path)} is cut short or garbled: not a whole torch file"
    for file in sorted((path / "model").glob("*.safetensors")):
        why = _safetensors_damage(file)
        if why:
            return f"{file.relative_to(path)} is cut short or garbled: {why}"
    return None


def _torch_files(path: Path) -> list[Path]:
    return sorted(f for pattern in TORCH_FILES for f in path.glob(pattern) if f.is_file())


# torch.save's legacy format (DeepSpeed's "checkpoint_serialization": false): a pickled magic
# number first; such a file has no directory to look at, so only its start is checked
LEGACY_TORCH_START = b"\x80\x02\x8a\x0a"


def _whole_torch_file(file: Path) -> bool:
    """Whether ``file`` is a zip archive whose every member lies inside the file (or a file of
    torch's legacy format)."""
    try:
        with zipfile.ZipFile(file) as archive:
            size = file.stat().st_size
            return all(i.header_offset + i.compress_size <= size for i in archive.infolist())
    except (zipfile.BadZipFile, ValueError):
        pass
    except OSError:
        return False
    with file.open("rb") as opened:
        return opened.read(len(LEGACY_TORCH_START)) == LEGACY_TORCH_START


def _safetensors_damage(file: Path) -> str | None:
    """safetensors' own words when the header of ``file`` does not cover it, else None."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), "np"):
            return None
    except (SafetensorError, OSError) as err:
        return " ".join(str(err).split())
