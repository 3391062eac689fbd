"""Names of ours against names of the ecosystem: run from the repository root (the first entry of
sys.path for `python -m`, `python -c`, pytest, a REPL or a notebook), our top-level `kernels/`
folder must neither hide Hugging Face's `kernels` package (transformers >= 5.25 imports it) nor
stand in for it when it is not installed; no other name of ours may collide."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hf_kernels_installed() -> bool:
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _run(code: str, cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )


def _site_without_kernels(tmp_path: Path) -> Path:
    """A copy of site-packages as links, less Hugging Face's `kernels` (a machine without it)."""
    view = tmp_path / "site"
    view.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name == "kernels" or entry.name.startswith("kernels-"):
            continue
        (view / entry.name).symlink_to(entry)
    return view


@pytest.mark.skipif(not _hf_kernels_installed(), reason="Hugging Face's `kernels` not installed")
@pytest.mark.parametrize("folder", ["root", "elsewhere"])
def test_installed_kernels_package_wins_from_any_folder(folder, tmp_path):
    code = (
        "import transformers.modeling_utils, kernels\n"
        "from kernels import CUDAProperties\n"
        "from transformers.utils import is_kernels_available\n"
        "import reflectioncoder.kernels as ours\n"
        "print(kernels.__file__, kernels.__version__, is_kernels_available(), ours.__file__)\n"
    )
    run = _run(code, ROOT if folder == "root" else tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    theirs, version, available, ours = run.stdout.split()
    assert "site-packages" in theirs and not theirs.startswith(str(ROOT / "kernels"))
    assert version == importlib.metadata.version("kernels") and available == "True"
    import reflectioncoder.kernels

    assert ours == reflectioncoder.kernels.__file__


@pytest.mark.skipif(not _hf_kernels_installed(), reason="Hugging Face's `kernels` not installed")
def test_installed_kernels_submodules_resolve_to_the_package():
    code = "import kernels.benchmark, kernels; print(kernels.benchmark.__file__)"
    run = _run(code, ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "site-packages" in run.stdout and str(ROOT / "kernels") not in run.stdout


def test_without_the_package_nothing_of_ours_is_taken_for_it(tmp_path):
    view = _site_without_kernels(tmp_path)
    code = (
        f"import site; site.addsitedir({str(view)!r})\n"
        "import importlib, transformers.modeling_utils, kernels\n"
        "from transformers.utils import is_kernels_available\n"
        "assert not is_kernels_available(), 'our folder taken for the package'\n"
        "assert getattr(kernels, '__file__', None) is None, kernels.__file__\n"
        "assert not hasattr(kernels, 'fused_linear_reflection_loss')\n"
        "for name in ('kernels.fused_loss', 'kernels.varlen_attention'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError(name + ' imported from our folder')\n"
        "import reflectioncoder.kernels as ours\n"
        "assert callable(ours.fused_linear_reflection_loss)\n"
        "print('ok')\n"
    )
    run = _run(code, ROOT, "-S")  # -S: site-packages only through the view
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "ok"


def _root_names() -> set[str]:
    """Top-level names importable from the repository root: packages and modules."""
    names = {p.stem for p in ROOT.glob("*.py")}
    names |= {p.parent.name for p in ROOT.glob("*/__init__.py")}
    return names


def test_no_other_root_name_collides_with_installed_or_standard_modules():
    installed = set(importlib.metadata.packages_distributions())
    ours = {"kernels", "reflectioncoder"}  # ours as installed; `kernels` hands over (above)
    colliding = (_root_names() & (installed | set(sys.stdlib_module_names))) - ours
    assert not colliding, f"repository-root names shadow installed/standard modules: {colliding}"


def test_folders_run_as_scripts_shadow_nothing():
    """A file run by path puts its folder first on sys.path: none of our folders holding such a
    file may hold a module named like a standard or installed one."""
    taken = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)
    for script in ROOT.glob("reflectioncoder/**/*.py"):
        text = script.read_text(encoding="utf-8")
        if '__name__ == "__main__"' not in text:
            continue
        clash = {p.stem for p in script.parent.glob("*.py")} & taken
        # Files started only as `python -m reflectioncoder.…` or `python -I` (the sandbox's
        # harness) never put their folder on sys.path.
        if clash and script.name not in {"runner.py"}:
            pytest.fail(f"{script.relative_to(ROOT)} as a script would shadow {sorted(clash)}")
