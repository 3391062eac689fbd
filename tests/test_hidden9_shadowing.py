"""Issue 18 item 1 through the doors tests/test_shadowing.py leaves out: a REPL reading its
input in the repository root, the root exported on PYTHONPATH and Python started elsewhere,
`python -m pytest` in the root collecting a user's test, our package imported before theirs,
and Hugging Face's own `kernels` command run in the root. In each, `kernels` is the installed
package and `reflectioncoder.kernels` is ours."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

try:
    importlib.metadata.version("kernels")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("Hugging Face's `kernels` not installed", allow_module_level=True)

CHECK = (
    "import reflectioncoder.kernels as ours\n"
    "import transformers.modeling_utils\n"
    "import kernels\n"
    "from kernels import CUDAProperties, get_kernel\n"
    "from transformers.utils import is_kernels_available\n"
    "assert 'site-packages' in kernels.__file__, kernels.__file__\n"
    "assert is_kernels_available()\n"
    "assert callable(ours.fused_linear_reflection_loss)\n"
    "assert not hasattr(kernels, 'fused_linear_reflection_loss')\n"
    "print('RESOLVED', kernels.__file__)\n"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env | extra


def _ok(run: subprocess.CompletedProcess) -> None:
    assert run.returncode == 0, (run.stdout[-1500:], run.stderr[-2500:])
    assert "RESOLVED" in run.stdout and str(ROOT / "kernels") not in run.stdout


@pytest.mark.slow
def test_repl_reading_stdin_in_the_root():
    run = subprocess.run(
        [sys.executable, "-i", "-q"], input=CHECK, cwd=ROOT, env=_env(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    _ok(run)


@pytest.mark.slow
def test_root_on_pythonpath_from_another_folder(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, env=_env(PYTHONPATH=str(ROOT)),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    _ok(run)


@pytest.mark.slow
def test_python_m_pytest_in_the_root_collects_a_users_test(tmp_path):
    test = tmp_path / "test_user.py"
    body = "".join(f"    {line}\n" for line in CHECK.splitlines())
    test.write_text("def test_both():\n" + body, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(test)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    _ok(run)


def test_their_command_in_the_root():
    kernels = Path(sys.executable).with_name("kernels")
    if not kernels.is_file():
        pytest.skip("no `kernels` console script beside this interpreter")
    run = subprocess.run(
        [str(kernels), "--help"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage" in run.stdout.lower()
