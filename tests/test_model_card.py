"""The model card: the demo's final folder has a README.md with Hugging Face metadata and the
sections a reader needs, every figure in it the run's own; `reflectioncoder evaluate` on the
folder adds its scores as model-index entries (a benchmark scored again replaces its entry)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import TESTS_DIR as REPO_TESTS
from test_demo import SMALL_DEMO

from reflectioncoder.demo import run_demo
from reflectioncoder.train.metrics import read_metrics
from reflectioncoder.train.model_card import parse

SECTIONS = [
    "Base model",
    "Training procedure",
    "Training data",
    "Training results",
    "Evaluation results",
]


def _evaluate(final, data_dir, tmp_path, name: str) -> dict:
    result = tmp_path / f"{name}.json"
    args = [sys.executable, "-m", "reflectioncoder.cli", "evaluate", "--task", "humaneval"]
    args += ["--model", str(final), "--limit", "2", "--max-new-tokens", "8", "--no-progress"]
    args += ["--data-dir", str(data_dir), "--json", str(result), "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"model card: {final / 'README.md'} (model-index updated)" in proc.stderr
    return json.loads(result.read_text())["scores"]


@pytest.mark.slow  # the demo (~30-80 s here), then evaluate twice on 2 tasks
def test_demo_final_card_and_evaluate_adds_scores(tmp_path, seed, shared_dir):
    res = run_demo(tmp_path / "demo", seed=seed, **SMALL_DEMO)
    final = res.checkpoint
    meta, title, sections = parse((final / "README.md").read_text())
    assert meta["library_name"] == "transformers" and "reflectioncoder" in meta["tags"]
    assert "base_model" not in meta  # built from scratch: no base model is claimed
    assert "model-index" not in meta  # not evaluated yet
    assert title == res.run_dir.name and list(sections) == SECTIONS
    assert sections["Base model"].startswith("None: a Llama built from scratch")
    assert "| mask strategies | block_mask |" in sections["Training procedure"]
    assert str(res.data) in sections["Training data"]
    rows = read_metrics(res.metrics)
    results = sections["Training results"]
    assert "| optimizer steps | 3 of 3 |" in results
    assert f"| tokens | {sum(r['tokens'] for r in rows)} |" in results
    assert f"| samples | {sum(r['samples'] for r in rows)} |" in results
    assert f"| loss | {rows[-1]['loss']:.4f} |" in results and "Losses at step 3" in results
    assert "| hardware | 1 x CPU (" in results
    assert sections["Evaluation results"].startswith("Not evaluated yet")

    data_dir = shared_dir / "evaldata"
    for name in ("first", "again"):  # scored again: the entries are replaced, not doubled
        scores = _evaluate(final, data_dir, tmp_path, name)
    meta, _, sections = parse((final / "README.md").read_text())
    (entry,) = meta["model-index"]
    by_name = {r["dataset"]["name"]: r for r in entry["results"]}
    assert set(by_name) == {"HumanEval", "HumanEval+"} == set(scores)
    for bench, result in by_name.items():
        assert result["dataset"]["type"].startswith(("openai/", "evalplus/"))
        (metric,) = result["metrics"]
        assert metric["name"] == "pass@1 (first 2 tasks)" and metric["type"] == "pass@1"
        assert metric["value"] == pytest.approx(100 * scores[bench]["pass@1"], abs=0.01)
    assert "| HumanEval+ | pass@1 (first 2 tasks):" in sections["Evaluation results"]


def test_card_carries_the_prepare_data_manifest_and_only_measured_figures(tmp_path):
    from reflectioncoder.config_loader import load_config
    from reflectioncoder.data.decontaminate import BenchmarkIndex
    from reflectioncoder.data.prepare import prepare
    from reflectioncoder.train.model_card import run_card

    source = REPO_TESTS / "data" / "prepare" / "reflectionseq.jsonl"
    planted = json.loads(source.read_text().splitlines()[0])["messages"][0]["content"][0]
    index = BenchmarkIndex.from_texts({"HumanEval": [("HumanEval/0", planted["content"])]})
    data = tmp_path / "prepared.jsonl"
    result = prepare([source], data, index=index, keep_contaminated=True, progress=False)
    manifest = json.loads(result.manifest.read_text())
    matched = manifest["decontamination"]["benchmarks"]["HumanEval"]["samples_matched"]
    assert matched >= 1

    cfg = load_config(base="tiny", overrides=[f"data.files=[{data}]", "model.name_or_path=base/7b"])
    counts = {"loaded": 3, "samples": 3, "skipped_bad": 0, "dropped_too_long": 0}
    progress = {"step": 2, "total_steps": 5, "skipped": 0, "totals": {}, "last_row": None}
    meta, _, sections = parse(run_card(cfg, counts, progress))
    assert meta["base_model"] == "base/7b" and sections["Base model"] == "`base/7b`"
    text = sections["Training data"]
    assert f"{manifest['written']} rows from `{source}`" in text
    assert f"| HumanEval | {matched} samples matched 1 tasks (kept) |" in text
    results = sections["Training results"]
    assert "| optimizer steps | 2 of 5 |" in results
    # Not measured here: no tokens, samples, time, hardware, engine or losses are written.
    for absent in ("| tokens", "| samples |", "training time", "hardware", "engine", "Losses"):
        assert absent not in results
