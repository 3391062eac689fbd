"""The documented commands run as written. A shell block of README.md or docs/*.md marked

    <!-- runnable -->
    ```bash
    ...
    ```

is run from a folder that holds the demo's outputs (runs/demo, as `make demo` leaves them), and
must exit 0. Fast here: every marked block is valid bash and every `reflectioncoder` command in
it parses. Slow: each block really runs, on a small demo's outputs.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from reflectioncoder.cli import COMMANDS, _command_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- runnable -->"
BLOCK = re.compile(re.escape(MARKER) + r"\s*\n```bash\n(.*?)\n```", re.S)


def runnable_blocks() -> list[tuple[str, str]]:
    """(where, script) of every marked block, in file order."""
    found = []
    for path in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 1
            found.append((f"{path.relative_to(REPO_ROOT)}:{line}", match.group(1)))
    return found


BLOCKS = runnable_blocks()


def _commands(script: str) -> list[list[str]]:
    """The `reflectioncoder ...` command lines of a block (continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", script)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words and Path(words[0]).name == "reflectioncoder":
            out.append(words[1:])
    return out


def test_the_docs_mark_their_runnable_blocks():
    where = {w.split(":")[0] for w, _ in BLOCKS}
    assert {"README.md", "docs/training.md"} <= where
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("where, script", BLOCKS, ids=[w for w, _ in BLOCKS])
def test_runnable_block_is_valid_and_its_commands_parse(where, script):
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert check.returncode == 0, f"{where}: {check.stderr}"
    for argv in _commands(script):
        assert argv and argv[0] in COMMANDS, f"{where}: unknown command in {argv}"
        module = importlib.import_module(COMMANDS[argv[0]][0])
        _command_parser(argv[0], module).parse_args(argv[1:])  # exits 2 on a bad flag


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    """A folder laid out like a fresh clone after `make demo` (a small demo: 8 samples)."""
    from reflectioncoder.demo import run_demo

    root = tmp_path_factory.mktemp("clone")
    run_demo(root / "runs" / "demo", n=8, workers=4, max_steps=4, samples_per_step=2,
             max_new_tokens=8, progress=False)  # fmt: skip
    for name in ("configs", "examples", "tests", "Makefile"):
        (root / name).symlink_to(REPO_ROOT / name)
    venv = REPO_ROOT / ".venv"
    if not venv.is_dir():  # the interpreter running the tests stands in for the venv
        venv = root / "venv-link"
        (venv / "bin").mkdir(parents=True)
        for tool in ("python", "reflectioncoder"):
            (venv / "bin" / tool).symlink_to(Path(sys.executable).parent / tool)
    (root / ".venv").symlink_to(venv)
    return root


@pytest.mark.slow  # the demo's outputs first (~1 min), then each block (a training run, evals)
@pytest.mark.parametrize("where, script", BLOCKS, ids=[w for w, _ in BLOCKS])
def test_runnable_block_runs_on_the_demo_outputs(where, script, demo_folder):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PATH"] = f"{demo_folder / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=demo_folder,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, f"{where}:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
