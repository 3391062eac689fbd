"""Modelled figures in the docs are what the models print today (benchaudit).

Every table row the docs copy from ``python -m bench.step_model``, ``python -m bench.step_model
--calibrate``, ``python -m bench.roofline`` or ``python -m bench.roofline --calibrate`` is
recognised by its first cell (a model, calibration run or schedule name the model prints) and
column count. A row in README.md, docs/*.md, bench/README.md or bench/RESULTS.md' section "What
the models print today" must be printed verbatim by today's code; older RESULTS sections keep
their rows as they were measured or modelled then, each labelled with its date. A figure said
to be current ("on main now") belongs in that checked section, nowhere else.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from bench import roofline
from bench import step_model as sm

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "bench/README.md", *sorted((REPO / "docs").glob("*.md"))]
CURRENT = "## What the models print today"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@functools.cache
def _printed() -> dict[str, set[str]]:
    """Each model's printed table rows, by the command that prints them."""
    rows = sm.model_rows()
    printed = {
        "step_model": sm.markdown(rows).splitlines()[2:],
        "step_model --calibrate": sm.calibration_markdown(sm.calibration_rows()).splitlines()[2:],
        "roofline --calibrate": roofline.calibration_markdown(
            roofline.calibration_rows()
        ).splitlines()[2:],
    }
    loss_rows = [
        row
        for card in ("H100", "H200")
        for v in (128256, 32000)
        for row in roofline.model_rows(16384, 4096, v, "bf16", card)
    ]
    printed["roofline"] = roofline.markdown(loss_rows).splitlines()[2:]
    return {k: {line for line in v if line.startswith("| ")} for k, v in printed.items()}


def _signature(line: str) -> tuple[str, int]:
    cells = _cells(line)
    return cells[0], len(cells)


@functools.cache
def _kinds() -> dict[tuple[str, int], str]:
    """(first cell, columns) -> the command whose rows look so."""
    return {_signature(line): kind for kind, lines in _printed().items() for line in lines}


def _model_rows_in(text: str) -> list[tuple[str, str]]:
    """(command, line) of each table row in ``text`` shaped like a model's printed row."""
    kinds = _kinds()
    found = []
    for line in text.splitlines():
        if line.startswith("| ") and (kind := kinds.get(_signature(line))):
            found.append((kind, line.strip()))
    return found


def _stale(text: str) -> list[str]:
    printed = _printed()
    return [f"{kind}: {line}" for kind, line in _model_rows_in(text) if line not in printed[kind]]


def _current_section() -> str:
    text = (REPO / "bench/RESULTS.md").read_text()
    assert CURRENT in text, f"bench/RESULTS.md has no section {CURRENT!r}"
    return CURRENT + text.split(CURRENT, 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_model_rows_in_the_docs_are_printed_today(doc):
    stale = _stale(doc.read_text())
    assert not stale, f"{doc.name}: rows today's models no longer print:\n" + "\n".join(stale)


def test_results_current_section_is_what_the_models_print():
    section = _current_section()
    stale = _stale(section)
    assert not stale, "bench/RESULTS.md, " + CURRENT + ":\n" + "\n".join(stale)
    kinds = {kind for kind, _ in _model_rows_in(section)}
    assert kinds == set(_printed()), f"the section lacks rows of {set(_printed()) - kinds}"
    # every calibration row, and each shipped default's row, so that none can quietly go
    lines = {line for _, line in _model_rows_in(section)}
    assert _printed()["step_model --calibrate"] <= lines
    defaults = {line for line in _printed()["step_model"] if "| default | yes |" in line}
    assert defaults <= lines, "missing default rows:\n" + "\n".join(sorted(defaults - lines))


def test_a_figure_said_to_be_current_is_in_the_checked_section():
    text = (REPO / "bench/RESULTS.md").read_text()
    outside = text.replace(_current_section(), "")
    said = [m.group(0) for m in re.finditer(r"[^\n]{0,60}\bon main now\b[^\n]{0,60}", outside)]
    assert not said, "'on main now' outside " + CURRENT + ":\n" + "\n".join(said)


def test_the_fsdp_paragraph_states_the_models_ratios():
    rows = [
        r
        for r in sm.model_rows()
        if r["model"] == "CodeLlama-7B" and r["gpus"] == 8 and r["lever"] == "default"
    ]
    ratio = {(r["card"], r["engine"]): r["samples_per_s_vs_recipe"] for r in rows}
    text = " ".join((REPO / "docs/training.md").read_text().split())
    said = re.search(
        r"CodeLlama-7B on 8 GPUs at (\S+)x the authors' recipe's samples/s on H100s "
        r"\(ZeRO-1, the default: (\S+)x; ZeRO-3: (\S+)x\) and (\S+)x on H200s "
        r"\(ZeRO-1: (\S+)x; ZeRO-3: (\S+)x\)",
        text,
    )
    assert said, "docs/training.md no longer states FSDP2's modelled ratios"
    want = [
        ratio[(card, engine)] for card in ("H100", "H200") for engine in ("fsdp", "zero1", "zero3")
    ]
    assert [float(x) for x in said.groups()] == want
