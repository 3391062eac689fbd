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
from reflectioncoder.train.loss_module import ReflectionLossModule

va = importlib.import_module("reflectioncoder.kernels.varlen_attention")
op_module = importlib.import_module("reflectioncoder.kernels.varlen_attention_op")
KERNEL_BACKENDS = ("torch_varlen", "flash_attn", "flash_attn_4")


class StandIn:
    """A backend's forward and backward in float64 from the reference; counts its calls."""

    def __init__(self) -> None:
        self.forwards: list[dict] = []
        self.backwards: list[dict] = []

    def forward(self, q, k, v, cu, max_seqlen, causal, scale):
        self.forwards.append(
            dict(cu=cu, max_seqlen=max_seqlen, causal=causal, scale=scale, kv_heads=k.shape[1])
        )
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
        assert torch.equal(cu_q, cu_k) and max_q == max_k and dropout_p == 0.0
        assert rng_state.dtype == torch.uint64 and grad.is_contiguous()  # the op makes it so
        assert (window_size_left, window_size_right) == ((-1, 0) if is_causal else (-1, -1))
        return stand_in.backward(grad, q, k, v, out, lse, cu_q, max_q, is_causal, scale)

    lib = torch.library.Library("aten", "IMPL")
    lib.impl("_flash_attention_forward", forward, "CPU")
    lib.impl("_flash_attention_backward", backward, "CPU")
    return lib


# flash-attn 2.7+ (torch >= 2.4) registers its internals as torch.library custom ops
# (flash_attn::_flash_attn_varlen_forward / _backward); these have the same schemas (names,
# types, defaults, dq / dk / dv mutated), so a misplaced or mistyped argument fails as it would
# there. They run the current test's StandIn.
_FA2_STAND_IN: list[StandIn] = []


@torch.library.custom_op("rc_test_flash_attn::_flash_attn_varlen_forward", mutates_args=())
def _fa2_varlen_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int = -1,
    window_size_right: int = -1,
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    return_softmax: bool = False,
    block_table: torch.Tensor | None = None,
    leftpad_k: torch.Tensor | None = None,
    seqused_k: torch.Tensor | None = None,
    zero_tensors: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    assert torch.equal(cu_seqlens_q, cu_seqlens_k) and max_seqlen_q == max_seqlen_k
    assert dropout_p == 0.0 and softcap == 0.0 and alibi_slopes is None and not return_softmax
    assert (window_size_left, window_size_right) == (-1, -1)  # causal sets the right side
    out, lse = _FA2_STAND_IN[-1].forward(q, k, v, cu_seqlens_q, max_seqlen_q, causal,
                                         softmax_scale)  # fmt: skip
    return out, lse, q.new_empty(0), torch.zeros(2, dtype=torch.int64)


@torch.library.custom_op(
    "rc_test_flash_attn::_flash_attn_varlen_backward", mutates_args=("dq", "dk", "dv")
)
def _fa2_varlen_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    softmax_lse: torch.Tensor,
    dq: torch.Tensor | None,
    dk: torch.Tensor | None,
    dv: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: torch.Tensor | None,
    deterministic: bool,
    rng_state: torch.Tensor | None = None,
    zero_tensors: bool = False,
) -> torch.Tensor:
    assert torch.equal(cu_seqlens_q, cu_seqlens_k) and max_seqlen_q == max_seqlen_k
    assert dropout_p == 0.0 and softcap == 0.0 and alibi_slopes is None and not deterministic
    assert (window_size_left, window_size_right) == (-1, -1) and rng_state.dtype == torch.int64
    grads = _FA2_STAND_IN[-1].backward(dout, q, k, v, out, softmax_lse, cu_seqlens_q,
                                       max_seqlen_q, causal, softmax_scale)  # fmt: skip
    for target, g in zip((dq, dk, dv), grads, strict=True):
        target.copy_(g)  # flash-attn fills the dq, dk, dv it is given (GQA: dk, dv summed)
    return softmax_lse.new_empty(0)


def _install_flash_attn(stand_in: StandIn, monkeypatch) -> None:
    """flash-attn 2.7+'s ``flash_attn_interface`` internals: the custom op objects and their
    ``torch.ops`` packets (``_wrapped_*``), as it binds them under torch >= 2.4."""
    monkeypatch.setattr(sys.modules[__name__], "_FA2_STAND_IN", [stand_in])
    interface = types.ModuleType("flash_attn.flash_attn_interface")
    interface._flash_attn_varlen_forward = _fa2_varlen_forward
    interface._flash_attn_varlen_backward = _fa2_varlen_backward
    ops = torch.ops.rc_test_flash_attn
    interface._wrapped_flash_attn_varlen_forward = ops._flash_attn_varlen_forward
    interface._wrapped_flash_attn_varlen_backward = ops._flash_attn_varlen_backward
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
        assert window_size_left is None and window_size_right is None  # causal: from the flag
        out, lse = stand_in.forward(q, k, v, cu_seqlens_q, max_seqlen_q, causal, softmax_scale)
        return out.contiguous(), lse, None, None, None  # FA4 allocates out contiguous

    def _flash_attn_bwd(q, k, v, out, dout, lse, softmax_scale=None, causal=False, softcap=0.0,
                        window_size_left=None, window_size_right=None, cu_seqlens_q=None,
                        cu_seqlens_k=None, seqused_q=None, seqused_k=None, max_seqlen_q=None,
                        max_seqlen_k=None, **rest):  # fmt: skip
        assert cu_seqlens_k is cu_seqlens_q and rest == {}  # deterministic: False, as eager
        assert window_size_left is None and window_size_right is None
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
    lib = _install_torch_varlen(recorder, monkeypatch)
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


@pytest.mark.parametrize("stand_in", ["torch_varlen"], indirect=True)
def test_checkpointing_policies_keep_the_kernels_statistics(stand_in, seed) -> None:
    # Compiled, torch's kernel: save_gemms keeps the op's outputs (out, lse, rng_state), so a
    # micro-batch runs the attention forward once, as with no checkpointing; full recomputes
    # the layer, a second forward (the rerun made these 2, 2 and 3).
    backend, calls = stand_in
    runs = attention_forwards_per_policy(seed, calls.forwards, backend)
    assert runs == {"none": 1, "save_gemms": 1, "full": 2}
    assert len(calls.backwards) == 3
