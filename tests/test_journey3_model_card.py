"""Two evaluations of one model at once (HumanEval in one terminal, MBPP in another) each add
their scores to its model card: both entries are kept (each read-modify-write of README.md under
a lock, the new card renamed into place: a kill leaves the old card or the new one whole)."""

from __future__ import annotations

import subprocess
import sys

import yaml

from reflectioncoder.train.model_card import TAG

ADD = """
import sys
from reflectioncoder.train.model_card import add_eval_results
for i in range(25):
    add_eval_results(sys.argv[1], {f"{sys.argv[2]}{i}": {"pass@1": 0.5}})
"""


def test_concurrent_evaluations_keep_every_score(tmp_path):
    card = tmp_path / "README.md"
    card.write_text(f"---\ntags:\n- {TAG}\n---\n\n# model\n\n## Base model\n\nNone.\n")
    procs = [
        subprocess.Popen([sys.executable, "-c", ADD, str(tmp_path), tag]) for tag in ("he", "mbpp")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    meta = yaml.safe_load(card.read_text().split("---")[1])
    names = {r["dataset"]["name"] for r in meta["model-index"][0]["results"]}
    assert names == {f"{tag}{i}" for tag in ("he", "mbpp") for i in range(25)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no lock or temp file


def test_a_multiple_subset_names_its_tasks_not_its_rows(tmp_path, shared_dir):
    """`evaluate --task multiple --languages python sh --limit 1` on a model with a card: each
    language's entry says "first 1 tasks" (it said "first 2": one row per language)."""
    from reference.serialise import SPECIALS

    from reflectioncoder.cli import main
    from reflectioncoder.testing.tiny_model import save_tiny_model

    model = save_tiny_model(tmp_path / "model", ["echo hi\n"] * 5, special_tokens=SPECIALS)
    card = model / "README.md"
    card.write_text(f"---\ntags:\n- {TAG}\n---\n\n# model\n")
    argv = ["evaluate", "--task", "multiple", "--languages", "python", "sh", "--limit", "1"]
    argv += ["--model", str(model), "--max-new-tokens", "4", "--no-progress"]
    argv += ["--data-dir", str(shared_dir / "evaldata"), "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    meta = yaml.safe_load(card.read_text().split("---")[1])
    names = {
        r["dataset"]["name"]: [m["name"] for m in r["metrics"]]
        for r in meta["model-index"][0]["results"]
    }
    assert names == {
        "multiple-python": ["pass@1 (first 1 tasks)"],
        "multiple-sh": ["pass@1 (first 1 tasks)"],
    }
