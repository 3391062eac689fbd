"""What ``save_gemms`` and ``offload`` keep (activation_checkpointing.KeptOutputs): only the GEMM
and attention outputs a backward reads. The MLP's down_proj output feeds only the residual add,
so it is dropped, and not rerun in the recompute (torch's checkpoint stops early once every
tensor the backward saves is back): the backward runs the GEMMs of no checkpointing, the
gradients are no checkpointing's, and a layer holds down_proj's output less (the bench's heap
measure). With Liger's kernels (stand-ins that a dispatch mode does not see, as it does not see
Triton's) and the fused q/k/v and gate/up projections too."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils.checkpoint import set_checkpoint_early_stop

from reflectioncoder import activation_checkpointing as ac
from reflectioncoder.model import build_tiny_llama

LAYERS, T = 2, 24
GEMMS = ("mm", "addmm", "bmm")


class _CountGemms(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.gemms = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in GEMMS or "attention" in name:
            self.gemms[name] += 1
        return func(*args, **(kwargs or {}))


def _swiglu_forward(a, b, gate_multiplier=1.0):
    """Liger's host function around its Triton kernel: the views and the output's allocation
    are aten ops, the kernel is not."""
    shape = a.shape
    a, b = a.view(-1, shape[-1]), b.view(-1, shape[-1])
    c = torch.empty_like(a)
    with _disable_current_modes():
        c.copy_(F.silu(a * gate_multiplier) * b)
    return a, b, c.view(*shape)


def _swiglu_backward(a, b, dc, gate_multiplier=1.0):
    """As Liger's: the gradients written over the saved a and b."""
    shape = dc.shape
    dc = dc.view(-1, shape[-1])
    with _disable_current_modes():
        sig = torch.sigmoid(a)
        silu = a * sig
        da, db = dc * (silu * (1 - sig) + sig) * b, dc * silu
        a.copy_(da), b.copy_(db)
    return a.view(*shape), b.view(*shape)


def _rms_norm_forward(X, W, eps, offset, casting_mode, row_mode):
    shape = X.shape
    X = X.view(-1, shape[-1])
    Y, rstd = torch.empty_like(X), X.new_empty(X.shape[0], dtype=torch.float32)
    with _disable_current_modes():
        rstd.copy_(torch.rsqrt(X.float().square().mean(-1) + eps))
        Y.copy_((X.float() * rstd[:, None]).to(X.dtype) * (offset + W))
    return Y.view(*shape), X, rstd, 0, 0, casting_mode


def _rms_norm_backward(dY, X, W, RSTD, offset, *args, **kwargs):
    shape = dY.shape
    dY = dY.view(-1, shape[-1])
    with _disable_current_modes():
        xhat = X.float() * RSTD[:, None]
        g = dY.float() * (offset + W).float()
        dX = RSTD[:, None] * (g - xhat * (g * xhat).mean(-1, keepdim=True))
        dW = (dY.float() * xhat).sum(0)
    return dX.to(X.dtype).view(*shape), dW.to(W.dtype)


@pytest.fixture
def liger_stand_ins(monkeypatch):
    """Liger's modules and autograd functions as prepare_model puts them on CUDA, their
    Triton kernels replaced (RoPE's runs under the interpreter)."""
    from liger_kernel.ops import rms_norm, swiglu
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from transformers.models.llama import modeling_llama

    monkeypatch.setattr(swiglu, "swiglu_forward", _swiglu_forward)
    monkeypatch.setattr(swiglu, "swiglu_backward", _swiglu_backward)
    monkeypatch.setattr(rms_norm, "rms_norm_forward", _rms_norm_forward)
    monkeypatch.setattr(rms_norm, "rms_norm_backward", _rms_norm_backward)
    before = dict(vars(modeling_llama))  # Liger's instance patch replaces its classes too
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", liger_rotary_pos_emb)
    yield
    vars(modeling_llama).update(before)


def _model(liger: bool, fused: bool, dtype: torch.dtype, seed: int):
    model = build_tiny_llama(64, hidden_size=32, num_layers=LAYERS, num_heads=4, num_kv_heads=2,
                             seed=seed)  # fmt: skip
    model.to(dtype).train().set_attn_implementation("sdpa")
    if liger:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(
            model=model, rope=False, rms_norm=True, swiglu=True, cross_entropy=False,
            fused_linear_cross_entropy=False,
        )  # fmt: skip
        layer = model.model.layers[0]
        assert (layer.mlp._get_name(), layer.input_layernorm._get_name()) == (
            "LigerSwiGLUMLP", "LigerRMSNorm")  # fmt: skip
    if fused:
        from reflectioncoder.fused_projections import fuse_projections

        assert fuse_projections(model) == 2 * LAYERS
    return model


def _backward(policy, liger, fused, seed, dtype=torch.float32, early_stop=True):
    """(GEMM and attention calls in the backward, the gradients) of one forward + backward."""
    model = _model(liger, fused, dtype, seed)
    ac.apply_plan(model, (policy,) * LAYERS)
    ids = torch.randint(0, 64, (1, T), generator=torch.Generator().manual_seed(seed))
    with set_checkpoint_early_stop(early_stop):  # read when the forward runs
        loss = model(input_ids=ids).logits.float().square().mean()
    with _CountGemms() as count:
        loss.backward()
    return count.gemms, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
@pytest.mark.parametrize("liger", [False, True], ids=["torch", "liger"])
def test_kept_outputs_rerun_no_gemm_and_give_the_gradients(liger, fused, seed, request):
    if liger:
        request.getfixturevalue("liger_stand_ins")
    want_gemms, want = _backward("none", liger, fused, seed)
    for policy in ("save_gemms", "offload"):
        gemms, grads = _backward(policy, liger, fused, seed)
        assert gemms == want_gemms, policy  # the backward's own GEMMs, none rerun
        for name, g in grads.items():
            torch.testing.assert_close(g, want[name], rtol=1e-6, atol=1e-7, msg=f"{policy} {name}")
        # the test sees a rerun: without the early stop the recompute runs down_proj again
        late, _ = _backward(policy, liger, fused, seed, early_stop=False)
        assert late["mm"] == want_gemms["mm"] + LAYERS, policy
    full, _ = _backward("full", liger, fused, seed)
    assert full["mm"] > want_gemms["mm"] + LAYERS  # full reruns every GEMM


def test_bf16_gradients_of_no_checkpointing(seed):
    _, want = _backward("none", False, False, seed, dtype=torch.bfloat16)
    for policy in ("save_gemms", "offload"):
        _, grads = _backward(policy, False, False, seed, dtype=torch.bfloat16)
        for name, g in grads.items():
            torch.testing.assert_close(g, want[name], msg=f"{policy} {name}")  # bf16's rule


def test_save_gemms_holds_no_down_proj_output():
    """The heap a forward leaves held per token and layer (bench_activation_memory's measure:
    2 layers against 4), ``save_gemms`` less ``full``: the kept outputs of q, k, v, the
    attention (its output and log-sum-exp), o, gate and up; fp32. Keeping down_proj's output
    too held 4 D bytes more."""
    from bench.bench_activation_memory import per_token_and_layer

    sizes = {"vocab": 256, "arch": {"hidden_size": 64, "intermediate_size": 176, "num_heads": 4,
                                    "num_kv_heads": 2}}  # fmt: skip
    d, i, heads, kv = 64, 176, 4, 32
    kept = 4 * (d + 2 * kv + d + heads + d + 2 * i)
    per_token_and_layer("full", sizes, 4096)  # the process's first allocations: not measured
    per = {p: per_token_and_layer(p, sizes, 4096)["bytes_per_token_layer"] for p in
           ("save_gemms", "full")}  # fmt: skip
    extra = per["save_gemms"] - per["full"]
    assert kept - 4 * d / 2 < extra < kept + 4 * d / 2, (extra, kept)


def _foreign_hooks(ignore_is_tracing):
    """Hooks that are not the checkpoint's on top of the stack (a torch that entered
    ``context_fn``'s forward context before its own hooks, under a caller's)."""
    return (lambda x: x), (lambda x: x)


@pytest.mark.parametrize("top", ["missing", "foreign"])
def test_without_the_checkpoints_pack_hook_every_output_is_kept(seed, monkeypatch, top):
    """Where torch offers no way to see the checkpoint's pack hook (a private API), or what it
    shows is not the checkpoint's (wrapping it would save the layer's tensors past the
    checkpoint), every GEMM and attention output is kept, as before: 8 a layer, the same
    gradients."""
    stores, contexts = [], ac.KeptOutputs.contexts
    monkeypatch.setattr(
        ac.KeptOutputs, "contexts", lambda self: stores.append(self) or contexts(self)
    )
    want_gemms, want = _backward("none", False, False, seed)
    if top == "missing":
        monkeypatch.delattr(torch._C._autograd, "_top_saved_tensors_default_hooks")
    else:
        monkeypatch.setattr(torch._C._autograd, "_top_saved_tensors_default_hooks", _foreign_hooks)
    gemms, grads = _backward("save_gemms", False, False, seed)
    assert gemms == want_gemms and [len(s.saved) for s in stores] == [8] * LAYERS
    for name, g in grads.items():
        torch.testing.assert_close(g, want[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("unread", ["as_found", "all"])
def test_an_offloaded_layers_next_forward_holds_what_it_found_unread(seed, unread):
    """An offloaded layer's next forward holds on the device, until the forward's end, what its
    last forward found unread (``OffloadSchedule.unread``): dropped there, or sent then when
    read after all (``all``: every output marked unread, as after a forward whose ops
    differed). At another micro-batch length: the gradients of no checkpointing, 7 outputs
    a layer on the host."""

    def two_steps(policy):
        model = _model(False, False, torch.float32, seed)
        ac.apply_plan(model, (policy,) * LAYERS)
        schedule, grads, kept = model.rc_offload, [], []
        for t in (T, T - 7):
            ids = torch.randint(0, 64, (1, t), generator=torch.Generator().manual_seed(seed + t))
            model.zero_grad(set_to_none=True)
            loss = model(input_ids=ids).logits.float().square().mean()
            if schedule is not None:
                stores = [schedule.stores[i]() for i in range(LAYERS)]
                kept.append([len(s.saved) for s in stores])
                if unread == "all":
                    for i, s in enumerate(stores):
                        schedule.unread[i] = schedule.unread[i] | frozenset(s.saved)
            loss.backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        return grads, kept

    want, _ = two_steps("none")
    got, kept = two_steps("offload")
    assert kept == [[7] * LAYERS] * 2
    for w, g in zip(want, got, strict=True):
        for name in w:
            torch.testing.assert_close(g[name], w[name], rtol=1e-6, atol=1e-7, msg=name)
