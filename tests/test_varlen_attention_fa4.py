"""FlashAttention-4 (``flash_attn.cute``) as a backend of kernels.varlen_attention, on the CPU:
its selection, the exact call into its interface, its gradient path (eager, through the
compiled layer's custom op, through a model) and the one-line failures when it cannot run.

flash-attn-4 is not installed here (nor in CI): a stand-in ``flash_attn.cute`` module with
FA4's signature records each call and computes with the float64 reference, forward and
backward, as a ``torch.autograd.Function`` returning ``(out, lse)`` as FA4 does.
"""

from __future__ import annotations

import copy
import importlib
import random
import re
import sys
import types

import pytest
import torch
from reference.varlen_attention import (
    varlen_attention_reference,
    varlen_attention_reference_grad,
)
from reflectioncoder.kernels.varlen_attention import BACKENDS, varlen_attention, varlen_backend
from reflectioncoder.kernels.varlen_attention_op import varlen_attention_op

from reflectioncoder.config import ATTENTION, ModelConfig
from reflectioncoder.model import build_tiny_llama, forward_hidden, prepare_model

va = importlib.import_module("reflectioncoder.kernels.varlen_attention")


class _Reference(torch.autograd.Function):
    """The float64 reference as an autograd function (FA4's is ``FlashAttnVarlenFunc``)."""

    @staticmethod
    def forward(ctx, q, k, v, cu, causal, scale):
        ctx.save_for_backward(q, k, v, cu)
        ctx.args = (causal, scale)
        seqlens = torch.diff(cu).tolist()
        return varlen_attention_reference(q, k, v, seqlens, causal, scale).to(q.dtype)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, cu = ctx.saved_tensors
        grads = varlen_attention_reference_grad(grad, q, k, v, torch.diff(cu).tolist(), *ctx.args)
        return (*(g.to(x.dtype) for g, x in zip(grads, (q, k, v), strict=True)), None, None, None)


@pytest.fixture
def fake_fa4(monkeypatch):
    """A ``flash_attn.cute`` with FA4's ``flash_attn_varlen_func`` signature, allowed to run on
    the CPU; yields the list of its calls' arguments."""
    calls: list[dict] = []

    def flash_attn_varlen_func(
        q, k, v, qv=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
        max_seqlen_k=None, min_seqlen_k=None, seqused_q=None, seqused_k=None,
        gather_kv_indices=None, page_table=None, softmax_scale=None, causal=False,
        window_size=(None, None), **rest,
    ):  # fmt: skip
        calls.append(dict(q=q, k=k, cu_q=cu_seqlens_q, cu_k=cu_seqlens_k, max_q=max_seqlen_q,
                          max_k=max_seqlen_k, scale=softmax_scale, causal=causal,
                          window=window_size, rest=rest))  # fmt: skip
        return _Reference.apply(q, k, v, cu_seqlens_q, causal, softmax_scale), None

    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_varlen_func = flash_attn_varlen_func
    parent = types.ModuleType("flash_attn")  # FA4's wheel: a namespace package
    parent.cute = cute
    monkeypatch.setitem(sys.modules, "flash_attn", parent)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setattr(
        va, "unavailable_reason", lambda b, *a, **kw: None if b in ("flash_attn_4", "sdpa") else "-"
    )
    return calls


def _packed(seqlens, hq, hkv, dh, dtype=torch.float64):
    t = sum(seqlens)
    q, k, v = (torch.randn(t, h, dh, dtype=dtype) for h in (hq, hkv, hkv))
    cu = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(seqlens).cumsum(0)
    return q, k, v, cu


def _seqlens(seed: int) -> list[int]:
    rng = random.Random(seed)
    return [1, rng.randint(2, 9), rng.randint(10, 30), rng.randint(3, 12)]


def _check_grads(ours, q, k, v, seqlens, grad_out, causal, scale):
    refs = [x.clone().requires_grad_() for x in (q, k, v)]
    varlen_attention_reference(*refs, seqlens, causal, scale).backward(grad_out)
    for name, a, b in zip("qkv", ours, refs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-10, msg=f"d{name}")


@pytest.mark.parametrize("causal", [True, False])
def test_fa4_call_and_gradients(fake_fa4, seed: int, causal: bool) -> None:
    # auto picks FA4 where it runs; the call: cu_seqlens int32 for q and k, max_seqlen a host
    # int, causal and the scale passed on, GQA heads as they are (6 query heads on 2 KV heads,
    # not repeated), FA4's (out, lse) unpacked; gradients through FA4's own autograd.
    seqlens = _seqlens(seed)
    q, k, v, cu = _packed(seqlens, 6, 2, 8)
    assert varlen_backend(torch.device("cpu"), torch.float64, 8) == "flash_attn_4"
    ours = [x.clone().requires_grad_() for x in (q, k, v)]
    out = varlen_attention(*ours, cu, torch.tensor(max(seqlens)), causal=causal, softmax_scale=0.4)
    (call,) = fake_fa4
    assert call["cu_q"] is cu and call["cu_k"] is cu and cu.dtype == torch.int32
    assert type(call["max_q"]) is int and call["max_q"] == call["max_k"] == max(seqlens)
    assert call["causal"] is causal and call["scale"] == 0.4 and call["window"] == (None, None)
    assert call["q"].shape[1] == 6 and call["k"].shape[1] == 2 and call["rest"] == {}
    torch.testing.assert_close(
        out, varlen_attention_reference(q, k, v, seqlens, causal, 0.4), atol=1e-12, rtol=1e-12
    )
    grad_out = torch.randn_like(q)
    out.backward(grad_out)
    _check_grads(ours, q, k, v, seqlens, grad_out, causal, 0.4)


def test_fa4_through_the_compiled_custom_op(fake_fa4, seed: int) -> None:
    # The compiled layer's op with an FA4 whose internals (_flash_attn_fwd / _flash_attn_bwd)
    # are missing (this stand-in has the public function only): the backward runs FA4's
    # forward again and differentiates it. With them: test_varlen_attention_op.py.
    seqlens = _seqlens(seed + 1)
    q, k, v, cu = _packed(seqlens, 4, 2, 8)
    ours = [x.clone().requires_grad_() for x in (q, k, v)]

    @torch.compile(backend="aot_eager", fullgraph=True)
    def layer(q, k, v):
        return varlen_attention_op(q, k, v, cu, max(seqlens), True, 0.3, "flash_attn_4") * 2

    out = layer(*ours)
    grad_out = torch.randn_like(q)
    out.backward(grad_out)
    assert len(fake_fa4) == 2 and all(c["scale"] == 0.3 and c["causal"] for c in fake_fa4)
    ref = 2 * varlen_attention_reference(q, k, v, seqlens, True, 0.3)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    _check_grads(ours, q, k, v, seqlens, 2 * grad_out, True, 0.3)


def test_model_attention_setting_reaches_fa4(fake_fa4, seed: int) -> None:
    # model.attention = flash_attn_4 through prepare_model: every layer calls FA4, and the
    # packed forward and its gradients equal the per-segment SDPA model's.
    model = build_tiny_llama(60, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                             seed=seed).double()  # fmt: skip
    sdpa = prepare_model(copy.deepcopy(model), liger=False, attention="sdpa")
    fa4 = prepare_model(model, liger=False, attention="flash_attn_4")
    seqlens = [5, 1, 9]
    cu = torch.tensor([0, 5, 6, 15], dtype=torch.int32)
    ids = torch.randint(0, 60, (15,))
    pos = torch.cat([torch.arange(n) for n in seqlens])
    batch = types.SimpleNamespace(input_ids=ids, position_ids=pos, cu_seqlens=cu, max_seqlen=9)
    want, got = forward_hidden(sdpa, batch), forward_hidden(fa4, batch)
    assert len(fake_fa4) == 2  # one call per layer
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    got.square().sum().backward()
    want.square().sum().backward()
    for (name, a), b in zip(fa4.named_parameters(), sdpa.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-9, rtol=1e-9, msg=name)


@pytest.mark.parametrize(
    "capability,dtype,head_dim,expected",
    [
        ((9, 0), torch.bfloat16, 128, "flash_attn_3"),  # Hopper: FA3 where built, then FA4
        ((10, 0), torch.float16, 128, "flash_attn_4"),  # Blackwell
        ((10, 0), torch.bfloat16, 192, "flash_attn"),  # FA4 on sm_100: Dh <= 128 or 256
        ((9, 0), torch.bfloat16, 100, "flash_attn_3"),  # FA4: Dh a multiple of 8
        ((8, 0), torch.bfloat16, 128, "flash_attn"),  # Ampere: no FA4
        ((12, 0), torch.bfloat16, 128, "flash_attn"),  # consumer Blackwell: not selected
        ((9, 0), torch.float32, 128, "sdpa"),
    ],
)
def test_fa4_selection(monkeypatch, capability, dtype, head_dim, expected) -> None:
    monkeypatch.setattr(va, "_cuda_capability", lambda device: capability)
    for flag in ("_HAS_FLASH_ATTN_4", "_HAS_FLASH_ATTN_3", "_HAS_FLASH_ATTN"):
        monkeypatch.setattr(va, flag, True)
    # flash_attn_3 on sm_100 / sm_120 does not run: the next in line is flash-attn 2.
    assert varlen_backend(torch.device("cuda", 0), dtype, head_dim) == expected
    assert varlen_backend(torch.device("cpu"), dtype, head_dim) == "sdpa"


def test_named_fa4_that_cannot_run_fails_in_one_line(monkeypatch, seed: int) -> None:
    monkeypatch.setattr(va, "_HAS_FLASH_ATTN_4", False)
    q, k, v, cu = _packed([3, 4], 4, 2, 8, torch.float32)
    install = "flash-attn-4 is not installed: pip install 'reflectioncoder[hopper]'"
    with pytest.raises(ValueError, match=re.escape("'flash_attn_4' does not run here: " + install)):
        varlen_attention(q, k, v, cu, 4, backend="flash_attn_4")
    model = build_tiny_llama(40, hidden_size=32, num_layers=1, seed=seed)
    with pytest.raises(ValueError, match=r"^model\.attention: 'flash_attn_4' does not run here"):
        prepare_model(model, liger=False, attention="flash_attn_4")
    monkeypatch.setattr(va, "_HAS_FLASH_ATTN_4", True)
    cuda = torch.device("cuda", 0)
    assert va.unavailable_reason("flash_attn_4", torch.device("cpu")) == (
        "it needs a CUDA device, got cpu"
    )
    monkeypatch.setattr(va, "_cuda_capability", lambda device: (8, 0))
    assert "not sm_80" in va.unavailable_reason("flash_attn_4", cuda, torch.bfloat16, 128)
    monkeypatch.setattr(va, "_cuda_capability", lambda device: (10, 0))
    assert "got 192" in va.unavailable_reason("flash_attn_4", cuda, torch.bfloat16, 192)
    assert va.unavailable_reason("flash_attn_4", cuda, torch.bfloat16, 256) is None


def test_probe_finds_fa4_without_importing_it(monkeypatch, tmp_path) -> None:
    # FA4's wheel ships flash_attn/cute with no flash_attn/__init__.py: a namespace package,
    # which must not count as flash-attn 2; FA4 counts only with its CuTe DSL (cutlass).
    (tmp_path / "flash_attn" / "cute").mkdir(parents=True)
    (tmp_path / "flash_attn" / "cute" / "__init__.py").write_text("raise ImportError('probed')")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    assert not va._regular_package("flash_attn") and not va._has_flash_attn_4()
    (tmp_path / "cutlass").mkdir()
    (tmp_path / "cutlass" / "__init__.py").write_text("raise ImportError('probed')")
    importlib.invalidate_caches()
    assert va._has_flash_attn_4()
    (tmp_path / "flash_attn" / "__init__.py").write_text("")
    importlib.invalidate_caches()
    assert va._regular_package("flash_attn")


def test_config_names_the_same_backends() -> None:
    assert ATTENTION == ("auto", *BACKENDS)
    assert (
        ModelConfig(arch={"hidden_size": 8}, attention="flash_attn_4").attention == "flash_attn_4"
    )
    with pytest.raises(
        ValueError, match=re.escape("model.attention: must be auto | flash_attn_3 | flash_attn_4")
    ):
        ModelConfig(arch={"hidden_size": 8}, attention="fa4")


def test_gpu_step_call_skips_a_kernel_that_cannot_run(monkeypatch) -> None:
    # bench/gpu_step_call.py's FA4 case: skipped with the reason where FA4 cannot run; the
    # other cases are never skipped.
    from bench.gpu_step_call import CASES, skip_reason
    from bench.providers.train_step import TrainStepConfig

    monkeypatch.setattr(va, "_HAS_FLASH_ATTN_4", False)
    cfg = TrainStepConfig(device="cpu")
    assert "flash-attn-4 is not installed" in skip_reason("attention flash_attn_4", cfg)
    monkeypatch.setattr(va, "_HAS_FLASH_ATTN_4", True)
    assert skip_reason("attention flash_attn_4", cfg) == "it needs a CUDA device, got cpu"
    assert all(skip_reason(name, cfg) is None for name in CASES if "attention" not in name)


def test_fa4_on_hopper_without_fa3(monkeypatch) -> None:
    """Hopper without FA3's source build (the usual install): FA4 is picked."""
    monkeypatch.setattr(va, "_cuda_capability", lambda device: (9, 0))
    monkeypatch.setattr(va, "_HAS_FLASH_ATTN_4", True)
    monkeypatch.setattr(va, "_HAS_FLASH_ATTN_3", False)
    monkeypatch.setattr(va, "_HAS_FLASH_ATTN", True)
    assert varlen_backend(torch.device("cuda", 0), torch.bfloat16, 128) == "flash_attn_4"
