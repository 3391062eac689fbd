"""The step model's figures that README.md and docs/training.md print are the model's own
output now (issue 19: every MFU and speed-up statement uses the one count and the faithful
recipe): the documented 7B table is ``python -m bench.step_model --model CodeLlama-7B``'s rows
verbatim, and README's headline MFU and samples/s ratios are the shipped default's rows."""

from __future__ import annotations

import re
from pathlib import Path

import step_rows

from bench import step_model as sm

REPO = Path(__file__).resolve().parents[1]


def _printed_rows(capsys) -> list[str]:
    assert sm.main(["--model", "CodeLlama-7B"]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("| Code")]


def test_training_doc_prints_the_models_7b_rows(capsys):
    printed = set(_printed_rows(capsys))
    text = (REPO / "docs/training.md").read_text()
    block = text.split("The 7B rows on H100s print as", 1)[1].split("```", 2)[1]
    documented = [line for line in block.splitlines() if line.startswith("| Code")]
    assert len(documented) >= 10
    stale = [line for line in documented if line not in printed]
    assert not stale, "docs/training.md: rows the model no longer prints:\n" + "\n".join(stale)


def _default(rows: list[dict], gpus: int) -> dict:
    (row,) = [r for r in rows if r["card"] == "H100" and r["gpus"] == gpus and r["default"]]
    return row


def test_readme_states_the_defaults_predicted_figures():
    rows = [r for r in step_rows.model_rows() if r["model"] == "CodeLlama-7B"]
    one, eight = _default(rows, 1), _default(rows, 8)
    assert eight["engine"] == "zero1"
    readme = " ".join((REPO / "README.md").read_text().split())
    said = re.search(
        r"at (\d+\.\d)% MFU and (\d+\.\d\d)x the authors' recipe's samples/s on one H100 .*?"
        r"and (\d+\.\d)% and (\d+\.\d\d)x on 8 H100s with ZeRO-1",
        readme,
    )
    assert said, "README.md no longer states the 7B default's predicted MFU and samples/s"
    want = (
        one["mfu"],
        one["samples_per_s_vs_recipe"],
        eight["mfu"],
        eight["samples_per_s_vs_recipe"],
    )
    got = [float(x) for x in said.groups()]
    assert got == [
        round(100 * want[0], 1),
        round(want[1], 2),
        round(100 * want[2], 1),
        round(want[3], 2),
    ]


def test_readme_states_the_fsdp_and_zero1_8_gpu_ratios():
    """README's FSDP2 sentence: the 8-H100 7B rows of fsdp and of the shipped default (ZeRO-1)."""
    rows = [
        r for r in step_rows.model_rows() if r["model"] == "CodeLlama-7B" and r["card"] == "H100"
    ]
    (fsdp,) = [
        r for r in rows if r["gpus"] == 8 and r["engine"] == "fsdp" and r["lever"] == "default"
    ]
    zero1 = _default(rows, 8)
    readme = " ".join((REPO / "README.md").read_text().split())
    said = re.search(
        r"a 7B on 8 H100s modelled at (\d+\.\d\d)x the authors' recipe's samples/s "
        r"against ZeRO-1's (\d+\.\d\d)x",
        readme,
    )
    assert said, "README.md no longer states FSDP2's modelled 7B ratio on 8 H100s"
    want = [round(fsdp["samples_per_s_vs_recipe"], 2), round(zero1["samples_per_s_vs_recipe"], 2)]
    assert [float(x) for x in said.groups()] == want
