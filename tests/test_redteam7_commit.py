"""Red team, round 7: strict overcommit (``vm.overcommit_memory`` 2). The machine's commit limit
(swap plus half the memory by default: 12 GiB on this 24 GiB machine) is then one count,
charged at each writable private or shared anonymous mapping whether or not a page is
touched; no cgroup bounds it, and a run's processes may each commit up to their address-space
limit: a C++ run 64 x 2 GiB, ten times this machine's whole limit, so every other process's
allocations (the scorer's, a sibling's compiler) fail while it runs. Not closable from the
sandbox (nothing per run counts commit; an address-space limit of the run's memory divided
among its processes breaks the JVM and V8, which reserve more). This machine runs mode 0 and
is shared, so the attack was not run here. Now the result file names the gap at every level
where the host runs strict overcommit, read at each scoring, as it does a core-dump socket.
"""

from __future__ import annotations

import pytest

from reflectioncoder.eval import sandbox
from reflectioncoder.eval.sandbox import probe

LEVELS = ("bwrap(uid=per-run,host-uid=per-run)", "rlimits(run-uid,landlock)", "rlimits(run-uid)")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(("mode", "named"), [("2\n", True), ("0\n", False), ("1\n", False)])
def test_strict_overcommit_is_named(tmp_path, monkeypatch, level, mode, named):
    fake = tmp_path / "overcommit_memory"
    fake.write_text(mode)
    monkeypatch.setattr(probe, "OVERCOMMIT", str(fake))
    for python_only in (True, False):
        gaps = " ".join(sandbox.not_guaranteed(level, python_only=python_only))
        assert ("strict overcommit (vm.overcommit_memory 2)" in gaps) is named, gaps


def test_the_record_names_it_too(tmp_path, monkeypatch):
    fake = tmp_path / "overcommit_memory"
    fake.write_text("2\n")
    monkeypatch.setattr(probe, "OVERCOMMIT", str(fake))
    assert any("strict overcommit" in gap for gap in sandbox.isolation().not_guaranteed(False))
