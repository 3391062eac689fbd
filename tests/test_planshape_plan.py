"""The planner's costs come from the model's shape: the shares of a layer's forward GEMM FLOPs
each policy reruns equal torch's FLOP counter on tiny models of the 7B's and the 34B's ratios,
and a 34B-shaped and a 7B-shaped plan are each the least recompute that fits, by brute force."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from reflectioncoder import memory_plan as mp
from reflectioncoder.model import build_tiny_llama
from reflectioncoder.train.flops import ModelShape

# Tiny models with the 7B's ratios (multi-head, I/D = 11008/4096) and the 34B's (KV width D/8).
TINY = {"7b": dict(heads=8, kv_heads=8), "34b": dict(heads=8, kv_heads=1)}
S7 = ModelShape.llama(4096, 11008, 32, 32, 32, 32016)
S34 = ModelShape.llama(8192, 22016, 48, 64, 8, 32000)


def counted_shares(heads: int, kv_heads: int) -> tuple[ModelShape, dict[str, float]]:
    """(the model's shape, the FLOP counter's shares of layer 0's forward GEMMs: gate + up,
    and all but down_proj)."""
    model = build_tiny_llama(256, hidden_size=256, num_layers=1, num_heads=heads,
                             num_kv_heads=kv_heads, intermediate_size=688, seed=0,
                             attn_implementation="eager")  # fmt: skip
    with FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, 256, (1, 32)))
    counts = counter.get_flop_counts()
    layer = "LlamaForCausalLM.model.layers.0"

    def mm(name: str) -> int:
        return counts[f"{layer}{name}"][torch.ops.aten.mm]

    gate_up = mm(".mlp.gate_proj") + mm(".mlp.up_proj")
    shares = {"mlp_rerun": gate_up / mm(""), "full": (mm("") - mm(".mlp.down_proj")) / mm("")}
    return ModelShape.from_model(model), shares


@pytest.mark.parametrize("name", TINY)
def test_rerun_costs_are_the_flop_counters(name):
    shape, shares = counted_shares(**TINY[name])
    cost = mp.rerun_cost(shape)
    for policy, share in shares.items():
        assert cost[policy] == pytest.approx(share, rel=1e-9)
    big = mp.rerun_cost(S7 if name == "7b" else S34)  # the same ratios at full size
    for policy, share in shares.items():
        assert big[policy] == pytest.approx(share, rel=1e-9)


def brute_force(layers: int, tokens: int, shape: ModelShape, budget: float, cost: dict) -> float:
    """The least summed cost of any mix of none / save_gemms / mlp_rerun / full that fits."""
    best = None
    for none, saved, mlp in itertools.product(range(layers + 1), repeat=3):
        full = layers - none - saved - mlp
        if full < 0:
            continue
        counts = {"none": none, "save_gemms": saved, "mlp_rerun": mlp, "full": full}
        if mp._counts_bytes(counts, tokens, shape) > budget:  # noqa: SLF001
            continue
        total = mlp * cost["mlp_rerun"] + full * cost["full"]
        best = total if best is None else min(best, total)
    return best


@pytest.mark.parametrize(("name", "shape", "other"), [("34b", S34, S7), ("7b", S7, None)])
def test_each_plan_is_the_least_recompute_for_its_shape(name, shape, other):
    """For the shape (12 of its layers: the brute force stays small), at budgets from all-full
    to all-save_gemms, the planner's plan fits and costs, by the FLOP counter's shares, what
    the least-cost plan costs. The 34B's planned with the 7B's costs (the former constants):
    some budget's plan costs more."""
    layers, tokens = 12, 16384
    _, cost = counted_shares(**TINY[name])
    cost = {"none": 0.0, "save_gemms": 0.0, **cost}
    low = mp.activation_bytes(("full",) * layers, tokens, shape)
    high = mp.activation_bytes(("save_gemms",) * layers, tokens, shape)
    misweight = mp.rerun_cost(other) if other is not None else None
    worse = 0
    for budget in torch.linspace(low, high, 25).tolist():
        plan = mp.plan_layers(layers, tokens, shape, budget)
        assert mp.activation_bytes(plan, tokens, shape) <= budget
        least = brute_force(layers, tokens, shape, budget, cost)
        assert sum(cost[p] for p in plan) == pytest.approx(least, abs=1e-9), budget
        if misweight is not None:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(mp, "rerun_cost", lambda _: misweight)
                misweighted = mp.plan_layers(layers, tokens, shape, budget)
            worse += sum(cost[p] for p in misweighted) > least + 1e-9
    assert misweight is None or worse > 0


def test_the_trainer_plans_with_the_models_shape(tmp_path, seed, monkeypatch):
    """The trainer's ``auto`` plan (``train.placement.plan_memory``) on a GPU (its memory
    faked) takes the loaded model's widths: a grouped-query model's heads, KV heads and I reach
    ``plan_run``, and the plan applied is ``plan_layers``' for that shape."""
    import types

    from test_trainer import tiny_config

    from reflectioncoder.model import count_parameters
    from reflectioncoder.train import distributed, placement

    model = build_tiny_llama(300, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=1,
                             intermediate_size=688, seed=seed)  # fmt: skip
    cfg = tiny_config(
        tmp_path,
        seed,
        extra=(
            "model.gradient_checkpointing=true",
            "model.checkpointing_policy=auto",
            "model.activation_offload=false",  # no layer offloaded: the GPU's peak is not asked
        ),
    )
    tokens, shape = cfg.packing.max_tokens, ModelShape.from_model(model)
    # a device whose activation budget is one save_gemms, one mlp_rerun and two full layers
    want = mp.activation_bytes(("save_gemms", "mlp_rerun", "full", "full"), tokens, shape, 4)
    resident = mp.resident_bytes(count_parameters(model), stage=0, ranks=1, autocast=True)
    total = (want + resident + mp.RESERVE_FIXED) / (1 - mp.RESERVE_SHARE) + 1
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(total_memory=total))  # fmt: skip
    seen, plan_run = [], mp.plan_run
    monkeypatch.setattr(mp, "plan_run", lambda *a, **k: (seen.append(k), plan_run(*a, **k))[1])
    info = distributed.DistInfo(0, 1, 0, torch.device("cuda"), deepspeed=False)
    placement.plan_memory(cfg, model, info, torch.float32)
    (called,) = seen
    assert called["shape"] == shape
    assert (shape.heads, shape.kv_heads, shape.kv_width, shape.intermediate) == (8, 1, 32, 688)
    budget = total - resident - mp.reserve_bytes(total)
    assert model.rc_checkpointing_plan == mp.plan_layers(4, tokens, shape, budget, 4)
    assert model.rc_checkpointing_plan == ("save_gemms", "mlp_rerun", "full", "full")
