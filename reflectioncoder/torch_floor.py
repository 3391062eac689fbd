"""The lowest torch reflectioncoder is checked with (setup.py's ``torch>=`` says the same;
tests/test_torch_floor.py holds them together). 2.11 is the oldest torch a compiled train step
under every checkpointing policy was run with (the lent GPUs' torch, on the CPU); the code needs
2.5 at the least (``torch.utils.checkpoint.create_selective_checkpoint_contexts``)."""

from __future__ import annotations

import re
from importlib import metadata

MIN_TORCH = (2, 11)


def unsupported_torch(version: str | None = None) -> str | None:
    """One line saying the installed torch (or ``version``) is too old, or None. Read from the
    package metadata: the CLI answers before it imports torch."""
    install = "pip install 'torch>={}.{}'".format(*MIN_TORCH)
    if version is None:
        try:
            version = metadata.version("torch")
        except metadata.PackageNotFoundError:
            return f"torch is not installed: {install}"
    found = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if found >= MIN_TORCH:
        return None
    floor = "{}.{}".format(*MIN_TORCH)
    return f"reflectioncoder needs torch>={floor}, found torch {version}: {install}"
