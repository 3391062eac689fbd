"""The compiled layer's attention op (kernels/varlen_attention_op.py) calls each backend's own
backward with the forward's out and log-sum-exp: one attention forward per layer and
micro-batch, gradients as the float64 reference's, no graph break, no recompile.

torch's varlen kernel, flash-attn 2 and FA4 are CUDA-only and not installed here. Stand-ins
with their exact call signatures compute in float64 from the reference and count their calls:
CPU kernels for aten's flash attention ops, under torch's real ``torch_attn`` ops; modules
with flash-attn 2.7+'s and flash-attn-4 4.0.0b40's internals. Their backward computes P from
the lse it is handed, not from a second forward: a wrong or missing lse or out gives wrong
gradients.
"""

from __future__ import annotations

import copy
import importlib
import random
import sys
import types

import pytest
import torch
import torch._dynamo
from reference.varlen_attention import (
    varlen_attention_grad_from_lse,
    varlen_attention_reference,
    varlen_attention_reference_grad,
    varlen_attention_reference_lse,
)
from reflectioncoder.kernels.varlen_attention_op import (
    kernel_backward,
    varlen_attention_op,
    varlen_attention_with_stats,
)
from test_compile import _varied_batches, attention_forwards_per_policy
from torch._dynamo.utils import counters

from reflectioncoder.model import build_tiny_llama, compile_layers, prepare_model
from reflectioncoder.train.trainer import ReflectionLossModule

va = importlib.import_module("reflectioncoder.kernels.varlen_attention")
KERNEL_BACKENDS = ("torch_varlen", "flash_attn", "flash_attn_4")


class StandIn:
    """A backend's forward and backward in float64 from the reference; counts its calls."""

    def __init__(self) -> None:
        self.forwards: list[dict] = []
        self.backwards: list[dict] = []

    def forward(self, q, k, v, cu, max_seqlen, causal, scale):
        self.forwards.append(dict(cu=cu, max_seqlen=max_seqlen, causal=causal, scale=scale))
        seqlens = torch.diff(cu).tolist()
        out = varlen_attention_reference(q, k, v, seqlens, causal, scale).to(q.dtype)
        lse = varlen_attention_reference_lse(q, k, seqlens, causal, scale).float()
        return out, lse

    def backward(self, grad, q, k, v, out, lse, cu, max_seqlen, causal, scale):
        self.backwards.append(dict(cu=cu, max_seqlen=max_seqlen, causal=causal, scale=scale))
        grads = varlen_attention_grad_from_lse(
            grad, q, k, v, out, lse, torch.diff(cu).tolist(), causal, scale
        )
        return tuple(g.to(x.dtype) for g, x in zip(grads, (q, k, v), strict=True))


def _install_torch_varlen(stand_in: StandIn, monkeypatch) -> torch.library.Library:
    """torch's CUDA flash kernels (aten::_flash_attention_forward / _backward) on the CPU: the
    real ``torch_attn::_varlen_attn`` / ``_varlen_attn_backward`` ops run around them."""

    def forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, debug, *, scale=None,
                window_size_left=None, window_size_right=None, **rest):  # fmt: skip
        assert torch.equal(cu_q, cu_k) and max_q == max_k and dropout_p == 0.0
        assert (window_size_left, window_size_right) == ((-1, 0) if is_causal else (-1, -1))
        out, lse = stand_in.forward(q, k, v, cu_q, max_q, is_causal, scale)
        rng_state = torch.zeros(2, dtype=torch.uint64)
        return out, lse, rng_state, q.new_empty(0), q.new_empty(0)

    def backward(grad, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, dropout_p, is_causal,
                 rng_state, unused, *, scale=None, window_size_left=None,
                 window_size_right=None):  # fmt: skip
        assert torch.equal(cu_q, cu_k) and rng_state.dtype == torch.uint64
        return stand_in.backward(grad, q, k, v, out, lse, cu_q, max_q, is_causal, scale)

    lib = torch.library.Library("aten", "IMPL")
    lib.impl("_flash_attention_forward", forward, "CPU")
    lib.impl("_flash_attention_backward", backward, "CPU")
    return lib


def _install_flash_attn(stand_in: StandIn, monkeypatch) -> None:
    """flash-attn 2.7+'s ``flash_attn_interface`` internals (the ``flashattn::`` ops)."""

    def forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal,
                window_size_left=-1, window_size_right=-1, softcap=0.0, alibi_slopes=None,
                return_softmax=False, block_table=None, leftpad_k=None,
                seqused_k=None):  # fmt: skip
        assert cu_k is cu_q and dropout_p == 0.0
        assert (window_size_left, window_size_right) == (-1, -1)
        out, lse = stand_in.forward(q, k, v, cu_q, max_q, causal, softmax_scale)
        return out, lse, torch.empty(0, dtype=q.dtype), torch.zeros(2, dtype=torch.int64)

    def backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_q, cu_k, max_q, max_k,
                 dropout_p, softmax_scale, causal, window_size_left, window_size_right, softcap,
                 alibi_slopes, deterministic, rng_state=None):  # fmt: skip
        assert cu_k is cu_q and rng_state.dtype == torch.int64 and softcap == 0.0
        grads = stand_in.backward(dout, q, k, v, out, softmax_lse, cu_q, max_q, causal,
                                  softmax_scale)  # fmt: skip
        for target, g in zip((dq, dk, dv), grads, strict=True):
            target.copy_(g)  # flash-attn fills the dq, dk, dv it is given
        return torch.empty(0)

    interface = types.ModuleType("flash_attn.flash_attn_interface")
    interface._flash_attn_varlen_backward = backward
    interface._wrapped_flash_attn_varlen_forward = forward
    interface._wrapped_flash_attn_varlen_backward = backward
    parent = types.ModuleType("flash_attn")
    parent.flash_attn_interface = interface
    monkeypatch.setitem(sys.modules, "flash_attn", parent)
    monkeypatch.setitem(sys.modules, "flash_attn.flash_attn_interface", interface)


def _install_flash_attn_4(stand_in: StandIn, monkeypatch) -> None:
    """flash-attn-4 4.0.0b40's ``flash_attn.cute.interface`` internals."""

    def _flash_attn_fwd(q, k, v, qv=None, cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None,
                        seqused_k=None, max_seqlen_q=None, max_seqlen_k=None, min_seqlen_k=None,
                        page_table=None, softmax_scale=None, causal=False, softcap=None,
                        window_size_left=None, window_size_right=None, learnable_sink=None,
                        return_lse=False, **rest):  # fmt: skip
        assert cu_seqlens_k is cu_seqlens_q and return_lse and rest == {}
        out, lse = stand_in.forward(q, k, v, cu_seqlens_q, max_seqlen_q, causal, softmax_scale)
        return out, lse, None, None, None

    def _flash_attn_bwd(q, k, v, out, dout, lse, softmax_scale=None, causal=False, softcap=0.0,
                        window_size_left=None, window_size_right=None, cu_seqlens_q=None,
                        cu_seqlens_k=None, seqused_q=None, seqused_k=None, max_seqlen_q=None,
                        max_seqlen_k=None, **rest):  # fmt: skip
        assert cu_seqlens_k is cu_seqlens_q and rest == {}
        return stand_in.backward(dout, q, k, v, out, lse, cu_seqlens_q, max_seqlen_q, causal,
                                 softmax_scale)  # fmt: skip

    interface = types.ModuleType("flash_attn.cute.interface")
    interface._flash_attn_fwd = _flash_attn_fwd
    interface._flash_attn_bwd = _flash_attn_bwd
    cute = types.ModuleType("flash_attn.cute")
    cute.interface = interface
    parent = types.ModuleType("flash_attn")  # FA4's wheel: a namespace package
    parent.cute = cute
    for name, module in (("flash_attn", parent), ("flash_attn.cute", cute),
                         ("flash_attn.cute.interface", interface)):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture(params=KERNEL_BACKENDS)
def stand_in(request, monkeypatch):
    """(backend, its StandIn): ``backend`` runs on the CPU, through the stand-in."""
    backend, recorder = request.param, StandIn()
    lib = None
    if backend == "torch_varlen":
        lib = _install_torch_varlen(recorder, monkeypatch)
    elif backend == "flash_attn":
        _install_flash_attn(recorder, monkeypatch)
    else:
        _install_flash_attn_4(recorder, monkeypatch)
    monkeypatch.setattr(
        va, "unavailable_reason", lambda b, *a, **kw: None if b in (backend, "sdpa") else "-"
    )
    yield backend, recorder
    if lib is not None:
        lib._destroy()


def _packed(seqlens, hq, hkv, dh, dtype):
    t = sum(seqlens)
    q, k, v = (torch.randn(t, h, dh, dtype=dtype) for h in (hq, hkv, hkv))
    cu = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(seqlens).cumsum(0)
    return q, k, v, cu


# Largest error over the largest magnitude: fp32's ~1e-7 seen, bf16's ~6e-3 (eps 3.9e-3).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_op_calls_the_kernels_backward_once(stand_in, seed, dtype) -> None:
    # Causal packed sequences of several lengths, 6 query heads on 2 KV heads: one forward and
    # one backward call per micro-batch (no forward rerun), gradients as the float64
    # reference's within the dtype's tolerance, no graph break across two lengths.
    backend, calls = stand_in
    torch._dynamo.reset()
    counters.clear()

    @torch.compile(backend="aot_eager", fullgraph=True, dynamic=True)
    def layer(q, k, v, cu, max_seqlen):
        return varlen_attention_op(q, k, v, cu, max_seqlen, True, 0.3, "auto") * 2

    rng = random.Random(seed)
    for step in range(2):
        seqlens = [1, rng.randint(2, 9), rng.randint(10, 30), rng.randint(3, 12) + step * 31]
        q, k, v, cu = _packed(seqlens, 6, 2, 16, dtype)
        ours = [x.clone().requires_grad_() for x in (q, k, v)]
        out = layer(*ours, cu, max(seqlens))
        grad_out = torch.randn_like(q)
        out.backward(grad_out)
        assert (len(calls.forwards), len(calls.backwards)) == (step + 1, step + 1)
        assert calls.backwards[-1]["causal"] and calls.backwards[-1]["scale"] == 0.3
        tol = TOLERANCE[dtype]
        ref = 2 * varlen_attention_reference(q, k, v, seqlens, True, 0.3)
        assert (out.double() - ref).abs().max() <= tol * ref.abs().max()
        want = varlen_attention_reference_grad(2 * grad_out, q, k, v, seqlens, True, 0.3)
        for name, a, b in zip("qkv", ours, want, strict=True):
            err = (a.grad.double() - b).abs().max() / b.abs().max()
            assert err <= tol, f"d{name}: max error {err:.2e} of max |d{name}|"
    assert kernel_backward(backend, 16)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1  # the second length reused the graph


def test_compiled_layers_run_attention_once_per_layer(stand_in, seed) -> None:
    # A compiled two-layer model on three micro-batches of different lengths: one attention
    # forward and one backward per layer and micro-batch (the rerun ran the forward twice),
    # no graph break, one graph compiled once; loss and gradients as the eager SDPA model's.
    backend, calls = stand_in
    torch._dynamo.reset()
    counters.clear()
    model = build_tiny_llama(300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             seed=seed)  # fmt: skip
    eager = prepare_model(copy.deepcopy(model), liger=False, attention="sdpa")
    prepare_model(model, liger=False, attention=backend)
    compile_layers(model, backend="aot_eager")
    batches = _varied_batches(seed)
    for batch in batches:
        loss = ReflectionLossModule(model)(batch)[0]
        loss.backward()
        want = ReflectionLossModule(eager)(batch)[0]
        want.backward()
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    layers_times_batches = 2 * len(batches)
    assert len(calls.forwards) == layers_times_batches
    assert len(calls.backwards) == layers_times_batches
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1 and counters["frames"]["total"] == 1
    for (name, p), q in zip(model.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", ["torch_varlen", "sdpa"])
def test_op_and_its_fakes_agree(monkeypatch, request, backend) -> None:
    # torch.library.opcheck: the fakes' shapes and dtypes (lse (Hq, T) fp32 and rng_state
    # (2,) uint64 for torch's kernel; empty for the SDPA rerun) are the kernels', and the
    # autograd registration and AOT dispatch (dynamic shapes) hold.
    if backend == "torch_varlen":
        lib = _install_torch_varlen(StandIn(), monkeypatch)
        request.addfinalizer(lib._destroy)
        monkeypatch.setattr(
            va, "unavailable_reason", lambda b, *a, **kw: None if b == backend else "-"
        )
    q, k, v, cu = _packed([3, 8, 5], 4, 2, 8, torch.float64)
    out, lse, rng_state = varlen_attention_with_stats(q, k, v, cu, 8, True, 0.5, backend)
    assert lse.shape == ((4, 16) if backend == "torch_varlen" else (0,))
    args = (*(x.requires_grad_() for x in (q, k, v)), cu, 8, True, 0.5, backend)
    torch.library.opcheck(torch.ops.reflectioncoder.varlen_attention.default, args)


def test_sdpa_and_fa3_keep_the_rerun() -> None:
    # Per-segment SDPA has no lse API; FA3's internals are pinned by no release.
    assert not kernel_backward("sdpa", 64) and not kernel_backward("flash_attn_3", 64)


def test_step_model_counts_a_rerun_where_the_op_reruns() -> None:
    # bench/step_model.py's OP_KERNEL_BACKWARD names the attentions whose op calls the
    # kernel's backward, as kernel_backward says (at head size 128); its default does, its
    # attention_op=rerun lever and FA3 pay one more attention forward per compiled layer.
    from dataclasses import replace

    from bench import step_model as sm

    backends = {"varlen": "torch_varlen", "fa2": "flash_attn", "fa3": "flash_attn_3",
                "fa4": "flash_attn_4"}  # fmt: skip
    assert set(backends) == set(sm.ATTN_EFF)
    assert sm.OP_KERNEL_BACKWARD == {a for a, b in backends.items() if b in KERNEL_BACKENDS}
    assert not kernel_backward("flash_attn_3", 128)
    arch, work = sm.ARCHS["CodeLlama-7B"], sm.reflection_workload()
    base = sm.Levers()
    assert base.attention_op == "kernel"

    def step(levers):
        return sm.predict(arch, "H100", 1, "zero1", levers, work).step_s

    assert step(replace(base, attention_op="rerun")) > step(base)
    fa3 = replace(base, attention="fa3")
    assert step(replace(fa3, attention_op="rerun")) == step(fa3)


@pytest.mark.parametrize("stand_in", ["torch_varlen"], indirect=True)
def test_checkpointing_policies_keep_the_kernels_statistics(stand_in, seed) -> None:
    # Compiled, torch's kernel: save_gemms keeps the op's outputs (out, lse, rng_state), so a
    # micro-batch runs the attention forward once, as with no checkpointing; full recomputes
    # the layer, a second forward (the rerun made these 2, 2 and 3).
    backend, calls = stand_in
    runs = attention_forwards_per_policy(seed, calls.forwards, backend)
    assert runs == {"none": 1, "save_gemms": 1, "full": 2}
    assert len(calls.backwards) == 3
