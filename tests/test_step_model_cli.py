"""``python -m bench.step_model --json`` as the issue documents it (issue 19, items 4 and "Done
when"), run as a user runs it: one row per configuration with the named keys, for
CodeLlama-7B / 13B / 34B, H100 / H200, 1 and 8 GPUs, ZeRO-1 / 2 / 3, one shipped-default row
per model, card and GPU count; rows consistent with themselves (samples/s against the recipe
row of the same card and GPU count, HFU >= MFU, memory against ``fits``); and the issue's
threshold for CodeLlama-7B's default on one H100 and on 8 with ZeRO-1 (>= 45% MFU), with
>= 2x the recipe's samples/s on one H100."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT

KEYS = (
    "model", "card", "gpus", "engine", "micro_batch_tokens", "checkpointing", "default",
    "predicted_step_s", "mfu", "hfu", "memory_per_gpu_bytes", "samples_per_s_vs_recipe",
)  # fmt: skip
MODELS = ("CodeLlama-7B", "CodeLlama-13B", "CodeLlama-34B")
CARD_MIB = {"H100": 81559, "H200": 143771}  # nvidia-smi's total memory


def _rows() -> list[dict]:
    cmd = [sys.executable, "-m", "bench.step_model", "--json"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_step_model_json_as_documented():
    rows = _rows()
    assert rows and all(set(KEYS) <= r.keys() for r in rows)
    for model in MODELS:
        for card in CARD_MIB:
            for gpus in (1, 8):
                here = [
                    r for r in rows if (r["model"], r["card"], r["gpus"]) == (model, card, gpus)
                ]
                assert {"zero1", "zero2", "zero3"} <= {r["engine"] for r in here}
                assert sum(r["default"] is True for r in here) == 1, (model, card, gpus)
                recipe = [r for r in here if r["samples_per_s_vs_recipe"] == 1.0]
                assert recipe, (model, card, gpus)
    assert {r["micro_batch_tokens"] for r in rows if r["default"]} == {16384}
    for r in rows:
        assert isinstance(r["gpus"], int) and isinstance(r["default"], bool)
        assert r["predicted_step_s"] > 0 and r["memory_per_gpu_bytes"] > 0
        assert 0 < r["mfu"] <= r["hfu"] < 1, r
        assert r["samples_per_s_vs_recipe"] > 0
        if "fits" in r:
            assert r["fits"] == (r["memory_per_gpu_bytes"] <= 0.95 * CARD_MIB[r["card"]] * 2**20)


def test_done_when_for_codellama_7b_on_h100():
    rows = _rows()

    def default(gpus: int) -> dict:
        (row,) = [
            r for r in rows
            if r["default"] and (r["model"], r["card"], r["gpus"]) == ("CodeLlama-7B", "H100", gpus)
        ]  # fmt: skip
        return row

    one, eight = default(1), default(8)
    assert eight["engine"] == "zero1"
    assert one["micro_batch_tokens"] == eight["micro_batch_tokens"] == 16384
    assert one["mfu"] >= 0.45 and eight["mfu"] >= 0.45
    assert one["samples_per_s_vs_recipe"] >= 2.0
