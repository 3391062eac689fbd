"""Activation checkpointing policies (model.checkpointing_policy): the same gradients as no
checkpointing, and less kept for the backward (bench/bench_activation_memory.py measures it)."""

from __future__ import annotations

import pytest
import torch

from bench.bench_activation_memory import held_after_forward

pytestmark = pytest.mark.slow  # 35-60 s on the shared 2 cores

SIZES = {
    "vocab": 256,
    "arch": {"hidden_size": 64, "intermediate_size": 176, "num_heads": 4, "num_kv_heads": 2},
}


def _grads(policy: str) -> tuple[float, dict[str, torch.Tensor]]:
    _, _, loss, model = held_after_forward(2, policy, SIZES, tokens=400, seed=1)
    loss.backward()
    return float(loss.detach()), {n: p.grad for n, p in model.named_parameters()}


def test_policies_give_the_same_gradients():
    want_loss, want = _grads("none")
    for policy in ("full", "save_gemms", "alternate"):
        loss, grads = _grads(policy)
        assert loss == want_loss, policy
        for name, g in want.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_policies_keep_less_than_none():
    held = {p: held_after_forward(4, p, SIZES, tokens=1000)[0] for p in
            ("none", "full", "save_gemms", "alternate")}  # fmt: skip
    assert held["full"] < held["alternate"] < held["none"]
    assert held["full"] < held["save_gemms"] < held["none"]
