"""Activation offload (the ``offload`` layer policy): on the CPU the host is the device, so the
same path runs (each GEMM / attention output copied out in the forward, back ahead of the
layer's backward, the element-wise ops rerun): the loss and gradients of no checkpointing, a
mixed plan through ``Trainer.train_step`` with no host sync in a micro-batch, and the planner's
rule."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from reflectioncoder import activation_checkpointing as ac
from reflectioncoder import activation_offload
from reflectioncoder import memory_plan as mp
from reflectioncoder.config import ModelConfig
from reflectioncoder.train.flops import ModelShape

LAYERS, D, T = 32, 4096, 16384  # CodeLlama-7B at 16K-token micro-batches
S7 = ModelShape.llama(4096, 11008, 32, 32, 32, 32016)  # CodeLlama-7B's widths
SIZES = {
    "vocab": 256,
    "arch": {"hidden_size": 64, "intermediate_size": 176, "num_heads": 4, "num_kv_heads": 2},
}
MIXED = ("offload", "save_gemms", "offload", "full", "none")


def _run(plan, seed, calls=None):
    from bench.bench_activation_memory import _model_and_batch
    from reflectioncoder.train.loss_module import ReflectionLossModule

    model, batch = _model_and_batch(len(plan), "full", SIZES, tokens=400, seed=seed)
    ac.apply_plan(model, plan)
    loss, *_ = ReflectionLossModule(model)(batch)
    schedule = model.rc_offload
    sent = schedule.offloaded_bytes() if schedule is not None else 0
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, sent, schedule


def test_offload_gives_the_loss_and_gradients_of_no_checkpointing(seed, monkeypatch):
    taken, prefetched = Counter(), []
    take, prefetch = activation_offload._Saved.take, activation_offload.LayerStore.prefetch

    def counting_take(self):
        taken["outputs"] += 1
        return take(self)

    def counting_prefetch(self):
        prefetched.append(self.bytes)
        return prefetch(self)

    monkeypatch.setattr(activation_offload._Saved, "take", counting_take)
    monkeypatch.setattr(activation_offload.LayerStore, "prefetch", counting_prefetch)
    for plan in (MIXED, ("offload",) * 3):
        want_loss, want, sent, schedule = _run(("none",) * len(plan), seed)
        assert sent == 0 and schedule is None
        taken.clear(), prefetched.clear()
        loss, grads, sent, schedule = _run(plan, seed)
        assert loss == want_loss
        assert grads.keys() == want.keys()
        for name, g in grads.items():
            torch.testing.assert_close(g, want[name], rtol=1e-5, atol=1e-6, msg=name)
        # every offloaded layer sent its outputs out and took them back in its recompute,
        # each fetched ahead (the final norm's hook, then the offloaded layer above's)
        assert sent > 0 and taken["outputs"] >= 9 * plan.count("offload")
        assert len(prefetched) == plan.count("offload") and all(prefetched)
        assert schedule.offloaded_bytes() == 0  # the stores went with the graph


@pytest.mark.slow
def test_kept_outputs_survive_liger_rope_in_place(seed, monkeypatch):
    """Liger's RoPE (prepare_model's default on CUDA) rotates q and k in place, in the q_proj /
    k_proj GEMM outputs themselves: a layer that keeps those outputs (save_gemms; offload, whose
    copy to the host may still be in flight on the GPU: modelled here by a copy that lands only
    after the layer's forward) must hand RoPE copies, or its recompute rotates them twice."""
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from transformers.models.llama import modeling_llama

    from reflectioncoder.model import build_tiny_llama

    def late_copy(self, tensor, stream):  # the copy out lands after the ops that follow
        self.device, self.stream, self.back, self.host = tensor.device, None, None, tensor.detach()

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", liger_rotary_pos_emb)
    monkeypatch.setattr(activation_offload._Saved, "__init__", late_copy)
    ids = torch.randint(0, 64, (1, 24))

    def grads(plan):
        model = build_tiny_llama(64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                 seed=seed)  # fmt: skip
        model.train().set_attn_implementation("sdpa")  # Liger's RoPE on a plain batch
        ac.apply_plan(model, plan)
        model(input_ids=ids).logits.square().mean().backward()
        return {n: p.grad for n, p in model.named_parameters()}

    want = grads(("none", "none"))
    for plan in (("offload", "offload"), ("save_gemms", "save_gemms")):
        for name, g in grads(plan).items():
            msg = f"{plan[0]}: {name}"
            torch.testing.assert_close(g, want[name], rtol=1e-5, atol=1e-6, msg=msg)


def test_torch_varlen_attention_is_kept_not_rerun():
    """torch's varlen attention (``model.attention: torch_varlen``) is one custom op to a
    dispatch mode: ``save_gemms`` and ``offload`` keep its outputs, so a checkpointed layer
    runs it once, not again in its recompute (a CPU kernel stands in for its CUDA one)."""
    pytest.importorskip("torch.nn.attention.varlen")  # torch >= 2.9
    calls = []

    def forward(q, k, v, *args, **kwargs):
        calls.append("forward")
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True
        )
        return out.transpose(0, 1), q.new_zeros(q.shape[1], q.shape[0]), q.new_zeros(2)

    def backward(grad, q, k, v, *args, **kwargs):
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

    cu = torch.tensor([0, 8], dtype=torch.int32)

    def layer(x):
        y = x * 2  # rerun in the recompute
        out, _, _ = torch.ops.torch_attn._varlen_attn(y, y, y, cu, cu, 8, 8, True)
        return out.sin()

    lib = torch.library.Library("torch_attn", "IMPL")
    try:
        lib.impl("_varlen_attn", forward, "CPU")
        lib.impl("_varlen_attn_backward", backward, "CPU")
        offload = activation_offload.LayerStore(activation_offload.OffloadSchedule(ac._kept_ops()))
        for context in (ac._save_gemms_context, offload.contexts):
            calls.clear()
            x = torch.randn(8, 2, 4, requires_grad=True)
            checkpoint(layer, x, use_reentrant=False, context_fn=context).sum().backward()
            assert calls == ["forward"], context
    finally:
        lib._destroy()


def test_offload_through_train_step_without_host_syncs(tmp_path, seed):
    """A mixed plan through ``Trainer.train_step``: the losses and weights of a run without
    checkpointing, and no host sync in a micro-batch (one per step, as without offload)."""
    from test_host_syncs import SyncCounter
    from test_trainer import tiny_config

    from reflectioncoder.train.trainer import Trainer

    arch = ("model.arch={hidden_size: 32, intermediate_size: 48, num_layers: 5, num_heads: 4, "
            "num_kv_heads: 2, max_position_embeddings: 512}")  # fmt: skip
    extra = (arch, "packing.max_tokens=160", "logging.split_ce=true", "logging.log_every=1")
    runs = {}
    for name, ckpt in (("none", "false"), ("offload", "true")):
        on = (f"model.gradient_checkpointing={ckpt}", "model.checkpointing_policy=offload")
        trainer = Trainer(tiny_config(tmp_path / name, seed, n=12, extra=extra + on))
        try:
            if name == "offload":
                assert trainer.model.rc_checkpointing_plan == ("offload",) * 5  # the config's
                ac.apply_plan(trainer.model, MIXED)
            losses = [trainer.train_step()["loss"]]
            trainer.ahead.pending.result()
            micro_batches = len(trainer.ahead.pending.result().batches)
            with SyncCounter() as counter:
                losses.append(trainer.train_step()["loss"])
            assert micro_batches >= 2
            assert len(counter.syncs) == 1, counter.syncs
            weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
            runs[name] = losses, weights
        finally:
            trainer.close()
    assert runs["offload"][0] == pytest.approx(runs["none"][0], rel=1e-6)
    for name, w in runs["none"][1].items():
        torch.testing.assert_close(runs["offload"][1][name], w, rtol=1e-5, atol=1e-6, msg=name)


def test_the_rule_offloads_the_first_layers_spaced_and_recomputes_less():
    per = mp.offloaded_bytes(T, S7)
    forward_s = mp.layer_forward_s(202_383_360, T, 989e12)
    count, every = mp.offload_rule(LAYERS, T, S7, forward_s, mp.link_bytes_s(1))
    # out during the forward of the layers after the first; back within the layers' backward
    assert count * per <= mp.PCIE_BYTES_S * (LAYERS - 1) * forward_s < (count + 1) * per
    assert (every - 1) * 2 * forward_s < per / mp.PCIE_BYTES_S <= every * 2 * forward_s
    assert mp.link_bytes_s(8) == mp.HOST_DMA_BYTES_S / 8 < mp.link_bytes_s(1) == mp.PCIE_BYTES_S
    assert mp.offload_rule(LAYERS, T, S7, forward_s, mp.link_bytes_s(8))[0] < count
    budget = mp.activation_bytes(("save_gemms",) * 20 + ("full",) * 12, T, S7)
    plain = mp.plan_layers(LAYERS, T, S7, budget)
    plan = mp.plan_layers(LAYERS, T, S7, budget, offload=(count, every))
    assert mp.activation_bytes(plan, T, S7) <= budget
    assert plan.count("full") < plain.count("full")
    where = [i for i, p in enumerate(plan) if p == "offload"]
    assert 0 < len(where) <= count and where == list(range(0, every * len(where), every))
    # in flight: two offloaded layers' outputs on the device beside what the others keep
    assert mp.activation_bytes(("offload",) * 3, T, S7) == pytest.approx(
        3 * mp.kept_bytes("offload", T, S7) + mp.kept_bytes("none", T, S7) + 2 * per
    )
    assert mp.plan_layers(LAYERS, T, S7, budget, offload=(0, 1)) == plain


def test_the_config_names_the_policy_and_the_switch():
    assert ModelConfig(arch={"hidden_size": 8}, checkpointing_policy="offload")
    with pytest.raises(ValueError, match="model.checkpointing_policy: must be full .* offload"):
        ModelConfig(arch={"hidden_size": 8}, checkpointing_policy="offlaod")
    with pytest.raises(ValueError, match="model.activation_offload: must be true | false"):
        ModelConfig(arch={"hidden_size": 8}, activation_offload="yes")
    assert ModelConfig(arch={"hidden_size": 8}).activation_offload is True


def test_offloaded_layers_stay_out_of_compile():
    from reflectioncoder.model import build_tiny_llama, compile_layers

    model = build_tiny_llama(256, hidden_size=32, num_layers=3, seed=0)
    ac.apply_plan(model, ("offload", "save_gemms", "full"))
    compile_layers(model, backend="eager")  # marks layers compiled; nothing traced yet
    compiled = [layer._compiled_call_impl is not None for layer in model.base_model.layers]
    assert compiled == [False, True, True]
    ac.apply_plan(model, ("none",) * 3)  # a new plan drops the schedule and its hook
    assert model.rc_offload is None and model.rc_offload_norm_hook is None


def test_the_step_model_plans_offload_as_the_trainer_and_charges_late_copies():
    from bench import step_model as sm

    assert (sm.PCIE, sm.GEMM_EFF) == (mp.PCIE_BYTES_S, mp.GEMM_EFF)  # one figure each
    arch, work = sm.ARCHS["CodeLlama-7B"], sm.reflection_workload()
    # one H100 at ZeRO-2: at ZeRO-1 the offloaded optimizer's whole fp32 grad_accum (DeepSpeed's,
    # tests/test_zero_fp32_sums.py) leaves activation offload no room
    for gpus, engine in ((1, "zero2"), (8, "zero1")):
        base = sm.default_levers(arch, "H100", gpus, engine, work)
        default = sm.predict(arch, "H100", gpus, engine, base, work)
        off = sm.replace(base, activation_offload=False)
        resident = sm.predict(arch, "H100", gpus, engine, off, work)
        assert "offload" in default.plan and "offload" not in resident.plan
        assert default.plan.count("full") < resident.plan.count("full")
        assert (
            default.step_s < resident.step_s and default.split_s["activation_offload_exposed"] == 0
        )
        assert sm.fits(default.memory_bytes, "H100")
        # every layer offloaded: more than the link carries in time, and the model charges it
        every = sm.predict(
            arch, "H100", gpus, engine, sm.replace(base, checkpointing="offload"), work
        )
        assert every.split_s["activation_offload_exposed"] > 0
    # the wait: none when each copy has a layer's backward, the excess when it has not
    plan = ("offload", "none", "offload", "none")
    one = mp.offloaded_bytes(T, S7) / mp.link_bytes_s(1)
    assert sm.offload_exposed_s(plan, T, S7, 1, one, one) == 0
    assert sm.offload_exposed_s(("offload",) * 3, T, S7, 1, one, one / 2) > 0


@pytest.mark.slow  # ~10 s of tracing on the shared cores
def test_compiled_neighbours_of_an_offloaded_layer(seed):
    """The default on CUDA compiles the other layers: eager's losses and gradients, no graph
    break, one graph each for the compiled policies, none for the offloaded layer."""
    import copy

    import torch._dynamo
    from test_compile import matches_eager_without_breaks
    from torch._dynamo.utils import counters

    from reflectioncoder.model import build_tiny_llama, compile_layers, prepare_model

    torch._dynamo.reset()
    counters.clear()
    model = build_tiny_llama(300, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2,
                             seed=seed)  # fmt: skip
    prepare_model(model, liger=False)
    eager = copy.deepcopy(model)
    ac.apply_plan(model, ("offload", "save_gemms", "full"))
    compile_layers(model, backend="aot_eager")
    matches_eager_without_breaks(model, eager, seed)
    assert counters["stats"]["unique_graphs"] == 2 == counters["frames"]["total"]
