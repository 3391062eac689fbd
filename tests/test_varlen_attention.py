"""kernels.varlen_attention against a float64 per-segment reference."""

from __future__ import annotations

import importlib
import inspect
import random

import pytest
import torch
from reference.varlen_attention import (
    varlen_attention_reference,
    varlen_attention_reference_grad,
)
from reflectioncoder.kernels.varlen_attention import varlen_attention, varlen_backend

# The module itself (the package re-exports the function under the same name).
va = importlib.import_module("reflectioncoder.kernels.varlen_attention")


def _packed(seqlens: list[int], hq: int, hkv: int, dh: int, dtype: torch.dtype):
    t = sum(seqlens)
    q = torch.randn(t, hq, dh, dtype=dtype)
    k = torch.randn(t, hkv, dh, dtype=dtype)
    v = torch.randn(t, hkv, dh, dtype=dtype)
    cu = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(seqlens).cumsum(0)
    return q, k, v, cu


def _random_seqlens(rng: random.Random) -> list[int]:
    # Odd lengths, length-1 segments, one longer segment.
    lens = [1, rng.randint(2, 9) | 1, rng.randint(10, 37), 1, rng.randint(3, 20)]
    rng.shuffle(lens)
    return lens


@pytest.mark.parametrize("hq,hkv,dh", [(4, 4, 8), (6, 2, 16), (3, 1, 5)])
@pytest.mark.parametrize("causal", [True, False])
def test_forward_matches_reference(seed: int, hq: int, hkv: int, dh: int, causal: bool) -> None:
    seqlens = _random_seqlens(random.Random(seed))
    q, k, v, cu = _packed(seqlens, hq, hkv, dh, torch.float32)
    scale = 0.3 if hq == 3 else None
    out = varlen_attention(q, k, v, cu, max(seqlens), causal=causal, softmax_scale=scale)
    ref = varlen_attention_reference(q, k, v, seqlens, causal=causal, softmax_scale=scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
    # The host list gives the same result without reading cu_seqlens.
    out2 = varlen_attention(
        q, k, v, cu, max(seqlens), causal=causal, softmax_scale=scale, seqlens=seqlens
    )
    torch.testing.assert_close(out2, out, atol=0, rtol=0)


def test_segments_do_not_leak(seed: int) -> None:
    # Changing one segment's keys must not move any other segment's output.
    seqlens = [5, 1, 8]
    q, k, v, cu = _packed(seqlens, 4, 2, 8, torch.float64)
    out = varlen_attention(q, k, v, cu, 8)
    k2 = k.clone()
    k2[6:] += torch.randn_like(k2[6:])
    out2 = varlen_attention(q, k2, v, cu, 8)
    torch.testing.assert_close(out2[:6], out[:6], atol=0, rtol=0)
    assert not torch.allclose(out2[6:], out[6:])
    # A length-1 causal segment returns its own value.
    torch.testing.assert_close(out[5], v[5].repeat_interleave(2, dim=0), atol=1e-12, rtol=0)


def test_gradients_match_reference(seed: int) -> None:
    seqlens = _random_seqlens(random.Random(seed + 1))
    q, k, v, cu = _packed(seqlens, 6, 2, 8, torch.float64)
    grad_out = torch.randn_like(q) * 3.0  # an upstream gradient that is not 1
    ours = [x.clone().requires_grad_() for x in (q, k, v)]
    refs = [x.clone().requires_grad_() for x in (q, k, v)]
    varlen_attention(*ours, cu, max(seqlens)).backward(grad_out)
    varlen_attention_reference(*refs, seqlens).backward(grad_out)
    for name, a, b in zip("qkv", ours, refs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-10, msg=f"d{name}")


def test_empty_segment_and_backend(seed: int) -> None:
    seqlens = [3, 0, 4]
    q, k, v, cu = _packed(seqlens, 2, 1, 4, torch.float32)
    out = varlen_attention(q, k, v, cu, 4)
    ref = varlen_attention_reference(q, k, v, seqlens)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=2e-6)
    assert varlen_backend(torch.device("cpu")) == "sdpa"


def test_bad_inputs_raise() -> None:
    q, k, v, cu = _packed([3, 4], 4, 2, 8, torch.float32)
    with pytest.raises(ValueError, match="cu_seqlens"):
        varlen_attention(q, k, v, cu.long(), 4)
    with pytest.raises(ValueError, match="q, k"):
        varlen_attention(q[:, :3], k, v, cu, 4)
    with pytest.raises(ValueError, match="k, v"):
        varlen_attention(q, k, v[:, :1], cu, 4)
    with pytest.raises(ValueError, match="seqlens"):
        varlen_attention(q, k, v, cu, 4, seqlens=[3, 3])
    with pytest.raises(ValueError, match="cu_seqlens"):
        varlen_attention(q, k, v, torch.tensor([0, 3, 6], dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="q:"):
        varlen_attention(q[0], k, v, cu, 4)


# --- Backend selection and the CUDA paths, checked on the CPU --------------------------------


def _fake_cuda(monkeypatch, capability, fa3=False, fa2=False, torch_varlen=True, built=True):
    monkeypatch.setattr(va, "_cuda_capability", lambda device: capability)
    monkeypatch.setattr(va, "_HAS_FLASH_ATTN_3", fa3)
    monkeypatch.setattr(va, "_HAS_FLASH_ATTN", fa2)
    monkeypatch.setattr(va, "_HAS_TORCH_VARLEN", torch_varlen)
    monkeypatch.setattr(va, "_torch_flash_built", lambda: built)


@pytest.mark.parametrize(
    "capability,fa3,fa2,torch_varlen,dtype,head_dim,expected",
    [
        ((9, 0), True, True, True, torch.bfloat16, 128, "flash_attn_3"),  # Hopper, FA3 first
        ((8, 0), True, True, True, torch.bfloat16, 128, "flash_attn"),  # FA3 is Hopper-only
        ((9, 0), False, True, True, torch.float16, 64, "flash_attn"),
        ((9, 0), False, False, True, torch.bfloat16, 128, "torch_varlen"),  # no package needed
        ((8, 6), False, False, True, torch.bfloat16, 64, "torch_varlen"),
        ((9, 0), False, False, True, torch.float32, 128, "sdpa"),  # flash kernels: half only
        ((9, 0), True, True, True, torch.float32, 128, "sdpa"),
        ((9, 0), False, False, True, torch.bfloat16, 100, "sdpa"),  # torch's: Dh % 8 == 0
        ((9, 0), False, True, True, torch.bfloat16, 100, "flash_attn"),  # FA2 pads Dh itself
        ((9, 0), True, True, True, torch.bfloat16, 512, "sdpa"),  # Dh > 256
        ((7, 5), False, True, True, torch.float16, 64, "sdpa"),  # pre-Ampere
        ((9, 0), False, False, False, torch.bfloat16, 128, "sdpa"),  # torch without varlen
    ],
)
def test_backend_selection_on_cuda(
    monkeypatch, capability, fa3, fa2, torch_varlen, dtype, head_dim, expected
) -> None:
    _fake_cuda(monkeypatch, capability, fa3, fa2, torch_varlen)
    assert varlen_backend(torch.device("cuda", 0), dtype, head_dim) == expected
    # The CPU never leaves the per-segment SDPA path, whatever is installed.
    assert varlen_backend(torch.device("cpu"), dtype, head_dim) == "sdpa"


def test_torch_without_flash_kernels_falls_back(monkeypatch) -> None:
    _fake_cuda(monkeypatch, (9, 0), built=False)
    assert varlen_backend(torch.device("cuda", 0)) == "sdpa"


def test_unavailable_backend_raises() -> None:
    q, k, v, cu = _packed([3, 4], 4, 2, 8, torch.float32)
    with pytest.raises(ValueError, match="torch_varlen.*does not run here"):
        varlen_attention(q, k, v, cu, 4, backend="torch_varlen")
    with pytest.raises(ValueError, match="backend: expected one of"):
        varlen_attention(q, k, v, cu, 4, backend="xformers")


@pytest.fixture
def torch_flash_kernels_on_cpu():
    """CPU stand-ins for torch's CUDA flash kernels (aten::_flash_attention_forward/_backward),
    computed by the float64 reference: the real ``torch.nn.attention.varlen.varlen_attn`` (its
    argument handling, custom op and autograd) runs around them. Yields the calls' flags."""
    calls: list[dict] = []

    def forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, debug, **kw):
        calls.append(dict(kw, is_causal=is_causal, max_q=max_q, max_k=max_k, hkv=k.shape[1]))
        assert torch.equal(cu_q, cu_k) and dropout_p == 0.0
        seqlens = torch.diff(cu_q).tolist()
        out = varlen_attention_reference(q, k, v, seqlens, is_causal, kw["scale"])
        lse = torch.zeros(q.shape[1], q.shape[0])
        return out.to(q.dtype), lse, torch.zeros(2, dtype=torch.uint64), q.new_empty(0), lse

    def backward(do, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, p, is_causal, rng, unused, **kw):
        calls.append(dict(kw, is_causal=is_causal, backward=True))
        grads = varlen_attention_reference_grad(
            do, q, k, v, torch.diff(cu_q).tolist(), is_causal, kw["scale"]
        )
        return tuple(g.to(x.dtype) for g, x in zip(grads, (q, k, v), strict=True))

    lib = torch.library.Library("aten", "IMPL")
    lib.impl("_flash_attention_forward", forward, "CPU")
    lib.impl("_flash_attention_backward", backward, "CPU")
    try:
        yield calls
    finally:
        lib._destroy()


@pytest.mark.parametrize("causal", [True, False])
def test_torch_varlen_path_matches_reference(
    monkeypatch, torch_flash_kernels_on_cpu, seed: int, causal: bool
) -> None:
    # Our call into torch's varlen_attn: causal as the window (-1, 0), GQA, the scale, and the
    # gradients through torch's autograd, all against the float64 reference.
    monkeypatch.setattr(va, "backend_available", lambda b, *a: b in ("torch_varlen", "sdpa"))
    seqlens = _random_seqlens(random.Random(seed))
    q, k, v, cu = _packed(seqlens, 6, 2, 8, torch.float64)
    grad_out = torch.randn_like(q)
    ours = [x.clone().requires_grad_() for x in (q, k, v)]
    out = varlen_attention(
        *ours, cu, max(seqlens), causal=causal, softmax_scale=0.4, backend="torch_varlen"
    )
    out.backward(grad_out)
    fwd, bwd = torch_flash_kernels_on_cpu
    assert fwd["is_causal"] is causal and bwd["is_causal"] is causal
    assert (fwd["window_size_left"], fwd["window_size_right"]) == ((-1, 0) if causal else (-1, -1))
    assert fwd["scale"] == 0.4 and fwd["max_q"] == max(seqlens) and fwd["hkv"] == 2
    ref = varlen_attention_reference(q, k, v, seqlens, causal, 0.4)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    refs = [x.clone().requires_grad_() for x in (q, k, v)]
    varlen_attention_reference(*refs, seqlens, causal, 0.4).backward(grad_out)
    for name, a, b in zip("qkv", ours, refs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-10, msg=f"d{name}")


@pytest.mark.parametrize("causal", [True, False])
def test_torch_varlen_before_2_11(monkeypatch, seed: int, causal: bool) -> None:
    # torch 2.9-2.10's varlen_attn: an is_causal flag, no window_size, no enable_gqa (so the KV
    # heads are repeated for their query groups): a stand-in with that signature, forward and
    # backward against the float64 reference.
    import torch.nn.attention.varlen as tv

    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False,
                    return_aux=None, scale=None):  # fmt: skip
        assert query.shape[1] == key.shape[1] == value.shape[1], "GQA reached torch 2.10"
        return varlen_attention_reference(
            query, key, value, torch.diff(cu_seq_q).tolist(), is_causal, scale
        )

    monkeypatch.setattr(tv, "varlen_attn", varlen_attn)
    monkeypatch.setattr(va, "backend_available", lambda b, *a: b in ("torch_varlen", "sdpa"))
    seqlens = _random_seqlens(random.Random(seed))
    q, k, v, cu = _packed(seqlens, 6, 2, 8, torch.float64)
    ours = [x.clone().requires_grad_() for x in (q, k, v)]
    out = varlen_attention(
        *ours, cu, max(seqlens), causal=causal, softmax_scale=0.4, backend="torch_varlen"
    )
    grad_out = torch.randn_like(q)
    out.backward(grad_out)
    refs = [x.clone().requires_grad_() for x in (q, k, v)]
    ref = varlen_attention_reference(*refs, seqlens, causal, 0.4)
    ref.backward(grad_out)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    for name, a, b in zip("qkv", ours, refs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-10, msg=f"d{name}")


@pytest.mark.parametrize(
    "backend,module", [("flash_attn", "flash_attn"), ("flash_attn_3", "flash_attn_interface")]
)
def test_flash_attn_call_binds_to_its_interface(monkeypatch, backend, module) -> None:
    # flash-attn is not installed here: a stand-in module with FA2's / FA3's signature checks
    # the call (keywords as both name them) and returns the reference (FA3 may return a tuple).
    import sys
    import types

    def flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p=0.0,
        softmax_scale=None,
        causal=False,
        **kwargs,
    ):
        seqlens = torch.diff(cu_seqlens_q).tolist()
        out = varlen_attention_reference(q, k, v, seqlens, causal, softmax_scale)
        return (out, None) if module == "flash_attn_interface" else out

    monkeypatch.setitem(
        sys.modules, module, types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func)
    )
    monkeypatch.setattr(va, "backend_available", lambda b, *a: b in (backend, "sdpa"))
    seqlens = [3, 1, 5]
    q, k, v, cu = _packed(seqlens, 4, 2, 8, torch.float64)
    out = varlen_attention(q, k, v, cu, 5, backend=backend)
    torch.testing.assert_close(out, varlen_attention_reference(q, k, v, seqlens), atol=0, rtol=0)


def test_torch_varlen_signature() -> None:
    # The installed torch's varlen_attn takes our arguments by the names we use.
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    assert list(params)[:7] == ["query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k"]
    for name in ("scale", "window_size", "enable_gqa"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
