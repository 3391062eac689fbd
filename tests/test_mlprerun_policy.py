"""The ``mlp_rerun`` layer policy (activation_checkpointing): it keeps what ``save_gemms`` keeps
of the attention half and nothing of the MLP, so the backward runs the MLP's gate and up GEMMs
again (not down_proj) and nothing of the attention; the gradients of no checkpointing (fp32
exactly, bf16 by its rule), alone and in mixed plans with the other policies (offload
included), eager and compiled, for a model loaded from disk; the bytes it holds (the bench's
heap measure), the FLOPs torch counts, the planner and the step model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_flops import SIZES as FLOP_SIZES
from test_flops import _batch, _counted
from test_kept_outputs import LAYERS, _backward, liger_stand_ins  # noqa: F401 (a fixture)

from reflectioncoder import activation_checkpointing as ac
from reflectioncoder import memory_plan as mp
from reflectioncoder.config import ModelConfig
from reflectioncoder.model import build_tiny_llama, forward_hidden, load_model, prepare_model
from reflectioncoder.train.flops import ModelShape, batch_flops, recomputed_share
from reflectioncoder.train.loss_module import ReflectionLossModule


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
@pytest.mark.parametrize("liger", [False, True], ids=["torch", "liger"])
def test_backward_reruns_gate_and_up_only(liger, fused, seed, request):
    """The backward's GEMMs: no checkpointing's, plus gate and up a layer (one fused gate_up),
    no attention forward; the gradients are no checkpointing's."""
    if liger:
        request.getfixturevalue("liger_stand_ins")  # test_kept_outputs' fixture
    want_gemms, want = _backward("none", liger, fused, seed)
    gemms, grads = _backward("mlp_rerun", liger, fused, seed)
    again = LAYERS if fused else 2 * LAYERS
    assert gemms["mm"] == want_gemms["mm"] + again
    assert {k: v for k, v in gemms.items() if k != "mm"} == {
        k: v for k, v in want_gemms.items() if k != "mm"
    }  # the attention's backward only, no forward again
    for name, g in grads.items():
        torch.testing.assert_close(g, want[name], rtol=1e-6, atol=1e-7, msg=name)
    full, _ = _backward("full", liger, fused, seed)
    assert full["mm"] > gemms["mm"]  # full reruns q / k / v / o too


def test_a_copied_model_and_one_after_a_failed_forward_rerun_their_mlps(seed):
    """The MLPs' hooks are the modules' own, so a deep copy (the compile tests' eager twin)
    reruns gate / up too; after a forward that raised inside an MLP the next one keeps the
    attention half as before."""
    import copy

    from test_kept_outputs import _CountGemms, _model

    def backward_gemms(model) -> int:
        loss = model(input_ids=torch.arange(24)[None]).logits.square().mean()
        with _CountGemms() as count:
            loss.backward()
        return count.gemms["mm"]

    model = _model(False, False, torch.float32, seed)
    ac.apply_plan(model, ("none",) * LAYERS)
    want = backward_gemms(model)
    ac.apply_plan(model, ("mlp_rerun",) * LAYERS)
    assert backward_gemms(copy.deepcopy(model)) == want + 2 * LAYERS
    down = model.model.layers[0].mlp.down_proj.weight
    data, down.data = down.data, torch.zeros(1)  # a shape error inside the MLP
    with pytest.raises(RuntimeError):
        model(input_ids=torch.arange(24)[None])
    down.data = data
    assert backward_gemms(model) == want + 2 * LAYERS  # the next forward counts afresh


def test_bf16_gradients_of_no_checkpointing(seed):
    _, want = _backward("none", False, False, seed, dtype=torch.bfloat16)
    _, grads = _backward("mlp_rerun", False, False, seed, dtype=torch.bfloat16)
    for name, g in grads.items():
        torch.testing.assert_close(g, want[name], msg=name)  # bf16's rule


MIXED = ("mlp_rerun", "offload", "full", "save_gemms", "mlp_rerun", "none")


def _loaded_grads(path, plan):
    """(loss, gradients) of a model loaded from ``path`` with ``plan``, two packed sequences."""
    model = load_model(path, dtype=torch.float32)
    prepare_model(model, liger=False)
    ac.apply_plan(model, plan)
    ids = torch.randint(0, 256, (96,), generator=torch.Generator().manual_seed(3))
    batch = SimpleNamespace(
        input_ids=ids,
        position_ids=torch.cat([torch.arange(40), torch.arange(56)]),
        cu_seqlens=torch.tensor([0, 40, 96], dtype=torch.int32),
        max_seqlen=56,
        seq_lens=[40, 56],
    )
    logits = forward_hidden(model, batch) @ model.lm_head.weight.T
    loss = torch.nn.functional.cross_entropy(logits[:-1], ids[1:])
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_mixed_plans_from_disk_give_the_gradients_of_no_checkpointing(tmp_path):
    """A model saved and loaded as the trainer loads it; every policy beside mlp_rerun."""
    build_tiny_llama(256, hidden_size=64, num_layers=len(MIXED), intermediate_size=176,
                     seed=2).save_pretrained(tmp_path)  # fmt: skip
    want_loss, want = _loaded_grads(tmp_path, ("none",) * len(MIXED))
    for plan in (MIXED, ("mlp_rerun",) * len(MIXED)):
        loss, grads = _loaded_grads(tmp_path, plan)
        assert loss == want_loss
        for name, g in want.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=f"{plan} {name}")


@pytest.mark.slow  # 6-16 s alone, more beside the other compile tests; the fast suite keeps
# the one-layer compiled test below
def test_compiled_mlp_rerun_layers_match_eager_without_breaks(seed):
    """Compiled (torch's selective checkpoint with the same rule), a mixed plan: eager's
    gradients, no graph break, one graph a policy."""
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
    ac.apply_plan(model, ("mlp_rerun", "save_gemms", "mlp_rerun"))
    eager = copy.deepcopy(model)
    compile_layers(model, backend="aot_eager")
    matches_eager_without_breaks(model, eager, seed)
    assert counters["stats"]["unique_graphs"] == 2 == counters["frames"]["total"]


def test_compiled_backward_reruns_gate_and_up_not_the_attention(seed, monkeypatch):
    """Compiled one-layer model: the backward graph runs 2 GEMMs more than no checkpointing's
    (gate, up) and the attention's forward no more often (2: the forward and the custom op's
    backward rerun on the CPU's SDPA), where ``full`` runs it a third time."""
    from test_compile import attention_forwards_per_policy, counted_attention_forwards

    ops: dict = {}
    calls = counted_attention_forwards(monkeypatch)
    runs = attention_forwards_per_policy(seed, calls, policies=("none", "mlp_rerun"),
                                         backward_ops=ops)  # fmt: skip
    assert runs == {"none": 2, "mlp_rerun": 2}
    assert ops["mlp_rerun"]["mm"] == ops["none"]["mm"] + 2


def test_holds_the_attention_halfs_outputs_only():
    """The heap a forward leaves held per token and layer (bench_activation_memory's measure),
    ``mlp_rerun`` less ``full``: the kept outputs of q, k, v, the attention (output and
    log-sum-exp) and o, fp32; ``save_gemms`` holds gate's and up's (2 x 4 I) more."""
    from bench.bench_activation_memory import per_token_and_layer

    sizes = {"vocab": 256, "arch": {"hidden_size": 64, "intermediate_size": 176, "num_heads": 4,
                                    "num_kv_heads": 2}}  # fmt: skip
    d, i, heads, kv = 64, 176, 4, 32
    kept = 4 * (d + 2 * kv + d + heads + d)
    per_token_and_layer("full", sizes, 4096)  # the process's first allocations: not measured
    per = {p: per_token_and_layer(p, sizes, 4096)["bytes_per_token_layer"] for p in
           ("mlp_rerun", "save_gemms", "full")}  # fmt: skip
    extra = per["mlp_rerun"] - per["full"]
    assert kept - 4 * d / 2 < extra < kept + 4 * d / 2, (extra, kept)
    gate_up = per["save_gemms"] - per["mlp_rerun"]
    assert 2 * 4 * i - 4 * d / 2 < gate_up < 2 * 4 * i + 4 * d / 2, (gate_up, 8 * i)


@pytest.mark.parametrize("policy", ["mlp_rerun", "save_gemms", "full"])
def test_flops_counted_by_torch(seed, policy):
    """torch's FLOP counter over a packed micro-batch: ``mlp_rerun`` adds exactly the gate and
    up GEMMs' forward (2 x their parameters a token) to no checkpointing's count, and the
    step's hardware FLOPs (HFU) count it; ``save_gemms`` adds none, ``full`` more."""
    vocab = 1000
    batch = _batch(seed, vocab)

    def counted(policy):
        model = build_tiny_llama(vocab, seed=seed, **FLOP_SIZES)
        on = policy != "none"
        prepare_model(model, liger=False, gradient_checkpointing=on,
                      checkpointing_policy=policy if on else "full")  # fmt: skip
        return model, _counted(ReflectionLossModule(model), batch)

    model, flops = counted(policy)
    _, none = counted("none")
    shape = ModelShape.from_model(model)
    mine = batch_flops(shape, batch, recompute=recomputed_share(model.rc_checkpointing_plan))
    assert flops == pytest.approx(mine.hardware, rel=0.005)
    gate_up = 2 * shape.mlp_in_params * batch.num_tokens
    d, i = FLOP_SIZES["hidden_size"], FLOP_SIZES["intermediate_size"]
    assert shape.mlp_in_params == FLOP_SIZES["num_layers"] * 2 * d * i
    again = flops - none
    assert mine.hardware - mine.model == pytest.approx(again, rel=0.005)
    if policy == "mlp_rerun":
        assert again == gate_up
    elif policy == "save_gemms":
        assert again == 0
    else:
        assert again > 1.5 * gate_up


# CodeLlama-7B: 32 layers, D = 4096; 16K-token micro-batches.
LAYERS_7B, D, T = 32, 4096, 16384
S7 = ModelShape.llama(4096, 11008, 32, 32, 32, 32016)  # CodeLlama-7B's widths


def test_planner_puts_mlp_rerun_between_save_gemms_and_full():
    """The costs order the policies; a budget of one mlp_rerun layer over all-full gives that
    layer mlp_rerun (save_gemms does not fit); the plan is the same each call."""
    cost = mp.rerun_cost(S7)
    assert [cost[p] for p in ac.LAYER_POLICIES] == sorted(cost[p] for p in ac.LAYER_POLICIES)
    assert 0 < cost["mlp_rerun"] < cost["full"]
    one = ("mlp_rerun",) + ("full",) * (LAYERS_7B - 1)
    budget = mp.activation_bytes(one, T, S7)
    assert mp.activation_bytes(("save_gemms",) + ("full",) * (LAYERS_7B - 1), T, S7) > budget
    assert (
        mp.plan_layers(LAYERS_7B, T, S7, budget) == one == mp.plan_layers(LAYERS_7B, T, S7, budget)
    )
    # input, o_proj, q, attention output, k, v (multi-head: D each), bf16; fp32 lse
    assert mp.kept_bytes("mlp_rerun", T, S7) == pytest.approx(6 * D * 2 * T + 4 * 32 * T)
    assert ac.named_plan("mlp_rerun", 3) == ("mlp_rerun",) * 3


def test_config_and_named_policy():
    assert ModelConfig(arch={"hidden_size": 8}, checkpointing_policy="mlp_rerun")
    with pytest.raises(ValueError, match="mlp_rerun"):
        ModelConfig(arch={"hidden_size": 8}, checkpointing_policy="mlp")
    model = build_tiny_llama(64, hidden_size=32, num_layers=2, seed=0)
    prepare_model(model, liger=False, gradient_checkpointing=True, checkpointing_policy="mlp_rerun")
    assert model.rc_checkpointing_plan == ("mlp_rerun", "mlp_rerun")
    with pytest.raises(ValueError, match="mlp_rerun"):
        ac.set_checkpointing(model, True, "mlp")


def test_step_model_costs_it_and_its_default_uses_it(monkeypatch):
    """The lever row, all layers mlp_rerun: between save_gemms and full in time and memory; the
    1 x H100 default plans an mlp_rerun layer and is faster than its plan without it
    (mlp_rerun costed as full: the planner's ties take the fewest)."""
    from dataclasses import replace

    from bench import step_model as sm

    arch, work = sm.ARCHS["CodeLlama-7B"], sm.reflection_workload()
    base = sm.default_levers(arch, "H100", 8, "zero1", work)
    preds = {p: sm.predict(arch, "H100", 8, "zero1", replace(base, checkpointing=p), work)
             for p in ("save_gemms", "mlp_rerun", "full")}  # fmt: skip
    assert preds["save_gemms"].step_s < preds["mlp_rerun"].step_s < preds["full"].step_s
    assert preds["full"].memory_bytes < preds["mlp_rerun"].memory_bytes
    assert preds["mlp_rerun"].memory_bytes < preds["save_gemms"].memory_bytes
    # one H100 (``local``): the 7B's widths put one layer between save_gemms and full
    one_gpu = sm.default_levers(arch, "H100", 1, "local", work)
    default = sm.predict(arch, "H100", 1, "local", one_gpu, work)
    assert "mlp_rerun" in default.plan
    shape_cost = mp.rerun_cost
    monkeypatch.setattr(
        mp,
        "rerun_cost",
        lambda shape: {**shape_cost(shape), "mlp_rerun": shape_cost(shape)["full"]},
    )
    without = sm.predict(arch, "H100", 1, "local", one_gpu, work)
    assert "mlp_rerun" not in without.plan and without.step_s > default.step_s
    assert {"checkpointing=mlp_rerun"} <= {
        r["lever"] for r in sm.model_rows() if r["model"] == "CodeLlama-7B"
    }
