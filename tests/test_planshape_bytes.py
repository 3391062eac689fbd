"""The bytes a layer keeps per token, from the model's widths (``KEPT_WIDTHS``), against the
heap the CPU measured at four shapes (bench/results/activation_memory.json: the 7B's I/D with
KV width D/2, the 34B's KV width D/8, multi-head at I = 4D, the 7B's ratios at D = 512)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectioncoder import memory_plan as mp
from reflectioncoder.train.flops import ModelShape

ROWS = json.loads(
    (Path(__file__).parents[1] / "bench" / "results" / "activation_memory.json").read_text()
)
# Measured less formula: under 2% of the row, or under 48 bytes a token (the heap holds about
# 40 more a token and layer than the formula at every checkpointed policy and shape: a fixed
# cost, 0.5% of a 7B bf16 layer's input).
REL, ABS = 0.02, 48


def _shape(row: dict) -> ModelShape:
    arch = row["arch"]
    return ModelShape.llama(arch["hidden_size"], arch["intermediate_size"], 2,
                            arch["num_heads"], arch["num_kv_heads"], row["vocab"])  # fmt: skip


def _close(predicted: float, measured: float) -> bool:
    return abs(predicted - measured) <= max(REL * measured, ABS)


def test_every_measured_row_is_predicted_from_its_shape():
    rows = [r for r in ROWS if r["policy"] in mp.KEPT_WIDTHS]
    assert {r["shape"] for r in rows} >= {"base", "gqa8", "mha_i4", "7b_d512"}
    for row in rows:
        shape = _shape(row)
        predicted = mp.kept_per_token(row["policy"], shape, element_bytes=4)
        if row["policy"] == "none":  # the CPU's per-segment SDPA: each segment's output kept
            predicted += 4 * shape.attn_width  # by its backward, their concatenation by o_proj
        measured = row["bytes_per_token_layer"]
        assert _close(predicted, measured), (row["shape"], row["policy"], predicted, measured)
        if row["policy"] == "offload":  # what goes to the host: counted by the stores, exact
            sent = row["offloaded_bytes_per_token_layer"]
            assert mp.offloaded_bytes(1, shape, element_bytes=4) == pytest.approx(sent, abs=1)


def test_bytes_per_hidden_unit_alone_miss_the_other_shapes():
    """The single per-D figure of the first shape (the former ``KEPT_PER_TOKEN_HIDDEN``)
    misses the KV-width and MLP-ratio rows by more than the tolerance."""
    base = {r["policy"]: r["bytes_per_token_layer_per_hidden"] for r in ROWS
            if r["shape"] == "base"}  # fmt: skip
    missed = {
        (r["shape"], r["policy"])
        for r in ROWS
        if r["shape"] != "base" and r["policy"] in ("save_gemms", "mlp_rerun")
        and not _close(base[r["policy"]] * r["arch"]["hidden_size"], r["bytes_per_token_layer"])
    }  # fmt: skip
    assert missed >= {(s, p) for s in ("gqa8", "mha_i4", "7b_d512")
                      for p in ("save_gemms", "mlp_rerun")}  # fmt: skip


def test_bf16_halves_the_activations_not_the_log_sum_exp():
    shape = ModelShape.llama(8192, 22016, 48, 64, 8, 32000)  # CodeLlama-34B
    fp32 = mp.kept_per_token("save_gemms", shape, 4)
    bf16 = mp.kept_per_token("save_gemms", shape, 2)
    lse = 4 * 64
    assert bf16 - lse == pytest.approx((fp32 - lse) / 2)
    # input, o_proj: 2D; q, attention output: 2D; k, v: 2 x 1024; gate, up: 2I
    assert bf16 == 2 * (4 * 8192 + 2 * 1024 + 2 * 22016) + lse
