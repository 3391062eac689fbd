"""`evaluate --model` on a folder with our model card keeps an entry per way of scoring: a
sampled or chat-prompted pass@1 is named so, beside the greedy one, instead of replacing it
under the same name 'pass@1' (issue 23: the card's evaluation results; nothing lost)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reflectioncoder.cli import main
from reflectioncoder.testing.tiny_model import save_tiny_model
from reflectioncoder.train.model_card import TAG, parse, render

TEXTS = ["def add(x, y):\n    return x + y\n", "Write a complete Python function."] * 10


@pytest.fixture
def carded_model(tmp_path) -> Path:
    model = save_tiny_model(tmp_path / "model", TEXTS)
    meta = {"library_name": "transformers", "tags": [TAG]}
    (model / "README.md").write_text(render(meta, {"Evaluation results": "none"}, "m"))
    return model


def _names(model: Path) -> dict[str, list[str]]:
    meta, _, _ = parse((model / "README.md").read_text())
    results = meta["model-index"][0]["results"]
    return {r["dataset"]["name"]: sorted(m["name"] for m in r["metrics"]) for r in results}


@pytest.mark.slow
def test_sampled_scores_keep_an_entry_beside_the_greedy_one(carded_model, tmp_path, shared_dir):
    base = ["evaluate", "--task", "humaneval", "--model", str(carded_model), "--limit", "1",
            "--max-new-tokens", "4", "--device", "cpu", "--no-progress", "--base-only",
            "--data-dir", str(shared_dir / "evaldata")]  # fmt: skip
    assert main([*base, "--json", str(tmp_path / "greedy.json")]) == 0
    sampled = ["--temperature", "0.8", "--n-samples", "2", "--seed", "1"]
    assert main([*base, *sampled, "--json", str(tmp_path / "sampled.json")]) == 0
    assert _names(carded_model)["HumanEval"] == [
        "pass@1 (first 1 tasks)",
        "pass@1 (temperature 0.8, top-p 1, 2 samples, first 1 tasks)",
    ]


def test_a_multipl_e_score_names_its_hub_dataset(tmp_path):
    from reflectioncoder.train.model_card import add_eval_results

    model = tmp_path / "m"
    model.mkdir()
    (model / "README.md").write_text(render({"tags": [TAG]}, {"Evaluation results": ""}, "m"))
    add_eval_results(model, {"multiple-sh": {"pass@1": 0.5}, "HumanEval": {"pass@1": 0.25}})
    meta, _, _ = parse((model / "README.md").read_text())
    datasets = [r["dataset"] for r in meta["model-index"][0]["results"]]
    assert datasets == [
        {"name": "multiple-sh", "type": "nuprl/MultiPL-E", "config": "humaneval-sh"},
        {"name": "HumanEval", "type": "openai/openai_humaneval"},
    ]


@pytest.mark.parametrize(
    "head, where",
    [
        ("tags: [reflectioncoder\nmodel-index: []\n", ":3: its YAML metadata does not parse"),
        ("tags: [reflectioncoder]\nmodel-index: 5\n", ": its model-index is not as"),
    ],
)
def test_a_card_edited_by_hand_is_named_and_left_alone(carded_model, tmp_path, capsys, head, where):
    """A card whose YAML was edited since (broken, or a model-index of another shape) ended
    evaluate in an internal error after scoring, exit 1."""
    card = carded_model / "README.md"
    card.write_text(f"---\n{head}---\n\n# m\n")
    before = card.read_text()
    argv = ["evaluate", "--task", "humaneval", "--model", str(carded_model), "--limit", "1",
            "--max-new-tokens", "4", "--device", "cpu", "--no-progress", "--base-only",
            "--json", str(tmp_path / "r.json")]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"model card: {card}{where}" in err and "internal error" not in err
    assert card.read_text() == before and (tmp_path / "r.json").is_file()
