"""A DeepSpeed op build killed mid-way (a run stopped in its first minutes) leaves torch's
``lock`` file in the op's build folder, and every later run's ranks waited on it forever without
a word: tests/test_distributed.py's ZeRO-2 case ran past 400 s twice so (py-spy: both ranks in
``FileBaton.wait`` under ``deepspeed.init_distributed``). A stale lock is removed, saying so; a
lock a live build works under, or a folder changed lately, is waited on."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time

from reflectioncoder.train import build_locks


def _op_folder(root, name="deepspeed_shm_comm", age_s=0.0):
    folder = root / name
    folder.mkdir(parents=True)
    for file in ("build.ninja", "shm.o", "lock"):
        (folder / file).write_text("")
    then = time.time() - age_s
    for path in (*folder.iterdir(), folder):
        os.utime(path, (then, then))
    return folder


def _named(pid: int, name: str) -> None:
    """Wait for the child's exec (Popen may return before it)."""
    for _ in range(500):
        with open(f"/proc/{pid}/comm") as comm:
            if comm.read().strip() == name:
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never became {name}")


def test_a_lock_no_build_holds_is_removed_with_a_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = _op_folder(tmp_path, age_s=build_locks.STALE_S + 60)
    shell = subprocess.Popen(["sleep", "30"], cwd=folder)  # a shell left there is no build
    _named(shell.pid, "sleep")
    try:
        with caplog.at_level(logging.WARNING, logger="reflectioncoder.train"):
            build_locks.clear_stale_build_locks()
    finally:
        shell.kill()
        shell.wait()
    assert not (folder / "lock").exists() and (folder / "shm.o").exists()
    assert f"removed {folder / 'lock'}" in caplog.text


def test_a_live_build_keeps_its_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = _op_folder(tmp_path, age_s=build_locks.STALE_S + 60)
    shutil.copy(shutil.which("sleep"), tmp_path / "ninja")
    ninja = subprocess.Popen([tmp_path / "ninja", "30"], cwd=folder)  # as torch runs it there
    _named(ninja.pid, "ninja")
    try:
        build_locks.clear_stale_build_locks()  # returns: torch waits for that build
    finally:
        ninja.kill()
        ninja.wait()
    assert (folder / "lock").exists()


def test_a_lock_in_a_folder_changed_lately_is_waited_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = _op_folder(tmp_path, age_s=5)
    slept = []

    def sleep(seconds):  # the build ends (on another machine sharing the folder) meanwhile
        slept.append(seconds)
        (folder / "lock").unlink()

    monkeypatch.setattr(build_locks.time, "sleep", sleep)
    with caplog.at_level(logging.WARNING, logger="reflectioncoder.train"):
        build_locks.clear_stale_build_locks(poll_s=0.5)
    assert slept == [0.5] and f"waiting on {folder / 'lock'}" in caplog.text
