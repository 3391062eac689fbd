"""Issue 23's model card as a user reads it: data prepared by `prepare-data` (one planted
HumanEval prompt dropped), a run trained with the CLI on it with hyper-parameters of the test's
choosing, then `evaluate --model final`. The card's YAML metadata parses, and each figure it
states is the one the run set or measured: the config's values, the data counts and the
manifest's decontamination, the steps, samples and tokens of metrics.jsonl, the last losses,
and the evaluation's pass@1 as a model-index entry."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_distributed import ARCH

from reflectioncoder.testing.toy_jsonl import write_toy_jsonl

REPO = Path(__file__).resolve().parents[1]
EVALDATA = REPO.parent / "shared" / "evaldata"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "reflectioncoder.cli", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert match, text[:500]
    return yaml.safe_load(match.group(1)), match.group(2)


def _table(body: str, section: str) -> dict[str, str]:
    part = body.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", part, re.M)
    return {k: v for k, v in rows if set(v) - set("-")}


@pytest.mark.slow  # prepare, train and evaluate through the CLI: a minute or two
@pytest.mark.skipif(not EVALDATA.is_dir(), reason="needs ../shared/evaldata")
def test_model_card_states_what_the_run_set_and_measured(tmp_path):
    rng = random.Random()
    raw = write_toy_jsonl(tmp_path / "raw.jsonl", 17, seed=rng.randrange(10**6))
    with gzip.open(EVALDATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        prompt = json.loads(next(f))["prompt"]
    planted = {"query": "Complete:\n" + prompt, "answer": "return True"}
    (tmp_path / "cf.jsonl").write_text(json.dumps(planted) + "\n")
    data = tmp_path / "prepared.jsonl"
    _cli("prepare-data", "--in", str(raw), "--in", str(tmp_path / "cf.jsonl"), "--out", str(data))

    lr, seed, steps = round(rng.uniform(1e-3, 3e-3), 6), rng.randrange(10**4), 3
    out = tmp_path / "run"
    sets = [
        ARCH, "model.tokenizer_vocab_size=400", f"data.files=[{data}]",
        f"checkpoint.out_dir={out}", f"optim.lr={lr}", f"train.seed={seed}",
        f"train.max_steps={steps}", "train.samples_per_step=4",
        "mask.strategies=[random_token_mask, block_mask]", "logging.report_to=[none]",
        "logging.progress=false", "logging.plot=false",
    ]  # fmt: skip
    _cli("train", "--preset", "tiny", *[a for s in sets for a in ("--set", s)])

    meta, body = _card(out / "final")
    assert meta["library_name"] == "transformers" and "base_model" not in meta, meta
    for section in ("Base model", "Training procedure", "Training data", "Training results"):
        assert f"## {section}\n" in body, section
    hyper = _table(body, "Training procedure")
    assert float(hyper["learning rate"]) == pytest.approx(lr)
    assert hyper["seed"] == str(seed)
    assert hyper["mask strategies"].replace(" ", "") in ("random_token_mask,block_mask",)

    data_rows = _table(body, "Training data")
    assert data_rows["samples read"] == "17", data_rows
    assert re.search(r"\| humaneval \| 1 samples? matched", body), body

    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    rows = [r for r in rows if "loss" in r and "step" in r]
    results = _table(body, "Training results")
    assert results["optimizer steps"] == f"{steps} of {steps}"
    assert results["samples"] == str(sum(r["samples"] for r in rows))
    assert results["tokens"] == str(sum(r["tokens"] for r in rows))
    losses = dict(re.findall(r"^\| (loss|ce|kl) \| ([0-9.]+) \|$", body, re.M))
    assert float(losses["loss"]) == pytest.approx(rows[-1]["loss"], abs=5e-5)
    assert float(losses["kl"]) == pytest.approx(rows[-1]["kl"], abs=5e-5)
    assert "model-index" not in meta

    result = tmp_path / "he.json"
    _cli(
        "evaluate", "--task", "humaneval", "--model", str(out / "final"), "--limit", "2",
        "--max-new-tokens", "8", "--json", str(result), "--no-progress",
    )  # fmt: skip
    scored = json.loads(result.read_text())
    meta, body = _card(out / "final")
    entries = [r for m in meta["model-index"] for r in m["results"]]
    values = [
        metric["value"]
        for r in entries
        if "HumanEval" in r["dataset"]["name"]
        for metric in r["metrics"]
        if "pass@1" in metric["type"] or "pass@1" in metric.get("name", "")
    ]
    assert values, meta["model-index"]
    assert _pass1(scored) in [float(v) for v in values], (scored, values)
    assert "Not evaluated yet" not in body


def _pass1(scored: dict) -> float:
    """pass@1 on HumanEval's base tests in the result JSON."""
    return float(scored["scores"]["HumanEval"]["pass@1"])
