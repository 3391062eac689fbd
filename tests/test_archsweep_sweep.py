"""archsweep: every causal LM transformers maps (``MODEL_FOR_CAUSAL_LM_MAPPING``) either trains
exactly with packed sequences or is refused at the start in one line; docs/model.md's table
says which, type by type (reflectioncoder/testing/archsweep.py). Fast: the table names every
type this transformers maps, each with an outcome. Slow: the sweep itself (tiny models, float64
packed vs unpacked, two CPU training steps each) finds no type that FAILS and the outcomes the
table documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reflectioncoder.testing.archsweep import causal_lm_types, sweep

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "reflection_small.jsonl"
ROW = re.compile(r"^\| `([^`]+)` \| (trains-exact|refused|skipped|FAILS) \|", re.M)


def documented() -> dict[str, str]:
    """docs/model.md's sweep table: model type -> outcome."""
    return dict(ROW.findall((REPO / "docs" / "model.md").read_text(encoding="utf-8")))


def test_the_docs_table_names_every_causal_lm_type():
    table = documented()
    assert sorted(table) == causal_lm_types()
    assert "FAILS" not in table.values()


@pytest.mark.slow
def test_every_causal_lm_trains_exactly_or_is_refused():
    rows = {row.model_type: row for row in sweep(causal_lm_types(), DATA)}
    fails = [f"{r.model_type}: {r.detail}" for r in rows.values() if r.outcome == "FAILS"]
    assert not fails, "\n".join(fails)
    assert {t: r.outcome for t, r in rows.items()} == documented()


# Refused for their soft caps alone until the fused loss and the varlen attention applied them.
SOFT_CAPPED = ["beam", "gemma2", "nanochat", "vaultgemma"]


@pytest.mark.slow
def test_the_soft_capped_types_train_exactly():
    """Their rows (the sweep gives them caps that bind): trains-exact, as the table says."""
    rows = {row.model_type: row.outcome for row in sweep(SOFT_CAPPED, DATA)}
    assert rows == {t: "trains-exact" for t in SOFT_CAPPED}
    assert {t: documented()[t] for t in SOFT_CAPPED} == rows
