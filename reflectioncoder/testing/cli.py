"""Command lines for tests that run ``reflectioncoder train`` as a user types it."""

from __future__ import annotations

from collections.abc import Mapping

ONE_STEP = {"train.max_steps": 1, "logging.report_to": "[none]"}  # the quickest real run


def train_argv(sets: Mapping[str, object], *flags: str, preset: str = "tiny") -> list[str]:
    """``train --preset PRESET FLAGS --set key=value ...``, one ``--set`` per item of ``sets``."""
    argv = ["train", "--preset", preset, *flags]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    return argv
