"""kernels.varlen_attention against a float64 per-segment reference."""

from __future__ import annotations

import random

import pytest
import torch
from reference.varlen_attention import varlen_attention_reference
from reflectioncoder.kernels.varlen_attention import varlen_attention, varlen_backend


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
