"""Red team, round 9: the fallback's sweep of a finished run's leftovers, run as root.

Without Landlock a run's uid may write in world-writable folders, and when the run ends root
removes what that uid left there (``runuser.remove_left_files``). The sweep walked by path:
it listed a folder, checked each entry's owner, then removed ``folder/name`` by its path. A
sibling run still going owns the world-writable folder the sweep is in, so between the
listing and the removal it can put a link in the folder's place: root then followed the link
and removed a root file of the same name, or a whole root folder, anywhere on the machine.
Now the sweep holds each folder open (never through a link) and removes in it by descriptor:
only what it checked.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reflectioncoder.eval.sandbox import runuser

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sweep is root's (it chowns)")

RUN = runuser.RUN_UIDS.start + 7  # the finished run, whose leftovers are swept
SIBLING = runuser.RUN_UIDS.start + 8  # a run still going, which owns the folder swept


def _owned(path: Path, uid: int, mode: int) -> Path:
    os.chown(path, uid, uid)
    path.chmod(mode)
    return path


@pytest.fixture
def planted(tmp_path):
    """A world-writable root (sticky, as /tmp); in it the sibling's folder, and in that its
    world-writable folder holding the finished run's file and folder; elsewhere root's file
    and folder of the same names. (In the sticky root itself the kernel would refuse to
    follow the sibling's link for root: ``fs.protected_symlinks``; not in the sibling's.)"""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    sub = shared / "sibling" / "sub"
    sub.mkdir(parents=True)
    _owned(sub.parent, SIBLING, 0o777)
    _owned(sub, SIBLING, 0o777)
    (sub / "victim").write_text("left by the run")
    _owned(sub / "victim", RUN, 0o644)
    (sub / "tree").mkdir()
    (sub / "tree" / "f").write_text("left by the run")
    _owned(sub / "tree" / "f", RUN, 0o644)
    _owned(sub / "tree", RUN, 0o755)
    protected = tmp_path / "protected"
    (protected / "tree").mkdir(parents=True)
    (protected / "victim").write_text("root's")
    (protected / "tree" / "keep").write_text("root's")
    return shared, sub, protected


def _swap_after_checking(monkeypatch, sub: Path, target: Path) -> list[bool]:
    """What the sibling does at the worst moment: once the sweep has checked who owns an
    entry of ``sub``, it moves the folder aside and puts a link to ``target`` in its place."""
    real_scandir, swapped = os.scandir, []

    def lists_sub(arg) -> bool:
        if isinstance(arg, int):
            return os.readlink(f"/proc/self/fd/{arg}") == str(sub)
        return not swapped and os.path.realpath(arg) == str(sub)

    def swap() -> None:
        if not swapped:
            os.rename(sub, sub.with_name("sub.moved"))
            os.symlink(target, sub)
            os.lchown(sub, SIBLING, SIBLING)
            swapped.append(True)

    def scandir(arg="."):
        entries = list(real_scandir(arg))
        return _Listing(_Checked(e, swap) for e in entries) if lists_sub(arg) else _Listing(entries)

    monkeypatch.setattr(os, "scandir", scandir)
    return swapped


class _Checked:
    """A listed entry whose owner, once read, is no longer what lies at its path."""

    def __init__(self, entry, then) -> None:
        self.entry, self.then = entry, then
        self.name, self.path = entry.name, entry.path

    def stat(self, *, follow_symlinks=True):
        info = self.entry.stat(follow_symlinks=follow_symlinks)
        self.then()
        return info

    def __getattr__(self, name):
        return getattr(self.entry, name)


class _Listing(list):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_link_swapped_in_mid_sweep_removes_nothing_of_roots(planted, monkeypatch):
    shared, sub, protected = planted
    swapped = _swap_after_checking(monkeypatch, sub, protected)
    runuser.remove_left_files(RUN, roots=[str(shared)])
    assert swapped, "the sweep never listed the sibling's folder"
    assert (protected / "victim").read_text() == "root's"  # before: removed through the link
    assert (protected / "tree" / "keep").read_text() == "root's"  # before: the whole folder
    moved = sub.with_name("sub.moved")
    assert not (moved / "victim").exists() and not (moved / "tree").exists()  # the run's: gone


def test_the_sweep_removes_only_the_runs_own(planted):
    shared, sub, protected = planted
    (sub / "siblings").write_text("the sibling's")
    _owned(sub / "siblings", SIBLING, 0o644)
    os.symlink(protected / "victim", sub / "link")
    os.lchown(sub / "link", RUN, RUN)
    runuser.remove_left_files(RUN, roots=[str(shared)])
    assert sorted(os.listdir(sub)) == ["siblings"]
    assert (protected / "victim").read_text() == "root's"
