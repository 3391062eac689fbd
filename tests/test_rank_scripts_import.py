"""The test files that torchrun runs as ranks (``torch.distributed.run ... tests/test_x.py
'{spec}'``, the ``if __name__ == "__main__"`` files) import at the top only what a rank finds:
its ``sys.path`` holds tests/ and the installed packages, not the repository root that
``python -m pytest`` adds. A top-level ``import step_rows`` in test_fsdp_engine.py (which
imports ``bench``) ended every rank with ModuleNotFoundError and failed the slow FSDP tests
(test_fsdp_engine, test_fsdp_load) while the fast suite passed. Read, not imported: fast."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
RANK_SCRIPTS = sorted(
    p for p in TESTS.glob("test_*.py") if '__name__ == "__main__"' in p.read_text()
)


def _top_level_imports(path: Path) -> set[str]:
    """The top-level names a module imports when loaded (not those inside functions)."""
    names: set[str] = set()
    pending = list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.If | ast.Try):
            pending += [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
            pending += [s for handler in getattr(node, "handlers", []) for s in handler.body]
    return names


def _rank_finds(name: str) -> bool:
    """The import system's finders (the editable install's included), on a rank's path."""
    return any(
        hasattr(finder, "find_spec") and finder.find_spec(name, None) is not None
        for finder in sys.meta_path
    )


def _outside_the_repository_root(entry: str) -> bool:
    return entry not in ("", os.curdir) and Path(entry).resolve() != REPO_ROOT


@pytest.mark.parametrize("script", RANK_SCRIPTS, ids=lambda p: p.name)
def test_a_rank_script_imports_only_what_a_rank_finds(script, monkeypatch):
    rank_path = [str(TESTS), *filter(_outside_the_repository_root, sys.path)]
    monkeypatch.setattr(sys, "path", rank_path)
    seen, pending, missing = set(), [script], []
    while pending:
        module = pending.pop()
        for name in sorted(_top_level_imports(module) - seen):
            seen.add(name)
            if (TESTS / f"{name}.py").is_file():
                pending.append(TESTS / f"{name}.py")
            elif not _rank_finds(name):
                missing.append(f"{module.name} imports {name}")
    assert not missing, f"a rank of {script.name} cannot import these: {missing}"


def test_the_rank_scripts_are_found():
    assert {"test_fsdp_engine.py", "test_fsdp_load.py"} <= {p.name for p in RANK_SCRIPTS}
