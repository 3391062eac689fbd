"""Attention over a packed micro-batch: each of our varlen backends and a padded baseline.

``setup_attention`` packs S sequences (teacher/student-like lengths) into (T, H, Dh) q, k, v
with ``cu_seqlens``. Providers: ``varlen:<backend>`` for each ``varlen_attention`` backend
(``sdpa`` per-segment loop everywhere; ``torch_varlen``, ``flash_attn``, ``flash_attn_3``,
``flash_attn_4`` on CUDA where they run; the others skip, saying why) and ``padded_sdpa``, the
baseline: the sequences padded to the longest into one (S, H, L, Dh) batch, one SDPA call with
a causal + key-padding mask. That is not the authors' attention (their flash_attention_2 with a
2-D mask drops the padding as varlen attention does; the train-step suite times their recipe).
FLOPs: 4 Hq Dh sum_s L_s^2 / 2 forward (causal), 2.5x that for the backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from reflectioncoder.kernels.varlen_attention import BACKENDS, unavailable_reason, varlen_attention

from bench.providers.common import synchronize

MODES = ("fwd", "full")


def providers() -> list[str]:
    return [f"varlen:{b}" for b in BACKENDS] + ["padded_sdpa"]


def setup_attention(
    seqlens: list[int], hq: int, hkv: int, dh: int, dtype: torch.dtype, device: str, seed: int = 0
) -> dict:
    gen = torch.Generator(device=device).manual_seed(seed)
    t = sum(seqlens)

    def make(h: int) -> torch.Tensor:
        x = torch.empty(t, h, dh, dtype=dtype, device=device).normal_(generator=gen)
        return x.requires_grad_()

    cu = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(seqlens).cumsum(0)
    return dict(
        q=make(hq),
        k=make(hkv),
        v=make(hkv),
        cu=cu.to(device),
        seqlens=list(seqlens),
        device=device,
    )


def unavailable(provider: str, x: dict) -> str | None:
    if provider.startswith("varlen:"):
        backend = provider.split(":", 1)[1]
        q = x["q"]
        why = unavailable_reason(backend, q.device, q.dtype, q.shape[-1])
        if why is not None:
            return f"{backend}: {why}"
    return None


def flops(mode: str, x: dict) -> float:
    q = x["q"]
    fwd = 4 * q.shape[1] * q.shape[2] * sum(n * n for n in x["seqlens"]) / 2
    return fwd * (3.5 if mode == "full" else 1.0)


def _padded_sdpa(x: dict) -> torch.Tensor:
    q, k, v, lens = x["q"], x["k"], x["v"], x["seqlens"]
    longest = max(lens)

    def pad(t: torch.Tensor) -> torch.Tensor:  # (T, H, Dh) -> (S, H, L, Dh)
        parts = [seg.transpose(0, 1) for seg in t.split(lens)]
        return torch.stack([F.pad(p, (0, 0, 0, longest - p.shape[1])) for p in parts])

    keep = (
        torch.arange(longest, device=q.device)[None, :]
        < torch.tensor(lens, device=q.device)[:, None]
    )
    causal = torch.ones(longest, longest, dtype=torch.bool, device=q.device).tril()
    mask = causal[None, None] & keep[:, None, None, :]
    out = F.scaled_dot_product_attention(
        pad(q), pad(k), pad(v), attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1]
    )
    return torch.cat([o[:, :n].transpose(0, 1) for o, n in zip(out, lens, strict=True)])


def make_attention_step(provider: str, mode: str, x: dict) -> Callable[[], torch.Tensor]:
    """One timed call: attention forward (``fwd``) or forward + backward (``full``)."""
    if provider == "padded_sdpa":
        fn = lambda: _padded_sdpa(x)  # noqa: E731
    elif provider.startswith("varlen:"):
        backend = provider.split(":", 1)[1]
        fn = lambda: varlen_attention(  # noqa: E731
            x["q"],
            x["k"],
            x["v"],
            x["cu"],
            max(x["seqlens"]),
            seqlens=x["seqlens"],
            backend=backend,
        )
    else:
        raise ValueError(f"provider: expected one of {providers()}, got {provider!r}")

    def step() -> torch.Tensor:
        for t in (x["q"], x["k"], x["v"]):
            t.grad = None
        out = fn()
        if mode == "full":
            out.backward(torch.ones_like(out))
        synchronize(x["device"])
        return out

    return step
