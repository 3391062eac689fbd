"""The lock and the latest check (.ci/drift.py): the lock parses, names what differs, and a failure
names the packages it involves."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def _drift():
    spec = importlib.util.spec_from_file_location("drift", ROOT / ".ci" / "drift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_pins_every_tested_package_exactly():
    pins = _drift().read_lock(LOCK)
    for name in ["torch", "triton", "transformers", "kernels", "tokenizers", "accelerate",
                 "deepspeed", "liger-kernel", "datasets", "pyarrow", "evalplus", "pytest",
                 "pytest-benchmark", "ruff"]:  # fmt: skip
        assert re.fullmatch(r"\d+(\.\w+)*", pins[name]), (name, pins.get(name))
    assert "+" not in pins["torch"], "a local label would refuse the CUDA build of that version"


def _made_from_the_lock() -> bool:
    """Whether `make env` made this interpreter's environment from LOCK: its stamp names the lock
    it was pinned by (empty for `make env LATEST=1`, absent in the user's own environment). The
    versions cannot tell: the newest allowed ones may equal the lock's for most packages."""
    stamp = Path(sys.prefix) / ".installed"
    pinned_by = stamp.read_text(encoding="utf-8").strip() if stamp.is_file() else ""
    return bool(pinned_by) and (ROOT / pinned_by).resolve() == LOCK.resolve()


def test_this_environment_is_the_locked_one_for_what_it_shares():
    if not _made_from_the_lock():
        pytest.skip("not the locked environment (make env LATEST=1, or the user's own)")
    drift = _drift()
    assert drift.differences(drift.read_lock(LOCK), drift.installed()) == []


def test_bad_lock_line_names_file_and_line(tmp_path):
    bad = tmp_path / "lock.txt"
    bad.write_text("# header\ntorch==2.13.0\ntransformers>=5\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"lock.txt:3: expected NAME==VERSION"):
        _drift().read_lock(bad)


def test_failure_names_the_packages_in_its_traceback():
    drift = _drift()
    lock = {"transformers": "5.24.0", "kernels": "0.18.0", "numpy": "2.3.0", "rich": "14.0"}
    now = {"transformers": "5.25.0", "kernels": "0.19.1", "numpy": "2.3.0", "rich": "14.1"}
    changed = drift.differences(lock, now)
    assert changed == ["kernels 0.18.0 -> 0.19.1", "rich 14.0 -> 14.1",
                       "transformers 5.24.0 -> 5.25.0"]  # fmt: skip
    output = (
        '  File ".venv-latest/lib/python3.11/site-packages/transformers/integrations/'
        'hub_kernels.py", line 104, in <module>\n    from kernels import (\n'
        "ImportError: cannot import name 'CUDAProperties' from 'kernels'\n"
    )
    assert drift.suspects(output, changed) == [changed[0], changed[2]]


def test_installed_reads_site_packages_not_what_setuptools_vendors():
    """torch's cpp_extension imports setuptools, which puts its vendored packages' metadata on
    sys.path: the lock check then saw a dozen packages "not locked" after such a test ran."""
    script = str(ROOT / ".ci" / "drift.py")
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('drift', {script!r})\n"
        "drift = importlib.util.module_from_spec(spec); spec.loader.exec_module(drift)\n"
        "before = drift.installed()\n"
        "import setuptools\n"
        "print(json.dumps([before, drift.installed()]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if "No module named 'setuptools'" in run.stderr:
        pytest.skip("setuptools not installed")
    assert run.returncode == 0, run.stderr[-2000:]
    before, after = json.loads(run.stdout)
    assert after == before
