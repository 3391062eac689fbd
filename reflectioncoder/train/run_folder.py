"""The run folder (``checkpoint.out_dir``) as a start writes it: checked before anything is
written (a fresh launch never replaces a run by mistake), locked while the run trains in it,
its config.yaml and tokenizer/ written once everything has loaded, and what a failed fresh
start added removed again, so the same command can run again."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import IO, Any

from reflectioncoder.config import RunConfig
from reflectioncoder.train import checkpoint, reporters

log = logging.getLogger("reflectioncoder.train")


def _entries(folder: Path) -> set[str] | None:
    """The names in ``folder`` (None when it does not exist)."""
    return set(os.listdir(folder)) if folder.is_dir() else None


# What a start writes into OUT before its first step (the trackers' folders included).
_START_FILES = frozenset(
    {"config.yaml", "tokenizer", "metrics.jsonl", "tensorboard", "wandb", "mlruns"}
    | {reporters.RUN_IDS, checkpoint.LOCK_FILE}
)


def _remove_added(folder: Path, before: set[str] | None) -> None:
    """Remove what a failed fresh start added to ``folder`` (``before``: ``_entries`` then):
    only the run's own names, never another's file that appeared meanwhile; the folder itself
    when the launch made it and nothing else is left."""
    for name in (set(_entries(folder) or ()) - set(before or ())) & _START_FILES:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)  # OUT/.lock too, while this launch still holds it
    if before is None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _note_restart(out_dir: Path) -> None:
    """Say so when a fresh launch starts again a run that stopped before its first step."""
    if (out_dir / "config.yaml").is_file():  # and no run_markers: check_run_folder passed
        log.warning(
            "%s: its run stopped before its first step (no checkpoint, no metrics row): "
            "starting it again (config.yaml and tokenizer/ are rewritten)",
            out_dir,
        )


class RunFolder:
    """OUT for one launch: its checks, its lock (``checkpoint.lock_run_folder``) and what a
    fresh start writes there."""

    def __init__(self, out_dir: Path, resume: bool, overwrite: bool) -> None:
        """Refuse a folder this launch may not write (before anything is written)."""
        checkpoint.check_run_folder(out_dir, resume, overwrite)
        self.path = out_dir
        self.resumed = resume
        self.overwrite = overwrite and not resume
        self.lock: IO[str] | None = None  # OUT/.lock: taken now if a run made it, else on write
        self._lock_made = False  # whether this launch made OUT/.lock (write)
        self._undoable = False  # a fresh start (not resumed, not overwriting) wrote OUT
        self._before: set[str] | None = set()  # OUT's names before that start wrote there

    def open(self, is_main: bool) -> None:
        """Rank 0, once the process group is up: say so when a run that stopped before its
        first step starts again, and take the lock a run made."""
        if not is_main:
            return
        if not (self.resumed or self.overwrite):  # check_run_folder let it start
            _note_restart(self.path)
        if (self.path / checkpoint.LOCK_FILE).is_file():
            self.lock = checkpoint.lock_run_folder(self.path, announce=False)

    def write(self, cfg: RunConfig, original_tokenizer: Any, resuming: bool) -> None:
        """Rank 0: OUT/config.yaml and OUT/tokenizer (the original one), once everything has
        loaded; a resumed run's config once its checkpoint has loaded (resume.py)."""
        self._undoable = not (resuming or self.overwrite)
        if self._undoable:  # what OUT held before (None: no folder), for undo_start
            self._before = _entries(self.path)
        if self.lock is None:
            self._lock_made = not (self.path / checkpoint.LOCK_FILE).exists()
            self.lock = checkpoint.lock_run_folder(self.path, announce=False)
            # a launch that began with this one may have written its run meanwhile
            checkpoint.check_run_folder(self.path, self.resumed, self.overwrite)
        if not resuming:  # a resumed run's once its checkpoint has loaded
            checkpoint.announce_holder(self.lock)  # held since the start, unchanged until now
        if self.overwrite:
            checkpoint.clear_run_folder(self.path)
        if not resuming:
            cfg.save(self.path / "config.yaml")
            saved = self.path / "tokenizer"
            shutil.rmtree(saved, ignore_errors=True)
            original_tokenizer.save_pretrained(str(saved))

    def undo_start(self) -> None:
        """A start that failed once written: a fresh start's files removed, so the folder is
        as it was (instead of "a run" of an empty metrics.jsonl), and the lock released."""
        if self._undoable:
            _remove_added(self.path, self._before)
        self.release()

    def release(self) -> None:
        """Let go of OUT/.lock (removed if this launch made it)."""
        if self.lock is not None:
            checkpoint.release_lock(self.lock, self._lock_made)
