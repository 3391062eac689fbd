"""Command lines for tests that run ``reflectioncoder train`` as a user types it."""

from __future__ import annotations

import signal
from collections.abc import Mapping

ONE_STEP = {"train.max_steps": 1, "logging.report_to": "[none]"}  # the quickest real run


def train_argv(sets: Mapping[str, object], *flags: str, preset: str = "tiny") -> list[str]:
    """``train --preset PRESET FLAGS --set key=value ...``, one ``--set`` per item of ``sets``."""
    argv = ["train", "--preset", preset, *flags]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    return argv


def ctrl_c_reaches() -> None:
    """``Popen(preexec_fn=...)`` for a child a test sends Ctrl-C: SIGINT back to its default.
    A shell without job control starts ``cmd &`` with SIGINT ignored and children inherit it,
    so Python would never raise KeyboardInterrupt in a CI run launched that way."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
