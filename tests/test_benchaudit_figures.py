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
import step_rows

from bench import gpu_suite, roofline
from bench import step_calibration as sc
from bench import step_model as sm
from bench.providers.common import CARD_PEAKS
from reflectioncoder.train.flops import StepFlops, packed_flops, utilisation

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "bench/README.md", *sorted((REPO / "docs").glob("*.md"))]
CURRENT = "## What the models print today"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@functools.cache
def _printed() -> dict[str, set[str]]:
    """Each model's printed table rows, by the command that prints them."""
    rows = step_rows.model_rows()
    printed = {
        "step_model": sm.markdown(rows).splitlines()[2:],
        "step_model --calibrate": sc.calibration_markdown(sc.calibration_rows()).splitlines()[2:],
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
        for r in step_rows.model_rows()
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


def _one_count(arch, micro: list[tuple[tuple[int, ...], int]], recompute: float, seconds: float):
    flops = StepFlops()
    for lens, rows in micro:
        flops += packed_flops(arch.shape(), lens, rows, recompute)
    return utilisation(flops, seconds, 1, CARD_PEAKS["H200"][0] * 1e12)


def _percent(pattern: str, text: str) -> list[float]:
    said = re.search(pattern, " ".join(text.split()))
    assert said, f"no longer stated: {pattern}"
    return [float(x) for x in said.groups()]


def test_measured_mfu_figures_are_the_one_count_over_the_measured_time():
    """The H200 rows' MFU / HFU, recomputed from their measured seconds and replayed packing
    (bench/step_model.py keeps both) with reflectioncoder/train/flops.py: a change to the count
    must come with these figures recomputed or relabelled."""
    results = (REPO / "bench/RESULTS.md").read_text()
    readme = (REPO / "README.md").read_text()
    step_1b = _one_count(sm.LLAMA_1B, list(sc.STEP_1B_MICRO), 0.0, 0.2194)
    cli = sc._cli_work(*sc.CLI_STEPS[1])  # the median step's tokens, as the row took
    plain = _one_count(sm.CLI_1B, [(cli.seq_lens, cli.loss_rows)], 1.0, 0.314)
    zero3 = _one_count(sm.CLI_1B, [(cli.seq_lens, cli.loss_rows)], 1.0, 0.756)
    want = {
        r"\*\*MFU (\d+\.\d)%\*\* under the one count": [step_1b["mfu"]],
        r"plain PyTorch .{0,400}?\*\*Recomputed under the one count .{0,60}?: (\d+\.\d)% MFU, "
        r"(\d+\.\d)% HFU\*\*": [plain["mfu"], plain["hfu"]],
        r"ZeRO-3 on one rank .{0,60}?\*\*(\d+\.\d)% MFU, (\d+\.\d)% HFU\*\*": [
            zero3["mfu"],
            zero3["hfu"],
        ],
    }
    for pattern, values in want.items():
        assert _percent(pattern, results) == [round(100 * v, 1) for v in values], pattern
    said = _percent(r"1\.5B Llama .{0,80}?: (\d+\.\d)% MFU \(the one FLOP count", readme)
    assert said == [round(100 * step_1b["mfu"], 1)]


def test_the_gpu_suite_names_every_gpu_command_owed():
    """``gpu_suite --dry-run`` (CI) lists the GPU measurements other commands owe, and each is
    a command bench/README.md documents."""
    readme = (REPO / "bench/README.md").read_text()
    text = gpu_suite.markdown(
        {"device": "CPU", "dry_run": True},
        {"summary": "", "rc": 0, "failures": [], "seconds": 0.0},
        {"rc": 0, "rows": [], "failures": [], "skipped": [], "seconds": 0.0},
    )
    for command, _ in gpu_suite.OWED_ELSEWHERE:
        assert f"`{command}`" in text
        if command.startswith(("python", "bash")):
            assert command.split(" --")[0] in readme, command


def test_every_modelled_mfu_and_ratio_pair_in_the_docs_is_a_row_of_today():
    """Prose quotes the step model as "51.6% MFU and 2.06x" or "48.6% / 1.94x" (MFU, then
    samples/s against the recipe): each such pair must be some row's pair today."""
    pairs = {
        (round(100 * r["mfu"], 1), round(r["samples_per_s_vs_recipe"], 2))
        for r in step_rows.model_rows()
    }
    quoted = re.compile(r"(\d+\.\d)% (?:MFU )?(?:and|/) (\d\.\d\d)x")
    found, stale = 0, []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = " ".join(doc.read_text().split())
        for m in quoted.finditer(text):
            found += 1
            if (float(m.group(1)), float(m.group(2))) not in pairs:
                stale.append(f"{doc.name}: ...{text[max(0, m.start() - 80) : m.end()]}")
    assert found >= 5, "the docs no longer quote the step model's MFU and ratios as expected"
    assert not stale, "pairs no step-model row gives today:\n" + "\n".join(stale)
