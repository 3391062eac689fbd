"""Red team, round 8: the Python installation's own folders held a credential every box could
read. Each box (of every language: they all bind Python's paths) bound each prefix whole, a
venv's and the base install's, where pip keeps its site configuration (``<venv>/pip.conf``,
whose ``index-url`` may carry a private index's token) and a user anything else: a Python
sample printed a planted ``pip.conf`` under bubblewrap. Now only what the interpreter reads
of a prefix is bound (``bin``, ``lib``, ``lib64``, a venv's ``pyvenv.cfg``; the fallback's
Landlock rules allow the same). Files are planted with unique names and removed afterwards.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from test_sandbox import _levels
from test_sandbox_secrets import READER

from reflectioncoder.eval import sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the doors are root's: run as root")


@pytest.fixture(params=_levels())
def level(request, monkeypatch) -> str:
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", request.param)
    if request.param == "rlimits" and not sandbox.isolation().landlock:
        pytest.skip("without Landlock the fallback reads what the run's uid may (documented)")
    return request.param


@pytest.fixture
def planted():
    """A secret in a new file at the top of each Python prefix (where pip.conf would be)."""
    secret = f"rc-secret-{uuid.uuid4().hex}"
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    paths = [Path(p) / f".rc-test-pip-{uuid.uuid4().hex[:8]}.conf" for p in sorted(prefixes)]
    for path in paths:
        path.write_text(f"[global]\nindex-url = https://user:{secret}@pypi.example/simple\n")
        path.chmod(0o644)  # readable by anyone who can reach it: only the box may stop a read
    try:
        yield secret, [str(p) for p in paths]
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def test_no_python_prefix_is_bound_whole(level, planted):
    secret, paths = planted
    res = sandbox.run_python(READER, stdin=json.dumps(paths), timeout_s=60)
    assert res.exit_code == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    assert secret not in res.stdout, (level, got)
    for path in paths:
        assert got[path] in ("FileNotFoundError", "PermissionError"), (level, path, got[path])
