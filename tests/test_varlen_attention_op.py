"""The compiled layer's attention op (kernels/varlen_attention_op.py) calls each backend's own
backward with the forward's out and log-sum-exp: one attention forward per layer and
micro-batch, gradients as the float64 reference's, no graph break, no recompile.

torch's varlen kernel, flash-attn 2 and FA4 are CUDA-only and not installed here. Stand-ins
with their exact call signatures (tests/attention_stand_ins.py) compute in float64 from the
reference and count their calls: CPU kernels for aten's flash attention ops, under torch's real
``torch_attn`` ops; modules with flash-attn 2.7+'s and flash-attn-4 4.0.0b40's internals. Their
backward computes P from the lse it is handed, not from a second forward: a wrong or missing
lse or out gives wrong gradients.
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
from attention_stand_ins import KERNEL_BACKENDS, StandIn, install_stand_in
from reference.varlen_attention import varlen_attention_reference, varlen_attention_reference_grad
from reflectioncoder.kernels.varlen_attention_op import (
    kernel_backward,
    varlen_attention_op,
    varlen_attention_with_stats,
)
from test_compile import _varied_batches, attention_forwards_per_policy
from torch._dynamo.utils import counters

from reflectioncoder.model import build_tiny_llama, compile_layers, prepare_model
from reflectioncoder.train.loss_module import ReflectionLossModule

va = importlib.import_module("reflectioncoder.kernels.varlen_attention")
op_module = importlib.import_module("reflectioncoder.kernels.varlen_attention_op")


@pytest.fixture(params=KERNEL_BACKENDS)
def stand_in(request, monkeypatch):
    """(backend, its StandIn): ``backend`` runs on the CPU, through the stand-in."""
    backend, recorder = request.param, StandIn()
    lib = install_stand_in(backend, recorder, monkeypatch)
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


@pytest.mark.parametrize(
    "dtype, causal", [(torch.float32, True), (torch.bfloat16, True), (torch.float32, False)]
)
def test_compiled_op_calls_the_kernels_backward_once(stand_in, seed, dtype, causal) -> None:
    # Packed sequences of several lengths, 6 query heads on 2 KV heads (causal, and not: the
    # flag reaches both kernels, apart from enable_gqa): one forward and one backward call per
    # micro-batch (no forward rerun), gradients as the float64 reference's within the dtype's
    # tolerance, no graph break across two lengths.
    backend, calls = stand_in
    _check_one_forward_one_backward(calls, seed, dtype, causal)
    assert kernel_backward(backend, 16)


def test_torch_op_without_enable_gqa_repeats_the_kv_heads(monkeypatch, seed) -> None:
    # torch 2.11's _varlen_attn has no enable_gqa: the op hands the kernels each KV head
    # repeated for its group and sums dk / dv over the group; still one forward, one backward.
    recorder = StandIn()
    lib = install_stand_in("torch_varlen", recorder, monkeypatch)
    monkeypatch.setattr(
        va, "unavailable_reason", lambda b, *a, **kw: None if b in ("torch_varlen", "sdpa") else "-"
    )
    monkeypatch.setattr(op_module, "_torch_takes_gqa", lambda: False)
    try:
        _check_one_forward_one_backward(recorder, seed, torch.float32, True)
    finally:
        lib._destroy()
    assert {call["kv_heads"] for call in recorder.forwards} == {6}


def _check_one_forward_one_backward(calls: StandIn, seed, dtype, causal) -> None:
    torch._dynamo.reset()
    counters.clear()

    @torch.compile(backend="aot_eager", fullgraph=True, dynamic=True)
    def layer(q, k, v, cu, max_seqlen):
        return varlen_attention_op(q, k, v, cu, max_seqlen, causal, 0.3, "auto") * 2

    rng = random.Random(seed)
    for step in range(2):
        seqlens = [1, rng.randint(2, 9), rng.randint(10, 30), rng.randint(3, 12) + step * 31]
        q, k, v, cu = _packed(seqlens, 6, 2, 16, dtype)
        ours = [x.clone().requires_grad_() for x in (q, k, v)]
        out = layer(*ours, cu, max(seqlens))
        grad_out = torch.randn_like(q)
        out.backward(grad_out)
        assert (len(calls.forwards), len(calls.backwards)) == (step + 1, step + 1)
        assert calls.forwards[-1]["causal"] is causal and calls.backwards[-1]["causal"] is causal
        assert calls.backwards[-1]["scale"] == 0.3
        tol = TOLERANCE[dtype]
        ref = 2 * varlen_attention_reference(q, k, v, seqlens, causal, 0.3)
        assert (out.double() - ref).abs().max() <= tol * ref.abs().max()
        want = varlen_attention_reference_grad(2 * grad_out, q, k, v, seqlens, causal, 0.3)
        for name, a, b in zip("qkv", ours, want, strict=True):
            err = (a.grad.double() - b).abs().max() / b.abs().max()
            assert err <= tol, f"d{name}: max error {err:.2e} of max |d{name}|"
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


def test_op_and_its_fakes_agree(stand_in) -> None:
    # torch.library.opcheck: the fakes' shapes, dtypes and strides are the kernels' (lse
    # (Hq, T) fp32; rng_state (2,) uint64 for torch's, (2,) int64 for flash-attn 2's, empty for
    # FA4's; out as each allocates it: FA4's contiguous, the others with q's strides, here q
    # laid out head-major), and the autograd registration and AOT dispatch (dynamic shapes)
    # hold.
    backend, _ = stand_in
    q, k, v, cu = _packed([3, 8, 5], 4, 2, 8, torch.float64)
    q = q.transpose(0, 1).contiguous().transpose(0, 1)  # dense, not contiguous
    out, lse, rng_state = varlen_attention_with_stats(q, k, v, cu, 8, True, 0.5, backend)
    want = {"torch_varlen": (2, torch.uint64), "flash_attn": (2, torch.int64)}
    assert (rng_state.numel(), rng_state.dtype) == want.get(backend, (0, torch.int64))
    assert lse.shape == (4, 16) and lse.dtype == torch.float32
    assert out.is_contiguous() == (backend == "flash_attn_4")
    args = (*(x.requires_grad_() for x in (q, k, v)), cu, 8, True, 0.5, backend)
    torch.library.opcheck(torch.ops.reflectioncoder.varlen_attention.default, args)


def test_sdpa_op_and_its_fake_agree() -> None:
    # The SDPA rerun: lse and rng_state empty.
    q, k, v, cu = _packed([3, 8, 5], 4, 2, 8, torch.float64)
    out, lse, rng_state = varlen_attention_with_stats(q, k, v, cu, 8, True, 0.5, "sdpa")
    assert lse.shape == (0,) and rng_state.shape == (0,)
    args = (*(x.requires_grad_() for x in (q, k, v)), cu, 8, True, 0.5, "sdpa")
    torch.library.opcheck(torch.ops.reflectioncoder.varlen_attention.default, args)


# torch 2.9's torch_attn ops (no scale, window_size, enable_gqa): another namespace, the same
# argument names.
@torch.library.custom_op("rc_test_torch_attn_2_9::_varlen_attn", mutates_args=())
def _torch_2_9_varlen_attn(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_q: torch.Tensor,
    cu_seq_k: torch.Tensor,
    max_q: int,
    max_k: int,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    raise AssertionError("the kernel path was taken")


@torch.library.custom_op("rc_test_torch_attn_2_9::_varlen_attn_backward", mutates_args=())
def _torch_2_9_varlen_attn_backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seq_q: torch.Tensor,
    cu_seq_k: torch.Tensor,
    max_q: int,
    max_k: int,
    is_causal: bool,
    rng_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    raise AssertionError("the kernel path was taken")


def _fa2_2_6_varlen_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q,
                             cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                             causal, window_size, softcap, alibi_slopes, deterministic,
                             rng_state=None):  # fmt: skip
    raise AssertionError("the kernel path was taken")


def _fa4_without_return_lse(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                            max_seqlen_k=None, softmax_scale=None, causal=False):  # fmt: skip
    raise AssertionError("the kernel path was taken")


def _internals(name: str, **functions) -> types.ModuleType:
    module = types.ModuleType(name)
    for attr, fn in functions.items():
        setattr(module, attr, fn)
    return module


@pytest.mark.parametrize(
    "backend, module, internals",
    [
        # flash-attn 2.6: window_size one tuple, no torch.ops wrappers
        ("flash_attn", "flash_attn.flash_attn_interface",
         {"_flash_attn_varlen_backward": _fa2_2_6_varlen_backward}),
        # the wrappers' names over 2.6's backward
        ("flash_attn", "flash_attn.flash_attn_interface",
         {"_flash_attn_varlen_backward": _fa2_2_6_varlen_backward,
          "_wrapped_flash_attn_varlen_forward": _fa2_2_6_varlen_backward,
          "_wrapped_flash_attn_varlen_backward": _fa2_2_6_varlen_backward}),
        # FA4 before return_lse (2026-02), and one without _flash_attn_fwd at all
        ("flash_attn_4", "flash_attn.cute.interface",
         {"_flash_attn_fwd": _fa4_without_return_lse, "_flash_attn_bwd": _fa4_without_return_lse}),
        ("flash_attn_4", "flash_attn.cute.interface", {"_flash_attn_bwd": _fa4_without_return_lse}),
        # torch 2.9's torch_attn ops, and a namespace without the backward op
        ("torch_varlen", "torch_attn", {"_varlen_attn": _torch_2_9_varlen_attn,
                                         "_varlen_attn_backward": _torch_2_9_varlen_attn_backward}),
        ("torch_varlen", "torch_attn", {"_varlen_attn": _torch_2_9_varlen_attn}),
    ],
)  # fmt: skip
def test_other_internals_rerun(monkeypatch, backend, module, internals) -> None:
    # kernel_backward takes the kernel path only where every argument the op passes by name or
    # position is there; other versions rerun the forward (never a call with a wrong signature,
    # nor an error).
    if module == "torch_attn":
        ops = torch.ops.rc_test_torch_attn_2_9
        names = types.SimpleNamespace(**{n: getattr(ops, n) for n in internals})
        importlib.import_module("torch.nn.attention.varlen")
        monkeypatch.setattr(torch.ops, "torch_attn", names)
    else:
        monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
        monkeypatch.setitem(sys.modules, "flash_attn.cute", types.ModuleType("flash_attn.cute"))
        monkeypatch.setitem(sys.modules, module, _internals(module, **internals))
    assert not kernel_backward(backend, 64)


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


@pytest.mark.slow  # three compiles of a model, one per policy: 18-100 s on the shared CPU
@pytest.mark.parametrize("stand_in", ["torch_varlen"], indirect=True)
def test_checkpointing_policies_keep_the_kernels_statistics(stand_in, seed) -> None:
    # Compiled, torch's kernel: save_gemms keeps the op's outputs (out, lse, rng_state), so a
    # micro-batch runs the attention forward once, as with no checkpointing; full recomputes
    # the layer, a second forward (the rerun made these 2, 2 and 3).
    backend, calls = stand_in
    runs = attention_forwards_per_policy(seed, calls.forwards, backend)
    assert runs == {"none": 1, "save_gemms": 1, "full": 2}
    assert len(calls.backwards) == 3
