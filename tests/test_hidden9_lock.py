"""Issue 18's installs that reproduce, as its "Done when" reads: the lock keeps within the honest
ranges setup.py gives (else `make env` cannot install it, or a user's own install gets versions
never tested), README names the lock's versions, `make env` installs from the lock and
`make env LATEST=1` from the ranges in an environment of its own, CI runs both, and the latest
check's failure names the package that broke it."""

from __future__ import annotations

import importlib.util
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import setuptools
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
# The packages issue 18 names, which README's table lists with the lock's versions.
NAMED = ["torch", "triton", "transformers", "kernels", "tokenizers", "accelerate", "deepspeed",
         "liger-kernel", "datasets", "pyarrow", "evalplus", "pytest", "pytest-benchmark",
         "ruff"]  # fmt: skip


def _drift():
    spec = importlib.util.spec_from_file_location("drift", ROOT / ".ci" / "drift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _setup_kwargs(monkeypatch) -> dict:
    """What setup.py passes to setup(), read by running it with setup() caught."""
    seen = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: seen.update(kw))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return seen


def test_lock_lies_within_setup_ranges(monkeypatch):
    """Every requirement of the package and of the extras the lock is made with (dev, bench)
    admits the locked version: a range moved past the lock (or the lock past a range) is a
    `make env` that fails to resolve."""
    kwargs = _setup_kwargs(monkeypatch)
    pins = _drift().read_lock(LOCK)
    reqs = list(kwargs["install_requires"])
    for extra in ("dev", "bench"):
        reqs += kwargs["extras_require"][extra]
    outside = []
    for text in reqs:
        req = Requirement(text)
        name = _canonical(req.name)
        assert name in pins, f"{text}: not in {LOCK.name}"
        if not req.specifier.contains(pins[name], prereleases=True):
            outside.append(f"{text} (lock: {pins[name]})")
    assert outside == [], f"locked versions outside setup.py's ranges: {outside}"


def test_readme_names_the_locked_versions():
    """README's tables of tested versions say what the lock installs."""
    pins = _drift().read_lock(LOCK)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Installs that reproduce", 1)[1].split("\n## ", 1)[0]
    shown = {}
    lines = section.splitlines()
    for k, line in enumerate(lines):
        if line.startswith("| ") and k + 2 < len(lines) and lines[k + 1].startswith("| ---"):
            heads = [c.strip() for c in line.strip("|").split("|")]
            values = [c.strip() for c in lines[k + 2].strip("|").split("|")]
            for head, value in zip(heads, values, strict=True):
                shown[_canonical(head.split()[0])] = value
    assert sorted(shown) == sorted(NAMED)
    wrong = {name: (shown[name], pins[name]) for name in NAMED if shown[name] != pins[name]}
    assert wrong == {}, f"README's version vs the lock's: {wrong}"


def _make_dry(*args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("needs make")
    run = subprocess.run(
        ["make", "-n", "-B", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_make_env_installs_the_lock_and_latest_the_ranges(tmp_path):
    locked = _make_dry("env", f"VENV={tmp_path / 'locked'}")
    pip_lines = [line for line in locked.splitlines() if "pip install" in line and "-e" in line]
    assert pip_lines and all("-c requirements/lock.txt" in line for line in pip_lines), locked
    latest = _make_dry("env", "LATEST=1")
    assert ".venv-latest" in latest and "lock.txt" not in latest.replace("echo", ""), latest
    assert "--upgrade" in latest


def test_ci_runs_the_locked_suite_then_the_latest_check():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "set -euo pipefail" in script or "set -e" in script
    body = [line.strip() for line in script.splitlines() if not line.strip().startswith("#")]
    assert body.index("make test") < body.index("make check-latest")
    assert body.index("make env") < body.index("make test")


def test_latest_check_failure_names_the_package_that_broke_it(tmp_path, monkeypatch, capsys):
    """The quick check end to end: a step fails with a traceback through transformers; its one
    line names transformers (newer than the lock), not the other changed packages."""
    drift = _drift()
    lock = tmp_path / "lock.txt"
    lock.write_text("transformers==5.24.0\nrich==14.0\nnumpy==2.3.0\n", encoding="utf-8")
    now = {"transformers": "5.25.0", "rich": "14.1", "numpy": "2.3.0"}
    monkeypatch.setattr(drift, "installed", lambda: now)
    boom = (
        'import sys; sys.stderr.write(\'  File "/x/site-packages/transformers/modeling_utils.py"'
        ", line 1\\nImportError: cannot import name X\\n'); sys.exit(1)"
    )
    step = ("import every module", [sys.executable, "-c", boom])
    monkeypatch.setattr(drift, "_steps", lambda work: [step])
    assert drift.check(lock) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("drift: FAILED at 'import every module'"), last
    assert "transformers 5.24.0 -> 5.25.0" in last and "rich" not in last, last
    monkeypatch.setattr(drift, "_steps", lambda work: [("ok", [sys.executable, "-c", "pass"])])
    assert drift.check(lock) == 0
    assert "pass the quick check" in capsys.readouterr().out


@pytest.mark.slow
def test_latest_checks_import_step_imports_every_module_of_ours():
    """Item 3's quick check imports every module: kernels/ (installed as
    reflectioncoder.kernels, so not under reflectioncoder/ on disk) included."""
    files = [p for p in (ROOT / "reflectioncoder").rglob("*.py") if "__pycache__" not in p.parts]
    expected = {
        ".".join(
            ("reflectioncoder", *p.relative_to(ROOT / "reflectioncoder").with_suffix("").parts)
        )
        for p in files
    }
    expected |= {f"reflectioncoder.kernels.{p.stem}" for p in (ROOT / "kernels").glob("*.py")}
    expected = {name.removesuffix(".__init__") for name in expected}
    expected.discard("reflectioncoder.__main__")  # runs the CLI when imported
    code = _drift().IMPORT_ALL + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    imported = set(json.loads(run.stdout.strip().splitlines()[-1]))
    assert sorted(expected - imported) == []
