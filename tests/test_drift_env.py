"""`make demo` / `make test` with an environment that is no longer the lock's (its stamp is older
than requirements/lock.txt or setup.py) or whose Python is gone, and pip without a way to the
package index: one clear last line (no connection to the index, or pip's own error with the
index answering), and the older stamp kept so the next make tries again."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAMP_TEXT = "requirements/lock.txt\n"


@pytest.fixture(scope="module")
def venv_made_once(tmp_path_factory):
    """One `python3 -m venv` for the module (10-35 s on 2 cores: ensurepip), copied per test."""
    if shutil.which("make") is None or shutil.which("python3") is None:
        pytest.skip("needs make and python3")
    venv = tmp_path_factory.mktemp("venv") / ".venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    return venv


@pytest.fixture
def checkout(tmp_path, venv_made_once):
    """What `make env` reads, with an environment made from an earlier lock (its stamp older)."""
    for name in ["Makefile", "setup.py", "README.md", "requirements/lock.txt", ".ci/env_state.py"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(venv_made_once, tmp_path / ".venv", symlinks=True)
    stamp = tmp_path / ".venv" / ".installed"
    stamp.write_text(STAMP_TEXT, encoding="utf-8")
    os.utime(stamp, (1_000_000_000, 1_000_000_000))
    return tmp_path


def _make(checkout: Path, index: str, target: str = "demo") -> subprocess.CompletedProcess:
    """`make target` with pip pointed at `index` only (no configuration, find-links, retries)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index, PIP_RETRIES="0")
    env.update(PIP_DEFAULT_TIMEOUT="5", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run(
        ["make", "-C", str(checkout), target], env=env, capture_output=True, text=True, timeout=300
    )


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on return: connections are refused


def test_stale_environment_without_the_index_says_so_and_keeps_its_stamp(checkout):
    index = f"http://127.0.0.1:{_closed_port()}/simple/"
    run = _make(checkout, index)
    assert run.returncode != 0
    assert "make env: .venv was made from requirements/lock.txt before" in run.stdout
    last = run.stderr.strip().splitlines()[-2]  # make's own "Error 1" line follows ours
    assert last.startswith(f"make env: FAILED: no connection to the package index {index}"), last
    assert "runs as it is: .venv/bin/python -m reflectioncoder.demo" in last
    stamp = checkout / ".venv" / ".installed"
    assert stamp.read_text() == STAMP_TEXT and stamp.stat().st_mtime == 1_000_000_000


@pytest.fixture
def empty_index(tmp_path):
    """A package index that answers and holds nothing."""
    (tmp_path / "index").mkdir()
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "index")
    )
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_pip_failing_with_the_index_answering_points_at_pips_error(checkout, empty_index):
    run = _make(checkout, empty_index)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-2]
    assert last.startswith("make env: FAILED: pip could not install the versions of "), last
    assert f"the index {empty_index} answers" in last


def test_environment_without_stamp_is_named_before_pip(checkout):
    (checkout / ".venv" / ".installed").unlink()
    run = _make(checkout, f"http://127.0.0.1:{_closed_port()}/simple/", target="env")
    assert run.returncode != 0
    assert "make env: .venv has no stamp (made by hand, or its install was cut short)" in run.stdout
    assert "is incomplete (no stamp)" in run.stderr.strip().splitlines()[-2]


def test_environment_whose_python_is_gone_says_how_to_remake_it(checkout):
    python = checkout / ".venv" / "bin" / "python"
    python.unlink()
    python.symlink_to(checkout / "removed-python3")
    os.utime(checkout / ".venv" / ".installed")  # up to date: no pip runs
    run = _make(checkout, "http://127.0.0.1:9/simple/", target="demo")
    assert run.returncode != 0
    assert "make env: .venv/bin/python does not run" in run.stderr
    assert "rm -rf .venv && make env" in run.stderr
    assert "No such file" not in run.stderr


def test_python_older_than_setup_allows_stops_before_pip(checkout):
    """On Python 3.10, pip fetched torch, then found no triton 3.9.0 for it: now one line first."""
    setup = checkout / "setup.py"
    text = setup.read_text(encoding="utf-8")
    assert 'python_requires=">=3.11"' in text
    setup.write_text(text.replace('python_requires=">=3.11"', 'python_requires=">=3.99"'))
    run = _make(checkout, "http://127.0.0.1:9/simple/", target="env")
    assert run.returncode != 0
    assert "reflectioncoder needs 3.99 or newer (setup.py's python_requires)" in run.stderr
    assert "make env PYTHON=python3.99" in run.stderr
    assert "pip install" not in run.stdout and "-m venv" not in run.stdout
