"""The run folder (``checkpoint.out_dir``) as a start writes it: checked before anything is
written (a fresh launch never replaces a run by mistake), locked while the run trains in it,
its config.yaml and tokenizer/ written once everything has loaded, and what a failed fresh
start added removed again, so the same command can run again."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import IO, Any

import yaml

from reflectioncoder.config import RunConfig
from reflectioncoder.errors import UserError, require_writable_output
from reflectioncoder.train import reporters

log = logging.getLogger("reflectioncoder.train")

# What makes a folder hold a run: a fresh launch into it is refused (--resume or --overwrite).
# metrics.jsonl counts once it holds a row: a start that stopped before its first step was
# logged (an error in the first forward, an out-of-memory, a kill) left only its start files.
RUN_MARKERS = ("checkpoints", "final", "metrics.jsonl")
LOCK_FILE = ".lock"  # held by the run training in the folder (lock_run_folder)


class RunFolderError(UserError):
    """A fresh run was launched into a folder that holds a run."""

    same_on_every_rank = True  # every rank checks the folder: one line a node (cli)


def run_markers(out_dir: str | Path) -> list[str]:
    """What in ``out_dir`` is a run's work (RUN_MARKERS): its checkpoints (a torn save too),
    its final model, a metrics.jsonl with a row. None: nothing a fresh start would replace."""
    out_dir = Path(out_dir)
    return [m for m in RUN_MARKERS if _holds_work(out_dir / m)]


def _holds_work(path: Path) -> bool:
    if path.name != "metrics.jsonl" or not path.is_file():
        return path.exists()
    with path.open("rb") as file:  # any byte but blanks: a row, even a torn one, is kept
        while chunk := file.read(1 << 16):
            if chunk.strip():
                return True
    return False


def check_run_folder(out_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse a fresh launch into ``out_dir`` when it holds a run (``run_markers``), and a
    folder that cannot be written, touching nothing: found at start, not after the model has
    loaded. A run that never logged a step and saved nothing is started again."""
    out_dir = require_writable_output(out_dir, "checkpoint.out_dir", folder=True)
    if not is_run_config(out_dir / "config.yaml"):
        raise RunFolderError(
            "holds a config.yaml that is not a reflectioncoder run's (another project's folder?): "
            "a run would replace it; choose another folder",
            file=out_dir,
            field="checkpoint.out_dir",
        )
    found = run_markers(out_dir)
    holder = held_by(out_dir) if found else None
    if holder and not (resume or overwrite):  # neither flag would do: it is training now
        raise RunFolderError(
            f"{holder} is training in this folder now; wait for it to end or choose another folder",
            file=out_dir,
            field="checkpoint.out_dir",
        )
    if found and not (resume or overwrite):
        raise RunFolderError(
            f"{out_dir} already holds a run ({', '.join(found)}); {_what_to_pass()}",
            field="checkpoint.out_dir",
        )


def _what_to_pass() -> str:
    """What a launch refused for the run in its folder is told to add. torchrun's restart of
    a command (--max-restarts) finds the run its first attempt trained: --overwrite there
    would delete it (and is refused, train.cli), --resume continues it."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart != "0":
        return (f"this is torchrun's restart {restart} of the launch (--max-restarts): put "
                "--resume in the command, which also starts a fresh run")  # fmt: skip
    return "pass --resume to continue it or --overwrite to start over (deletes it)"


# The sections every run's config.yaml holds (RunConfig.to_dict), older runs' included
RUN_SECTIONS = frozenset({"model", "data", "train", "checkpoint"})


def is_run_config(path: Path) -> bool:
    """Whether ``path`` is absent or a run's config.yaml (RunConfig.save): a run folder's is
    rewritten by the next start, and a folder given as checkpoint.out_dir may be another
    project's, whose own config.yaml would be lost."""
    if not path.exists():
        return True
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and RUN_SECTIONS <= set(config)


def held_by(out_dir: str | Path) -> str | None:
    """Who trains in ``out_dir`` now (OUT/.lock's text, ``pid N on HOST``), read from the
    kernel's table of held locks (Linux's /proc/locks) without taking the lock, which a probe
    would take from a launch starting then; None when no one holds it, or no table is read."""
    lock = Path(out_dir) / LOCK_FILE
    try:
        stat = lock.stat()
        with open("/proc/locks", encoding="ascii") as table:
            held = table.read().split()
    except OSError:
        return None
    where = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    if where not in held:
        return None
    try:
        return lock.read_text(encoding="utf-8").strip() or "another process"
    except (OSError, UnicodeDecodeError):
        return "another process"


def lock_run_folder(out_dir: str | Path, announce: bool = True) -> IO[str]:
    """Hold OUT/.lock while the run lives (the OS lets go when the process ends): a second
    launch into the folder, a job submitted twice, stops here instead of interleaving its
    metrics and checkpoints with this run's. Returns the open lock file; close it to let go.
    ``announce``: write this process into it now (else ``announce_holder`` does, once the run
    writes its folder: a start that fails changes no file of an existing run)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = (out_dir / LOCK_FILE).open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(
            f"{holder} is training in this folder; wait for it to end or choose another folder",
            file=out_dir,
            field="checkpoint.out_dir",
        ) from None
    except OSError as err:  # no locks on this filesystem (Lustre without -o flock: ENOSYS)
        log.warning(
            "%s: not locked (the filesystem refuses flock: %s): a second launch into this "
            "folder will not be stopped",
            out_dir,
            err.strerror or err,
        )
    if announce:
        announce_holder(handle)
    return handle


def announce_holder(handle: IO[str]) -> None:
    """Write this process into the held lock file (what a second launch is told)."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()


def release_lock(handle: IO[str], made: bool) -> None:
    """Let go of OUT/.lock. One this launch ``made`` and never wrote into (a ``--resume`` that
    failed before the run was named in it) is removed: the folder is left as it was."""
    if made and os.fstat(handle.fileno()).st_size == 0:
        Path(handle.name).unlink(missing_ok=True)  # while still held: no launch took it meanwhile
    handle.close()


def clear_run_folder(out_dir: str | Path) -> list[str]:
    """--overwrite: remove the previous run's checkpoints, final model, metrics and trackers'
    folders, and say so; the names removed. Only from a folder that held a run (its
    config.yaml or a run marker): ``--overwrite`` into a project's own folder (``out_dir=.``)
    removed that project's wandb/, mlruns/ and tensorboard/."""
    out_dir = Path(out_dir)
    ours = (out_dir / "config.yaml").is_file() and is_run_config(out_dir / "config.yaml")
    if not (ours or run_markers(out_dir)):
        return []
    removed = []
    for name in (*RUN_MARKERS, "tensorboard", "wandb", "mlruns", "loss.png"):
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        log.info("--overwrite: removed the earlier run's %s from %s", ", ".join(removed), out_dir)
    return removed


def _entries(folder: Path) -> set[str] | None:
    """The names in ``folder`` (None when it does not exist)."""
    return set(os.listdir(folder)) if folder.is_dir() else None


# What a start writes into OUT before its first step (the trackers' folders included).
_START_FILES = frozenset(
    {"config.yaml", "tokenizer", "metrics.jsonl", "tensorboard", "wandb", "mlruns"}
    | {reporters.RUN_IDS, LOCK_FILE}
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
    """OUT for one launch: its checks, its lock (``lock_run_folder``) and what a
    fresh start writes there."""

    def __init__(self, out_dir: Path, resume: bool, overwrite: bool) -> None:
        """Refuse a folder this launch may not write (before anything is written)."""
        check_run_folder(out_dir, resume, overwrite)
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
        if (self.path / LOCK_FILE).is_file():
            self.lock = lock_run_folder(self.path, announce=False)

    def write(self, cfg: RunConfig, original_tokenizer: Any, resuming: bool) -> None:
        """Rank 0: OUT/config.yaml and OUT/tokenizer (the original one), once everything has
        loaded; a resumed run's config once its checkpoint has loaded (resume.py)."""
        self._undoable = not (resuming or self.overwrite)
        if self._undoable:  # what OUT held before (None: no folder), for undo_start
            self._before = _entries(self.path)
        if self.lock is None:
            self._lock_made = not (self.path / LOCK_FILE).exists()
            self.lock = lock_run_folder(self.path, announce=False)
            # a launch that began with this one may have written its run meanwhile
            check_run_folder(self.path, self.resumed, self.overwrite)
        if not resuming:  # a resumed run's once its checkpoint has loaded
            announce_holder(self.lock)  # held since the start, unchanged until now
        if self.overwrite:
            clear_run_folder(self.path)
        if not resuming:
            cfg.save(self.path / "config.yaml")
            saved = self.path / "tokenizer"
            shutil.rmtree(saved, ignore_errors=True)
            original_tokenizer.save_pretrained(str(saved))

    def announce(self) -> None:
        """Name this process in the held lock file (a resumed run's, once its checkpoint has
        loaded: a resume refused in its checks leaves the file as it was)."""
        announce_holder(self.lock)

    def undo_start(self) -> None:
        """A start that failed once written: a fresh start's files removed, so the folder is
        as it was (instead of "a run" of an empty metrics.jsonl), and the lock released."""
        if self._undoable:
            _remove_added(self.path, self._before)
        self.release()

    def release(self) -> None:
        """Let go of OUT/.lock (removed if this launch made it)."""
        if self.lock is not None:
            release_lock(self.lock, self._lock_made)
