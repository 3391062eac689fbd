"""Attention-score soft-capping in the varlen attention (Gemma 2's ``attn_logit_softcapping``):
scores s -> c tanh(s / c) before the causal softmax, on every backend the packed attention has:
the CPU's (``sdpa``: capped segments written out, autograd's backward) against a float64
reference, forward and backward, in the eager call, the compiled layers' custom op and the
transformers attention hook; the flash backends get the cap as their own ``softcap`` argument
(stand-ins with their signatures, here); torch's varlen kernel, which has none, is refused in
one line (and ``auto`` passes it by)."""

from __future__ import annotations

import importlib
import random
import sys
import types

import pytest
import torch
from reference.varlen_attention import varlen_attention_reference
from reflectioncoder.kernels.varlen_attention import varlen_attention, varlen_backend
from reflectioncoder.kernels.varlen_attention_op import varlen_attention_op
from test_varlen_attention import _fake_cuda, _packed, _random_seqlens

from reflectioncoder.packed_attention import _varlen_attention_forward

va = importlib.import_module("reflectioncoder.kernels.varlen_attention")
# a cap that binds hard (scores of order 1-6 against c = 1) and Gemma 2's (c = 50, scores x 20)
CAPS = {1.0: 1.0, 50.0: 20.0}


def _case(seed: int, cap: float, hq: int, hkv: int, dtype=torch.float64):
    seqlens = _random_seqlens(random.Random(seed)) + [0]  # an empty segment too
    q, k, v, cu = _packed(seqlens, hq, hkv, 8, dtype)
    return q * CAPS[cap], k, v, cu, seqlens


def _with_grads(fn, q, k, v, grad_out):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = fn(*leaves)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), *(x.grad for x in leaves)


def _reference(q, k, v, seqlens, grad_out, causal, cap, scale=0.3):
    def fn(q, k, v):
        return varlen_attention_reference(q, k, v, seqlens, causal, scale, softcap=cap)

    return _with_grads(fn, *(x.double() for x in (q, k, v)), grad_out.double())


def _assert_close(ours, ref, tol):
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref, strict=True):
        err = float((a.double() - b).abs().max() / b.abs().max())
        assert err <= tol, f"{name}: relative error {err:.1e} > {tol:.0e}"


@pytest.mark.parametrize("cap", sorted(CAPS))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2)])
def test_capped_attention_and_its_gradients_match_float64(seed, cap, causal, hq, hkv):
    q, k, v, cu, seqlens = _case(seed, cap, hq, hkv)
    grad_out = torch.randn_like(q)

    def ours(q, k, v):
        return varlen_attention(
            q, k, v, cu, max(seqlens), causal=causal, softmax_scale=0.3, softcap=cap
        )

    _assert_close(_with_grads(ours, q, k, v, grad_out),
                  _reference(q, k, v, seqlens, grad_out, causal, cap), 1e-12)  # fmt: skip
    uncapped = varlen_attention(q, k, v, cu, max(seqlens), causal=causal, softmax_scale=0.3)
    assert (uncapped - _reference(q, k, v, seqlens, grad_out, causal, cap)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_keeps_the_scores_in_fp32(seed, dtype):
    """fp32 / bf16 inputs: the scores and softmax in fp32, as the flash kernels keep them;
    the error is the inputs' and the output's rounding."""
    q, k, v, cu, seqlens = _case(seed, 1.0, 6, 2, dtype)
    grad_out = torch.randn_like(q)

    def ours(q, k, v):
        return varlen_attention(q, k, v, cu, max(seqlens), softmax_scale=0.3, softcap=1.0)

    got = _with_grads(ours, q, k, v, grad_out)
    assert all(t.dtype == dtype for t in got)
    _assert_close(got, _reference(q, k, v, seqlens, grad_out, True, 1.0),
                  1e-5 if dtype == torch.float32 else 2e-2)  # fmt: skip


def test_the_compiled_layers_op_applies_it(seed):
    """``torch.ops.reflectioncoder.varlen_attention`` (compiled layers): the cap in its forward
    and its backward (the rerun, which hands the cap to the backend again)."""
    q, k, v, cu, seqlens = _case(seed, 1.0, 6, 2)
    grad_out = torch.randn_like(q)

    def ours(q, k, v):
        return varlen_attention_op(q, k, v, cu, max(seqlens), True, 0.3, "auto", 1.0)

    _assert_close(_with_grads(ours, q, k, v, grad_out),
                  _reference(q, k, v, seqlens, grad_out, True, 1.0), 1e-12)  # fmt: skip


def test_the_attention_hook_passes_the_models_cap(seed):
    """transformers' attention call with ``softcap=`` (Gemma 2's attention passes its
    attn_logit_softcapping): the packed attention applies it; it was refused."""
    q, k, v, cu, seqlens = _case(seed, 1.0, 4, 2)
    as_hf = [t.transpose(0, 1)[None] for t in (q, k, v)]  # (1, H, T, Dh)
    out, _ = _varlen_attention_forward(
        torch.nn.Module(), *as_hf, None, scaling=0.3, cu_seq_lens_q=cu,
        max_length_q=max(seqlens), softcap=1.0,
    )  # fmt: skip
    want = varlen_attention_reference(q, k, v, seqlens, True, 0.3, softcap=1.0)
    torch.testing.assert_close(out[0], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "backend,module",
    [("flash_attn", "flash_attn"), ("flash_attn_3", "flash_attn_interface"),
     ("flash_attn_4", "flash_attn.cute")],
)  # fmt: skip
def test_the_flash_backends_get_it_as_their_softcap(monkeypatch, seed, backend, module):
    """flash-attn 2 / FA3 / FA4 are not installed here: a stand-in with their ``softcap``
    keyword computes the reference with the cap it is handed."""
    seen = []

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                               max_seqlen_k, dropout_p=0.0, softmax_scale=None, causal=False,
                               softcap=0.0, **kwargs):  # fmt: skip
        seen.append(softcap)
        seqlens = torch.diff(cu_seqlens_q).tolist()
        return varlen_attention_reference(q, k, v, seqlens, causal, softmax_scale, softcap)

    monkeypatch.setitem(
        sys.modules, module, types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func)
    )
    monkeypatch.setattr(va, "backend_available", lambda b, *a: b in (backend, "sdpa"))
    q, k, v, cu, seqlens = _case(seed, 1.0, 4, 2)
    out = varlen_attention(q, k, v, cu, max(seqlens), softmax_scale=0.3, softcap=1.0,
                           backend=backend)  # fmt: skip
    assert seen == [1.0]
    want = varlen_attention_reference(q, k, v, seqlens, True, 0.3, softcap=1.0)
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_a_flash_release_without_softcap_is_refused_in_one_line(monkeypatch):
    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                               dropout_p=0.0, softmax_scale=None, causal=False):  # fmt: skip
        raise AssertionError("called without the cap")

    monkeypatch.setitem(
        sys.modules, "flash_attn",
        types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func),
    )  # fmt: skip
    monkeypatch.setattr(va, "backend_available", lambda b, *a: b in ("flash_attn", "sdpa"))
    q, k, v, cu = _packed([3, 4], 4, 2, 8, torch.float64)
    with pytest.raises(ValueError, match=r"^backend: 'flash_attn': .* takes no softcap") as err:
        varlen_attention(q, k, v, cu, 4, softcap=50.0, backend="flash_attn")
    assert "\n" not in str(err.value)


def test_torch_varlen_is_refused_for_it_and_auto_passes_it_by(monkeypatch):
    """torch's varlen kernel has no cap: asked for by name, one line; ``auto`` takes the next
    backend that applies it (a flash-attn one where installed, else ``sdpa``)."""
    _fake_cuda(monkeypatch, (9, 0), fa2=False)
    cuda = torch.device("cuda", 0)
    assert varlen_backend(cuda, torch.bfloat16, 64) == "torch_varlen"
    assert varlen_backend(cuda, torch.bfloat16, 64, softcap=50.0) == "sdpa"
    _fake_cuda(monkeypatch, (9, 0), fa2=True)
    assert varlen_backend(cuda, torch.bfloat16, 64, softcap=50.0) == "flash_attn"
    monkeypatch.setattr(va, "backend_available", lambda b, *a: True)
    q, k, v, cu = _packed([3, 4], 4, 2, 8, torch.bfloat16)
    with pytest.raises(ValueError, match=r"^backend: 'torch_varlen' applies no attention-score"):
        varlen_attention(q, k, v, cu, 4, softcap=50.0, backend="torch_varlen")


@pytest.mark.parametrize("cap", [-1.0, float("inf"), float("nan")])
def test_a_bad_cap_is_refused(cap):
    q, k, v, cu = _packed([3, 4], 4, 2, 8, torch.float64)
    with pytest.raises(ValueError, match=r"^softcap: expected"):
        varlen_attention(q, k, v, cu, 4, softcap=cap)
