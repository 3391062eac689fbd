"""Capabilities added since the GPU call was last reviewed, checked on a real device (marker
``gpu``), each against a float64 reference on the CPU with a tolerance per dtype:

- the fused loss's LM-head options: ``lm_head_bias=``, the logit scale (on h and b, as
  ``ReflectionLossModule`` applies it) and the final-logit soft cap (``softcap=``), together;
  and a Gemma 2's own soft caps (final logits and attention scores) through the loss module;
- the MoE router's balancing loss (reflectioncoder/router_loss.py) through a packed micro-batch's
  forward and backward (what the engine runs in a train step) of a tiny Mixtral and Qwen3-MoE,
  transformers' default experts kernel on CUDA;
- ``model.config_overrides`` turning on residual and embedding dropout, with every layer
  checkpointed (``full``) and compiled (inductor, as ``model.compile: auto`` does on CUDA): the
  recompute replays the forward's masks, so loss and gradients equal the same seed's without
  checkpointing (the reference: the same compiled model; dropout masks have no float64 twin).

``bench/gpu_suite.py --parts checks`` runs this file (and tests/test_gpu_kernels.py's compiled
torch_varlen op) as the GPU call's ``checks`` step; each case's errors and tolerance go to
RC_GPU_FIGURES (JSON lines), from which gpu_suite's table is built. Without CUDA the cases skip,
unless RC_TEST_DEVICE=cpu (the dry run: the same checks at the same sizes on the CPU, the
compiled one through ``aot_eager``).
"""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from reference.loss import _weighted_loss

from reflectioncoder.loss import reflection_loss

pytestmark = pytest.mark.gpu
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# ||ours - reference|| / ||reference||: fp32 (no TF32 in the project), bf16 operands
TOL = {"float32": 1e-4, "bfloat16": 3e-2}


def _record(check: str, case: str, dtype: str, errors: dict, tol: float) -> None:
    """One row of figures for gpu_suite's capability table (RC_GPU_FIGURES, when set)."""
    if os.environ.get("RC_GPU_FIGURES"):
        row = {"test": check, "case": case, "dtype": dtype, "errors": errors, "tol": tol}
        with open(os.environ["RC_GPU_FIGURES"], "a") as f:
            f.write(json.dumps(row) + "\n")


def _assert_within(check: str, case: str, dtype: str, errors: dict, tol: float | dict) -> None:
    """Each error within its tolerance (``tol``: one for all, or one per error)."""
    _record(check, case, dtype, errors, tol)
    bound = tol if isinstance(tol, dict) else dict.fromkeys(errors, tol)
    bad = {k: e for k, e in errors.items() if not e <= bound[k]}  # NaN fails too
    assert not bad, f"{check} {case} {dtype}: errors {bad} over {bound}"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


# -- the fused loss's LM-head options ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_head_bias_scale_and_softcap_on_device(device, seed, backend, dtype) -> None:
    """logits = c tanh(s (W h + b) / c) (scale s on h and b, the bias as [W | b] [h; 1], the cap
    c in the fused loss): loss, CE, KL, d h, d W, d b against float64 on the CPU."""
    n, d, v = (256, 128, 1000) if device.type == "cuda" else (16, 16, 40)
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen)
    weight = torch.randn(v, d, generator=gen) * 2 / math.sqrt(d)
    bias = torch.randn(v, generator=gen)
    rows = torch.randperm(n, generator=gen)[: n * 3 // 4].sort().values
    r = len(rows)
    targets = torch.randint(0, v, (r,), generator=gen)
    targets[torch.rand(r, generator=gen) < 0.2] = -100
    pairs = torch.stack([torch.arange(r // 4), torch.arange(r // 4) + r // 2], 1)
    batch = SimpleNamespace(
        loss_rows=rows, targets=targets, ce_weight=torch.rand(r, generator=gen) + 0.05,
        kl_pairs=pairs, kl_weight=torch.rand(r // 4, generator=gen) + 0.05,
    )  # fmt: skip
    scale, cap = 1.5, 8.0
    h, w, b = (x.to(device, DTYPES[dtype]).requires_grad_() for x in (hidden, weight, bias))
    on_device = SimpleNamespace(**{k: t.to(device) for k, t in vars(batch).items()})
    loss, parts = reflection_loss(
        h * scale, on_device, w, backend=backend, lm_head_bias=b * scale, softcap=cap
    )
    loss.backward()
    h64, w64, b64 = (x.detach().double().cpu().requires_grad_() for x in (h, w, b))
    logits = cap * torch.tanh(scale * (h64[rows] @ w64.T + b64) / cap)
    fields = ("targets", "ce_weight", "kl_pairs", "kl_weight")
    want = _weighted_loss(logits, *(getattr(batch, k) for k in fields))
    want[0].backward()
    ours = (loss, parts["ce"], parts["kl"], h.grad, w.grad, b.grad)
    refs = (*want, h64.grad, w64.grad, b64.grad)
    names = ("loss", "ce", "kl", "dh", "dW", "db")
    errors = {k: _rel(a, e) for k, a, e in zip(names, ours, refs, strict=True)}
    _assert_within("head_options", backend, dtype, errors, TOL[dtype])


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_gemma2_soft_caps_in_a_packed_step_on_device(device, seed, dtype) -> None:
    """A tiny Gemma 2 whose caps bind (attention scores and final logits, tests/
    test_heads_softcap.py's): the loss module on the device (the final cap in the fused loss, the
    attention ``auto`` picks for a capped model: a flash kernel's own cap, else sdpa's written-out
    segments) against the same weights in float64 on the CPU through the same module (which
    tests/test_heads_softcap.py holds to transformers' own forward): loss, CE, KL, gradients."""
    import copy

    import transformers as tf

    from reflectioncoder.model import cast_weights, prepare_model
    from reflectioncoder.train.loss_module import ReflectionLossModule

    sizes = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 attn_logit_softcapping=0.05, final_logit_softcapping=0.2)  # fmt: skip
    torch.manual_seed(seed)
    reference = tf.Gemma2ForCausalLM(tf.Gemma2Config(**sizes)).double()
    model = copy.deepcopy(reference).float()
    cast_weights(model, device, DTYPES[dtype])
    prepare_model(model, device=device)
    with torch.no_grad():  # the reference from the device's rounded weights
        for p, q in zip(reference.parameters(), model.parameters(), strict=True):
            p.copy_(q.double().cpu())
    prepare_model(reference, liger=False, attention="sdpa")
    batch = _packed_step(seed)
    results = []
    for m, b in ((model, batch.to(device)), (reference, batch)):
        loss, ce, kl, _ = ReflectionLossModule(m)(b)
        loss.backward()
        results.append([loss, ce, kl, *(p.grad for p in m.parameters())])
    names = ["loss", "ce", "kl", *(f"d_{n}" for n, _ in model.named_parameters())]
    errors = {k: _rel(a, e) for k, a, e in zip(names, *results, strict=True)}
    worst = max(names[3:], key=errors.get)
    figures = {k: errors[k] for k in ("loss", "ce", "kl", worst)}
    _assert_within("soft_caps", "gemma2", dtype, figures, TOL[dtype])


# -- the MoE router's balancing loss in a packed micro-batch -----------------------------------


def _moe(name: str):
    import transformers as tf

    sizes = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, num_experts_per_tok=2,
                 moe_intermediate_size=32, router_aux_loss_coef=0.02,
                 output_router_logits=True)  # fmt: skip
    if name == "mixtral":
        return tf.MixtralForCausalLM(tf.MixtralConfig(**sizes, num_local_experts=4))
    return tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(**sizes, num_experts=4))


def _packed_step(seed: int):
    from reflectioncoder.data.config import MaskConfig, PackingConfig
    from reflectioncoder.data.packing import pack_rank, plan_step
    from reflectioncoder.testing.synthetic import synthetic_samples

    mask, packing = MaskConfig(), PackingConfig(max_tokens=4096)
    samples = synthetic_samples(
        6, vocab_size=300, seed=seed, instruction=(5, 20), reflection=(20, 60), answer=(5, 20),
        generation_fraction=0.3,
    )  # fmt: skip
    (batch,) = pack_rank(plan_step(samples, 3, 10, mask, packing, seed), 0, mask, packing)
    return batch


def _router_run(model, batch):
    """The packed step's loss (the engine's forward and backward) and aux, then the balancing
    term's own gradient into each router (a top-k choice that bf16 flips at a near tie moves
    the CE's gradient through that token's experts wholly: not the term under check)."""
    from reflectioncoder.model import forward_hidden
    from reflectioncoder.router_loss import balancing_loss
    from reflectioncoder.train.loss_module import ReflectionLossModule

    module = ReflectionLossModule(model)
    assert module.router_loss is not None
    loss = module(batch)[0]
    loss.backward()
    _, logits = forward_hidden(model, batch, router_logits=True)
    aux = balancing_loss(logits, batch.token_sample, batch.aux_weight, module.router_loss)
    routers = [layer.mlp.gate.weight for layer in model.model.layers]
    return loss.detach(), module.aux_loss, torch.autograd.grad(aux, routers)


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe"])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_router_balancing_loss_in_a_packed_step_on_device(device, seed, name, dtype) -> None:
    """loss (CE + KL + coef x aux), aux and its gradient into every router of a packed
    micro-batch on the device (Liger's kernels and our varlen attention where they run,
    transformers' default experts kernel) against the same weights in float64 on the CPU (eager
    experts). The gradient is ill-conditioned (near balance the routed fractions are about
    k / E, and sum_e d P_e = 0 cancels): in bf16 it is held within 1e-1, or 3x the error of
    transformers' own forward in bf16 on the CPU where that is more (the bf16 rule of
    tests/test_gpu_kernels.py): over 24 seeds on the CPU, ours 3e-3 to 7e-2, transformers' 2e-3
    to 1.1e-1. A wrong gradient is off by order 1."""
    import copy

    from reflectioncoder.model import cast_weights, prepare_model

    torch.manual_seed(seed)
    reference = _moe(name).double()
    model = _moe(name)
    model.load_state_dict(reference.state_dict())
    cast_weights(model, device, DTYPES[dtype])
    prepare_model(model, device=device)
    with torch.no_grad():  # the reference from the device's rounded weights
        for p, q in zip(reference.parameters(), model.parameters(), strict=True):
            p.copy_(q.double().cpu())
    reference.set_experts_implementation("eager")  # torch's grouped GEMM takes no float64
    prepare_model(reference, liger=False, attention="sdpa")
    batch = _packed_step(seed)
    ours = _router_run(model, batch.to(device))
    want = _router_run(reference, batch)
    errors = {"loss": _rel(ours[0], want[0]), "aux": _rel(ours[1], want[1])}
    tol = dict.fromkeys(errors, TOL[dtype])
    plain = _router_run(copy.deepcopy(reference).to(DTYPES[dtype]), batch)[2]
    for i, (g, r, p) in enumerate(zip(ours[2], want[2], plain, strict=True)):
        assert r.abs().sum() > 0
        errors[f"d_router{i}"] = _rel(g, r)
        tol[f"d_router{i}"] = TOL[dtype] if dtype == "float32" else max(1e-1, 3 * _rel(p, r))
    _assert_within("router_loss", name, dtype, errors, tol)


# -- residual dropout from model.config_overrides, checkpointed and compiled -------------------


def _dropout_model(folder, device, dtype, plan: str):
    """The saved Starcoder2 with residual and embedding dropout set by config overrides, on
    ``device`` as the trainer prepares it: every layer under ``plan``, then compiled (inductor
    on CUDA, as ``model.compile: auto``; the dry run's CPU traces the same graphs through
    aot_eager)."""
    from reflectioncoder.activation_checkpointing import apply_plan
    from reflectioncoder.model import cast_weights, compile_layers, load_model, prepare_model

    overrides = {"residual_dropout": 0.1, "embedding_dropout": 0.1}
    model = load_model(folder, dtype=torch.float32, config_overrides=overrides)
    assert model.config.residual_dropout == 0.1
    cast_weights(model, device, dtype)
    prepare_model(model, device=device)
    apply_plan(model, (plan,) * model.config.num_hidden_layers)
    compile_layers(model, backend="inductor" if device.type == "cuda" else "aot_eager")
    return model


def _dropout_run(model, seed: int):
    """Loss and gradients of one forward and backward of a packed batch of three sequences."""
    from reflectioncoder.model import forward_hidden

    model.zero_grad(set_to_none=True)
    device = model.lm_head.weight.device
    gen = torch.Generator().manual_seed(3)
    lens = [200, 56, 256]
    ids = torch.randint(0, 128, (sum(lens),), generator=gen).to(device)
    batch = SimpleNamespace(
        input_ids=ids, position_ids=torch.cat([torch.arange(n) for n in lens]).to(device),
        cu_seqlens=torch.tensor([0, *lens]).cumsum(0).to(device, torch.int32),
        max_seqlen=max(lens), seq_lens=lens,
    )  # fmt: skip
    torch.manual_seed(seed)  # the masks drawn (the CPU's and the device's generators)
    hidden = forward_hidden(model, batch)
    logits = (hidden @ model.lm_head.weight.T).float()
    loss = torch.nn.functional.cross_entropy(logits[:-1], ids[1:])
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_compiled_checkpointed_layers_replay_dropout_on_device(device, seed, dtype, tmp_path):
    """A Starcoder2 saved without dropout, trained with ``model.config_overrides`` setting
    residual and embedding dropout: ``full`` checkpointing of compiled layers gives the loss
    and gradients of no checkpointing with the same seed; another seed gives another loss."""
    import transformers as tf

    torch._dynamo.reset()
    config = tf.Starcoder2Config(vocab_size=128, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, residual_dropout=0.0,
                                 embedding_dropout=0.0, attention_dropout=0.0)  # fmt: skip
    torch.manual_seed(1)
    tf.Starcoder2ForCausalLM(config).save_pretrained(tmp_path / "model")
    dt = DTYPES[dtype] if device.type == "cuda" else torch.float32
    plain = _dropout_model(tmp_path / "model", device, dt, "none")
    want_loss, want = _dropout_run(plain, seed)
    other_loss, _ = _dropout_run(plain, seed + 1)
    # the plan before compiling, as the trainer: the same layer graph, under the checkpoint
    loss, grads = _dropout_run(_dropout_model(tmp_path / "model", device, dt, "full"), seed)
    assert other_loss != want_loss  # dropout is on: other masks, another loss
    assert grads.keys() == want.keys()
    errors = {"loss": _rel(loss, want_loss)}
    errors |= {f"d_{n}": _rel(grads[n], g) for n, g in want.items()}
    worst = max(errors, key=errors.get)
    figures = {"loss": errors["loss"], "grads_worst": errors[worst]}
    # the recompute runs the same compiled graph on the same masks: equal up to its reductions'
    # order, so the fp32 bound applies in bf16 too
    _assert_within("dropout_recompute", "compiled full", str(dt).split(".")[-1], figures,
                   TOL["float32"])  # fmt: skip
