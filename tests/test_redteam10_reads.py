"""Red team, round 10: the fallback's capability that read every file.

Started by root, the fallback drops each run to a uid of its own; where its interpreter or
toolchain lies under a folder only root may search (here pyenv's Python and rustup's Rust under
a 0700 ``/root``, and the Scala helper in root's cache), the run kept ``CAP_DAC_READ_SEARCH``.
Without Landlock nothing else bounded it: a Python, Rust or Scala sample read a 0600 file of
root's and ``/etc/shadow`` and printed them into its output, which a MultiPL-E result keeps;
Rust also at compile time (``include_str!``). Now such a run gets a supplementary group of the
runs' own instead (``searchgrant``: search alone on the folders on the way, by an ACL entry),
and no capability: the toolchains run as before, root's own files stay root's.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest
import test_redteam2_landlock
import test_redteam4_ipc

from reflectioncoder.eval import multiple
from reflectioncoder.eval.multiple_languages import toolchain_env
from reflectioncoder.eval.sandbox import bwrap, runuser, searchgrant

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock
READERS = test_redteam2_landlock.READERS  # each language's own file API


@pytest.fixture
def roots_secret():
    """A file only root may read, in root's home (0600), and its contents."""
    home = Path(os.path.expanduser("~root"))
    value = f"rc-secret-{uuid.uuid4().hex}"
    path = home / f"rc-redteam10-{uuid.uuid4().hex}"
    path.write_text(value + "\n")
    path.chmod(0o600)
    try:
        yield value, str(path)
    finally:
        path.unlink()


def _under_a_closed_home(language: str) -> bool:
    """Whether ``language``'s toolchain (Python: our interpreter) lies where no other user can
    reach it (the runs that kept the capability); skips where no ACL can be set (a file system
    without them: the capability is kept there, as before)."""
    paths = bwrap.python_paths() if language == "python" else toolchain_env(language)[1]
    if runuser.needs_read_all(paths) and not searchgrant.grant_search(paths):
        pytest.skip("no POSIX ACLs where the toolchain lies: the capability is kept")
    return runuser.needs_read_all(paths)


def _read(language: str, path: str) -> str:
    problem = multiple.toolchain_problem(language)
    if problem:
        pytest.skip(problem)
    res = multiple.run_program(language, READERS[language].replace("{f}", path))
    return res.stdout + res.stderr


def test_python_under_a_closed_home_reads_none_of_roots_files(level, roots_secret):
    if not _under_a_closed_home("python"):
        pytest.skip("this Python is not under a folder only root may search")
    value, path = roots_secret
    for target in (path, "/etc/shadow"):
        out = _read("python", target)
        assert "probed" in out and value not in out and "root:" not in out, (level, out)


@pytest.mark.slow
@pytest.mark.parametrize("language", ["rs", "scala"])
def test_toolchains_under_a_closed_home_read_none_of_roots_files(level, roots_secret, language):
    if not _under_a_closed_home(language):
        pytest.skip(f"{language}'s toolchain is not under a folder only root may search")
    value, path = roots_secret
    for target in (path, "/etc/shadow"):
        out = _read(language, target)
        assert "probed" in out and value not in out and "root:" not in out, (level, out)
    if language == "rs":  # the compiler too
        out = _read("rs", test_redteam2_landlock.COMPILE_TIME["rs"].replace("{f}", path))
        assert value not in out, (level, out)


def _can_read_as_a_run(path: Path, group: int | None) -> bool:
    """Whether a process of a fresh uid (with ``group``, no capability) opens ``path``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([] if group is None else [group])
            os.setresgid(1_999_999_999, 1_999_999_999, 1_999_999_999)
            os.setresuid(1_999_999_999, 1_999_999_999, 1_999_999_999)
            path.read_bytes()
            os._exit(0)
        except BaseException:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def test_the_grant_gives_search_alone(tmp_path):
    closed = tmp_path / "home"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    tool = closed / "tool"
    tool.write_text("a toolchain file")
    tool.chmod(0o644)
    secret = closed / "secret"
    secret.write_text("root's")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    assert not _can_read_as_a_run(tool, searchgrant.RUNS_GID)
    if not searchgrant.grant_search([str(tool)]):
        pytest.skip("no POSIX ACLs on this file system")
    assert _can_read_as_a_run(tool, searchgrant.RUNS_GID)
    assert not _can_read_as_a_run(tool, None)  # the group's grant, not anyone's
    assert not _can_read_as_a_run(secret, searchgrant.RUNS_GID)
    assert stat.S_IMODE(closed.stat().st_mode) == 0o710  # search, no listing: the mask
    assert searchgrant.grant_search([str(tool)])  # again: nothing more to add
    closed.chmod(0o700)  # a chmod since (pytest's of its base folder) sets the mask from it
    assert not _can_read_as_a_run(tool, searchgrant.RUNS_GID)
    assert searchgrant.grant_search([str(tool)]) and _can_read_as_a_run(tool, searchgrant.RUNS_GID)
    assert not searchgrant.grant_search([str(secret)])  # not readable by others: no grant
