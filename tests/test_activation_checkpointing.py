"""The per-layer checkpointing plan: planned from the memory a device has left, and applied
layer by layer with the same loss and gradients as no checkpointing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from reflectioncoder.activation_checkpointing import apply_plan, named_plan
from reflectioncoder.config import ModelConfig
from reflectioncoder.memory_plan import (
    activation_budget,
    activation_bytes,
    can_offload,
    kept_bytes,
    needs_offload,
    plan_layers,
    plan_run,
    rerun_cost,
    resident_bytes,
)
from reflectioncoder.model import build_tiny_llama, forward_hidden, prepare_model
from reflectioncoder.train.flops import ModelShape

# CodeLlama-7B: 32 layers, D = 4096, 6.74B parameters; 16K-token micro-batches.
LAYERS, D, T, P = 32, 4096, 16384, 6_738_546_688
S7 = ModelShape.llama(4096, 11008, 32, 32, 32, 32016)  # CodeLlama-7B's widths
H100 = 81559 * 2**20


def test_plan_is_the_least_recompute_that_fits():
    none_all = activation_bytes(("none",) * LAYERS, T, S7)
    full_all = activation_bytes(("full",) * LAYERS, T, S7)
    assert plan_layers(LAYERS, T, S7, none_all) == ("none",) * LAYERS
    assert plan_layers(LAYERS, T, S7, full_all - 1) == ("full",) * LAYERS  # nothing fits
    previous = None
    for budget in torch.linspace(full_all + 1e6, none_all, 40).tolist():
        plan = plan_layers(LAYERS, T, S7, budget)
        assert len(plan) == LAYERS and activation_bytes(plan, T, S7) <= budget
        # more memory never recomputes more: the summed cost (with mlp_rerun between
        # save_gemms and full, the count of full layers alone may rise as mlp_rerun ones go)
        recomputed = sum(rerun_cost(S7)[p] for p in plan)
        if previous is not None:
            assert recomputed <= previous + 1e-9
        previous = recomputed
        # no layer could be moved one policy up within the budget
        for policy, better in (("full", "mlp_rerun"), ("mlp_rerun", "save_gemms")):
            if policy in plan:
                up = list(plan)
                up[up.index(policy)] = better
                assert activation_bytes(up, T, S7) > budget


def test_save_gemms_first_then_none():
    one_save = activation_bytes(("save_gemms",) + ("full",) * (LAYERS - 1), T, S7)
    assert plan_layers(LAYERS, T, S7, one_save) == ("save_gemms",) + ("full",) * (LAYERS - 1)
    # a bf16 layer's bytes: counts of the widths (KEPT_WIDTHS), 2 bytes each, and fp32 lse
    assert kept_bytes("none", T, S7) == pytest.approx((10 * D + 4 * 11008) * 2 * T + 4 * 32 * T)
    assert kept_bytes("full", T, S7, element_bytes=4) == pytest.approx(4 * T * D)


def test_resident_bytes_by_engine():
    assert resident_bytes(P, stage=1, ranks=8) == pytest.approx(P * (2 + 4 + 12 / 8))
    assert resident_bytes(P, stage=0, ranks=1) == pytest.approx(P * (2 + 6 + 12))
    assert resident_bytes(P, stage=0, ranks=1, autocast=True) == pytest.approx(16 * P)
    # stage 1 offloaded runs as stage 2 (deepspeed_config.offloaded_stage): no whole fp32 grad_accum
    # beside the fp32 partition (tests/test_zero_fp32_sums.py)
    # one process offloaded (local_engine.LocalEngine): bf16 weights and the whole fp32 sums
    for stage in (0, 1, 2):
        offloaded = resident_bytes(P, stage=stage, ranks=1, offload=True)
        assert offloaded == pytest.approx(6 * P + 2**30)
    assert resident_bytes(P, stage=3, ranks=8) == pytest.approx(P * (2 + 4 + 12) / 8 + 2**30)


def test_one_h100_offloads_and_eight_do_not():
    assert needs_offload(H100, P, LAYERS, T, S7, stage=1, ranks=1)
    assert not needs_offload(H100, P, LAYERS, T, S7, stage=1, ranks=8)
    memory = plan_run("auto", True, layers=LAYERS, tokens=T, shape=S7, params=P,
                      stage=1, ranks=1, offload="auto", device_bytes=H100)  # fmt: skip
    plan = memory.layers
    assert memory.offload and "full" in plan and set(plan) != {"full"} and memory.fits
    budget = activation_budget(H100, resident_bytes(P, stage=1, ranks=1, offload=True))
    assert activation_bytes(plan, T, S7) == memory.activation_bytes <= budget == memory.budget_bytes
    # one process on one rank offloads as ZeRO-1 does (its device keeps the same 6P + buckets)
    assert needs_offload(H100, P, LAYERS, T, S7, stage=0, ranks=1)
    local = plan_run("auto", True, layers=LAYERS, tokens=T, shape=S7, params=P,
                     stage=0, ranks=1, offload="auto", device_bytes=H100)  # fmt: skip
    assert local == memory
    # ... but not on several ranks (DDP: no host optimizer), where a 7B does not fit, and the
    # plan says so
    assert not can_offload(0, 2) and can_offload(0, 1) and not can_offload(3, 1)
    eight = plan_run("auto", True, layers=LAYERS, tokens=T, shape=S7, params=P,
                     stage=0, ranks=8, offload="auto", device_bytes=H100)  # fmt: skip
    assert not eight.offload and not eight.fits
    # an explicit choice is kept; a CPU run plans `full` and never offloads by itself
    memory = plan_run("auto", True, layers=LAYERS, tokens=T, shape=S7, params=P,
                      stage=1, ranks=1, offload=False, device_bytes=None)  # fmt: skip
    assert memory.layers == ("full",) * LAYERS and not memory.offload and memory.fits
    plan = plan_run("alternate", True, layers=4, tokens=T, shape=S7, params=P,
                    stage=0, ranks=1, offload="auto", device_bytes=H100).layers  # fmt: skip
    assert plan == ("full", "none", "full", "none") == named_plan("alternate", 4)
    plan = plan_run("auto", False, layers=4, tokens=T, shape=S7, params=P,
                    stage=0, ranks=1, offload="auto", device_bytes=H100).layers  # fmt: skip
    assert plan == ("none",) * 4


def _loss_and_grads(plan):
    model = build_tiny_llama(256, hidden_size=64, num_layers=3, intermediate_size=176, seed=2)
    prepare_model(model, liger=False)
    apply_plan(model, plan)
    runs = [0] * len(plan)
    for i, layer in enumerate(model.base_model.layers):
        layer.mlp.register_forward_pre_hook(lambda *_, i=i: runs.__setitem__(i, runs[i] + 1))
    ids = torch.randint(0, 256, (96,), generator=torch.Generator().manual_seed(3))
    lens = [40, 56]  # two packed sequences
    batch = SimpleNamespace(
        input_ids=ids,
        position_ids=torch.cat([torch.arange(n) for n in lens]),
        cu_seqlens=torch.tensor([0, 40, 96], dtype=torch.int32),
        max_seqlen=56,
        seq_lens=lens,
    )
    logits = forward_hidden(model, batch) @ model.lm_head.weight.T
    loss = torch.nn.functional.cross_entropy(logits[:-1], ids[1:])
    loss.backward()
    assert runs == [1 if p == "none" else 2 for p in plan]  # recomputed layers ran again
    # (a pre-hook: the recompute stops once the last tensor the backward needs is back)
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_a_mixed_plan_gives_the_gradients_of_no_checkpointing():
    want_loss, want = _loss_and_grads(("none",) * 3)
    loss, grads = _loss_and_grads(("full", "save_gemms", "none"))
    assert loss == want_loss
    for name, g in want.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_apply_plan_sets_each_layer():
    model = build_tiny_llama(256, hidden_size=32, num_layers=3, seed=0)
    apply_plan(model, ("full", "save_gemms", "none"))
    flags = [layer.gradient_checkpointing for layer in model.base_model.layers]
    assert flags == [True, True, False]
    assert model.rc_checkpointing_plan == ("full", "save_gemms", "none")
    with pytest.raises(ValueError, match="2 policies for 3 layers"):
        apply_plan(model, ("full", "full"))
    with pytest.raises(ValueError, match="model.checkpointing_policy"):
        ModelConfig(arch={"hidden_size": 8}, checkpointing_policy="most")
    assert ModelConfig(arch={"hidden_size": 8}).checkpointing_policy == "auto"


@pytest.mark.slow  # ~40 s of tracing on the shared cores
def test_compiled_layers_take_a_mixed_plan_without_breaks(seed):
    """The default on CUDA: compiled layers under an ``auto`` plan. One graph per policy, no
    graph break, no recompile across micro-batches of other lengths, eager's gradients."""
    import copy

    import torch._dynamo
    from test_compile import matches_eager_without_breaks
    from torch._dynamo.utils import counters

    from reflectioncoder.model import compile_layers

    torch._dynamo.reset()
    counters.clear()
    model = build_tiny_llama(300, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2,
                             seed=seed)  # fmt: skip
    prepare_model(model, liger=False)
    apply_plan(model, ("full", "save_gemms", "none"))
    eager = copy.deepcopy(model)
    compile_layers(model, backend="aot_eager")
    matches_eager_without_breaks(model, eager, seed)
    assert counters["stats"]["unique_graphs"] == 3 == counters["frames"]["total"]
