"""Red team, round 5: a ``kernel.core_pattern`` that sends dumps to a socket (``@path``, Linux
6.16+). RLIMIT_CORE 1 (round 4) stops the file and pipe patterns; for a socket the kernel
connects whatever the limit (measured by round 4: a shell sample's ``kill -SEGV $$`` at both
levels reached a listener), and nothing a process keeps across ``exec`` turns dumps off (a
non-dumpable flag is reset by every exec; keeping the real and effective gid apart would make
every exec secure-mode, which drops ``TMPDIR`` and breaks compilers). Not closable from the
sandbox: what the host sends its dumps to is the host's choice. It is now named, at every
level, in what the result file lists as not guaranteed, read from the host at each scoring.
"""

from __future__ import annotations

import pytest

from reflectioncoder.eval import sandbox
from reflectioncoder.eval.sandbox import probe

LEVELS = ("bwrap(uid=per-run,host-uid=per-run)", "rlimits(run-uid,landlock)")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    ("pattern", "named"),
    [
        ("@/run/systemd/coredump.socket\n", True),
        ("|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h\n", False),  # RLIMIT_CORE 1
        ("core\n", False),
    ],
)
def test_a_socket_core_pattern_is_named(tmp_path, monkeypatch, level, pattern, named):
    fake = tmp_path / "core_pattern"
    fake.write_text(pattern)
    monkeypatch.setattr(probe, "CORE_PATTERN", str(fake))
    gaps = " ".join(sandbox.not_guaranteed(level, python_only=False))
    assert ("crash dumps go to a socket" in gaps) is named, gaps
    if named:
        assert "@/run/systemd/coredump.socket" in gaps
