"""An older torch than the lowest checked gets one clear line from the CLI, and setup.py's
``torch>=`` names that same floor."""

from __future__ import annotations

import re
from pathlib import Path

from reflectioncoder import cli, torch_floor


def test_setup_py_names_the_checked_floor():
    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    floor = re.search(r'"torch>=(\d+)\.(\d+)"', setup)
    assert floor is not None
    assert tuple(map(int, floor.groups())) == torch_floor.MIN_TORCH


def test_versions_at_and_above_the_floor_pass():
    assert torch_floor.unsupported_torch("2.11.0+cu130") is None
    assert torch_floor.unsupported_torch("2.13.0") is None
    assert torch_floor.unsupported_torch("3.0.0") is None
    assert torch_floor.unsupported_torch() is None  # the installed one


def test_an_older_torch_gets_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch_floor.metadata, "version", lambda name: "2.4.1+cu121")
    assert cli.main(["--help"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: reflectioncoder needs torch>=2.11, found torch 2.4.1+cu121: "
                   "pip install 'torch>=2.11'")  # fmt: skip


def test_setup_py_admits_the_triton_the_floor_torch_ships_with():
    """torch 2.11's wheels require triton 3.6.0: with setup.py's triton==3.9.0 a machine
    carrying torch 2.11 could not install the project without pip replacing its torch."""
    from packaging.requirements import Requirement

    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    (line,) = re.findall(r'"(triton[^"]*)"', setup)
    triton = Requirement(line)
    assert triton.specifier.contains("3.6.0"), line
    assert triton.specifier.contains("3.9.0"), line  # the lock's
