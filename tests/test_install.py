"""What users install: the wheel and the sdist hold every package and file of ours (the top-level
`kernels/` as `reflectioncoder.kernels`), nothing else (no tests, runs or leftovers of an earlier
build), and the sdist builds the same wheel. The slow test installs the wheel, then the checkout
in editable mode, into a fresh environment outside the repository, and imports ours and Hugging
Face's `kernels` from another folder and from the repository root."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
SDIST_EXTRAS = {"PKG-INFO", "setup.cfg", "setup.py", "README.md", "MANIFEST.in"}


def _clone(dest: Path) -> Path:
    """The files a fresh clone of this checkout has (tracked, and new ones git does not ignore)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _package_files(tree: Path) -> set[str]:
    """Every file of ours as installed: reflectioncoder/**, and kernels/** as its `kernels`."""
    files = set()
    for top, installed_as in (("reflectioncoder",) * 2, ("kernels", "reflectioncoder/kernels")):
        for path in (tree / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files.add(f"{installed_as}/{path.relative_to(tree / top).as_posix()}")
    return files


def _build(kind: str, source: Path, out: Path) -> Path:
    if importlib.util.find_spec("setuptools") is None:  # not imported: it adds its vendored
        pytest.skip("setuptools not installed")  # packages to sys.path for this process
    code = f"from setuptools import build_meta; print(build_meta.build_{kind}({str(out)!r}))"
    run = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return out / run.stdout.split()[-1]


def _wheel_files(wheel: Path) -> set[str]:
    names = zipfile.ZipFile(wheel).namelist()
    return {n for n in names if not n.split("/")[0].endswith(".dist-info")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A clone with a user's leftovers (a run folder, an earlier build's removed module), and the
    wheel and sdist built from it."""
    clone = _clone(tmp_path_factory.mktemp("clone"))
    (clone / "runs" / "demo").mkdir(parents=True)
    (clone / "runs" / "demo" / "notes.py").write_text("x = 1\n")
    stale = clone / "build" / "lib" / "reflectioncoder" / "removed_module.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("x = 1\n")
    out = tmp_path_factory.mktemp("dist")
    return clone, _build("wheel", clone, out), _build("sdist", clone, out)


def test_wheel_holds_every_file_of_ours_and_nothing_else(built):
    clone, wheel, _ = built
    expected = _package_files(clone)
    assert {"reflectioncoder/eval/sandbox/runner.py", "reflectioncoder/generate/__init__.py",
            "reflectioncoder/kernels/fused_loss.py"} <= expected  # fmt: skip
    files = _wheel_files(wheel)
    assert sorted(expected - files) == [], "missing from the wheel"
    assert sorted(files - expected) == [], "stray files in the wheel"


def test_sdist_holds_the_sources_only_and_builds_the_same_wheel(built, tmp_path):
    clone, wheel, sdist = built
    with tarfile.open(sdist) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
        tar.extractall(tmp_path, filter="data")
    sources = {n for n in names if n.split("/")[0] in {"reflectioncoder", "kernels"}}
    expected = {f"kernels/{f[len('reflectioncoder/kernels/') :]}" if "/kernels/" in f else f
                for f in _package_files(clone)}  # fmt: skip
    assert sorted(expected - sources) == [], "missing from the sdist"
    stray = names - expected - SDIST_EXTRAS
    assert {n for n in stray if not n.startswith("reflectioncoder.egg-info/")} == set()
    unpacked = tmp_path / sdist.name.removesuffix(".tar.gz")
    rebuilt = _build("wheel", unpacked, tmp_path / "rebuilt")
    assert _wheel_files(rebuilt) == _wheel_files(wheel)


def _setup_arguments() -> dict:
    """setup.py's python_requires and requirements (all extras), as setuptools reads them."""
    code = (
        "import json, setuptools\n"
        "from distutils.core import run_setup\n"
        "d = run_setup('setup.py', stop_after='init')\n"
        "print(json.dumps([d.python_requires, d.install_requires, d.extras_require]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    python, required, extras = json.loads(run.stdout)
    return {"python": python, "requirements": required + sum(extras.values(), [])}


def test_every_exact_pin_installs_on_the_oldest_python_we_allow():
    """python_requires said 3.10 while triton==3.9.0 needs 3.11: `pip install .` on 3.10 found
    no triton 3.9.0 and stopped. Each `==` pin installed here must admit the lowest Python."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    setup = _setup_arguments()
    lowest = min(s.version for s in SpecifierSet(setup["python"]) if s.operator == ">=")
    refused = []
    for requirement in map(Requirement, setup["requirements"]):
        if not any(s.operator == "==" for s in requirement.specifier):
            continue
        try:
            needs = importlib.metadata.metadata(requirement.name)["Requires-Python"]
        except importlib.metadata.PackageNotFoundError:
            continue  # an extra not installed here
        if needs and lowest not in SpecifierSet(needs):
            refused.append(f"{requirement} needs Python {needs}")
    assert refused == [], f"python_requires {setup['python']!r}, yet: {refused}"


def _python_in(venv: Path, code: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    run = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, f"in {cwd}: {run.stderr[-3000:]}"
    return run.stdout


IMPORT_BOTH = (
    "import reflectioncoder.kernels as ours, kernels as theirs\n"
    "assert callable(ours.fused_linear_reflection_loss)\n"
    "print(ours.__file__, theirs.__file__, theirs.__version__)\n"
)


def _site_without_our_install(tmp_path: Path) -> Path:
    """This environment's site-packages as links, less the editable install of ours: the
    checkout seen by a non-editable install (or none), whose package lies elsewhere."""
    import sysconfig

    view = tmp_path / "site"
    view.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().lstrip("_").startswith(("editable", "reflectioncoder")):
            (view / entry.name).symlink_to(entry)
    return view


def test_checkout_root_imports_ours_and_theirs_without_the_editable_install(tmp_path):
    """`python -m reflectioncoder.launch` in the checkout after `pip install .`: the package is
    the checkout's folder, which has no `kernels`; ours must import, theirs stay theirs."""
    view = _site_without_our_install(tmp_path)
    code = f"import site; site.addsitedir({str(view)!r})\n" + IMPORT_BOTH
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ours, theirs, _ = run.stdout.split()
    assert ours == str(ROOT / "kernels" / "__init__.py")
    assert theirs.startswith(str(view)), "Hugging Face's kernels shadowed by ours"


def _pip(venv: Path, *args: str) -> None:
    run = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(LOCK), *args],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.slow
def test_installed_wheel_then_editable_import_from_any_folder(built, tmp_path):
    """`pip install .` as a user does it (a fresh venv outside the repository, the lock's
    versions: minutes, from PyPI or pip's cache), then `pip install -e .` into the same one."""
    clone, wheel, _ = built
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = _python_in(venv, "import sysconfig; print(sysconfig.get_paths()['purelib'])", tmp_path)
    _pip(venv, str(wheel), "torch==2.13.0")
    for cwd, ours_in in ((tmp_path, site.strip()), (clone, str(clone))):
        ours, theirs, _ = _python_in(venv, IMPORT_BOTH, cwd).split()
        assert ours.startswith(ours_in), (cwd, ours)
        assert theirs.startswith(site.strip()), f"Hugging Face's kernels shadowed in {cwd}"
    helped = subprocess.run([str(venv / "bin" / "reflectioncoder"), "--help"], capture_output=True)
    assert helped.returncode == 0 and b"usage" in helped.stdout, helped.stderr[-2000:]
    _pip(venv, "-e", str(clone))
    for cwd in (tmp_path, clone):
        ours, theirs, _ = _python_in(venv, IMPORT_BOTH, cwd).split()
        assert ours == str(clone / "kernels" / "__init__.py") and theirs.startswith(site.strip())
