"""Causal attention over packed variable-length sequences (one canonical entry point).

Packed layout (flash-attention's varlen convention): the S sequences of a micro-batch lie end to
end along the token axis, ``cu_seqlens`` (S + 1,) int32 holds their boundaries, and a token
attends only to tokens of its own sequence (causally, by index inside the sequence; RoPE
positions were applied before and may have gaps).

  out[t] = sum_{u in seg(t), u <= t} softmax_u(scale * q[t] . k[u]) v[u]

Backends, chosen per call from the device, dtype and head size (``varlen_backend``), first that
applies:
- ``flash_attn_3``: FA3's ``flash_attn_interface.flash_attn_varlen_func`` (Hopper, sm_90, where
  the hopper build is installed). First on Hopper: the published Hopper figures put FA4 at
  or below FA3 there (torchtitan #4413, flash-attention #2889).
- ``flash_attn_4``: FlashAttention-4's ``flash_attn.cute.flash_attn_varlen_func`` (CuTe DSL,
  Hopper sm_90 and Blackwell sm_100; a pure-Python wheel, setup.py extra ``hopper``). Its
  kernels are compiled on first use for each configuration (not per length), then cached.
- ``flash_attn``: flash-attn 2's ``flash_attn_varlen_func`` (setup.py extra ``gpu``).
- ``torch_varlen``: PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` (the flash kernel
  built into torch; CUDA only, sm_80+), so CUDA needs no extra package.
- ``sdpa``: one ``scaled_dot_product_attention`` call per segment, which takes PyTorch's fused
  kernels (CPU and CUDA; O(L) memory) and never builds a T x T mask. The CPU path, and CUDA in
  fp32 (the flash kernels take fp16 / bf16 only). Segment lengths come from a host list
  (``seqlens``), so the loop issues no device sync.
All take (T, H, Dh) packed tensors and GQA natively (no repeated k / v).

Attention-score soft-capping (Gemma 2's ``attn_logit_softcapping``): ``softcap=c`` makes the
scores c tanh(scale q . k / c) before the causal softmax. The flash backends take it as their
``softcap`` argument; ``sdpa`` (SDPA has none) computes such segments written out
(``_capped_varlen``: scores and softmax in fp32 or wider, autograd's backward, O(H L^2) memory
per segment); torch's varlen kernel has none and is refused for it (``SOFTCAP_BACKENDS``).

Cost: 4 * Hq * Dh * sum_s L_s^2 / 2 FLOPs forward (causal), twice that backward.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .flop_formulas import register_attention_formulas

register_attention_formulas()  # torch's FLOP counter sees the CPU path's SDPA


def _regular_package(name: str) -> bool:
    """``name`` is installed with its own ``__init__`` (not only a namespace: flash-attn-4's
    wheel ships ``flash_attn/cute`` without ``flash_attn/__init__.py``)."""
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin is not None


def _has_flash_attn_4() -> bool:
    """flash-attn-4's ``flash_attn/cute`` and its CuTe DSL (``cutlass``), found without importing
    either (importing ``flash_attn`` would load flash-attn 2's CUDA extension where installed)."""
    spec = importlib.util.find_spec("flash_attn")
    roots = spec.submodule_search_locations or () if spec is not None else ()
    found = any((Path(root) / "cute" / "__init__.py").is_file() for root in roots)
    return found and importlib.util.find_spec("cutlass") is not None


# Optional packages, probed without importing them: flash-attn-4 (setup.py extra `hopper`),
# flash-attn 2 (extra `gpu`) and FA3's hopper build (module `flash_attn_interface`).
_HAS_FLASH_ATTN_4 = _has_flash_attn_4()
_HAS_FLASH_ATTN = _regular_package("flash_attn")
_HAS_FLASH_ATTN_3 = importlib.util.find_spec("flash_attn_interface") is not None
_HAS_TORCH_VARLEN = importlib.util.find_spec("torch.nn.attention.varlen") is not None
BACKENDS = ("flash_attn_3", "flash_attn_4", "flash_attn", "torch_varlen", "sdpa")
# The backends that apply a soft cap on the scores (the flash ones: their `softcap` argument).
SOFTCAP_BACKENDS = ("flash_attn_3", "flash_attn_4", "flash_attn", "sdpa")
# The flash kernels' limits: half precision, head size up to 256 (a multiple of 8 for torch's
# and FA4's; FA4 on sm_100: up to 128, or 256).
_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_FLASH_MAX_HEAD_DIM = 256
_FA4_INSTALL = "pip install 'reflectioncoder[hopper]'"


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _torch_flash_built() -> bool:
    return torch.backends.cuda.is_flash_attention_available()


_NOT_INSTALLED = {
    "flash_attn_4": f"flash-attn-4 is not installed: {_FA4_INSTALL}",
    "flash_attn_3": "FA3's hopper build is not installed",
    "flash_attn": "flash-attn is not installed: pip install '.[gpu]'",
    "torch_varlen": "this torch has no torch.nn.attention.varlen",
}


def backend_installed(backend: str) -> bool:
    """Whether ``backend``'s package is installed (found without importing it)."""
    return {
        "flash_attn_4": _HAS_FLASH_ATTN_4,
        "flash_attn_3": _HAS_FLASH_ATTN_3,
        "flash_attn": _HAS_FLASH_ATTN,
        "torch_varlen": _HAS_TORCH_VARLEN,
    }.get(backend, True)


def unavailable_reason(
    backend: str,
    device: torch.device,
    dtype: torch.dtype | None = None,
    head_dim: int | None = None,
    softcap: float | None = None,
) -> str | None:
    """Why ``backend`` does not run for q on ``device`` with ``dtype`` and head size
    ``head_dim`` (either None: not checked), or for a model whose scores are soft-capped at
    ``softcap``, in one line; None when it runs."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or 'auto', got {backend!r}")
    if softcap and backend not in SOFTCAP_BACKENDS:
        return "it applies no attention-score soft cap (the model's attn_logit_softcapping)"
    if backend == "sdpa":
        return None
    if not backend_installed(backend):
        return _NOT_INSTALLED[backend]
    if device.type != "cuda":
        return f"it needs a CUDA device, got {device.type}"
    if dtype is not None and dtype not in _FLASH_DTYPES:
        return f"it takes fp16 / bf16, got {dtype}"
    if head_dim is not None and head_dim > _FLASH_MAX_HEAD_DIM:
        return f"head size {head_dim} > {_FLASH_MAX_HEAD_DIM}"
    return _device_reason(backend, _cuda_capability(device), head_dim or 8)


def _device_reason(backend: str, capability: tuple[int, int], head_dim: int) -> str | None:
    sm = f"sm_{capability[0]}{capability[1]}"
    if backend == "flash_attn_4":
        if capability[0] not in (9, 10):
            return f"FA4 runs on Hopper sm_90 and Blackwell sm_100, not {sm}"
        sizes = "8-128 in steps of 8, or 256" if capability[0] == 10 else "8-256 in steps of 8"
        if head_dim % 8 or (capability[0] == 10 and 128 < head_dim < 256):
            return f"FA4 on {sm} takes head sizes {sizes}, got {head_dim}"
        return None
    if backend == "flash_attn_3":
        return None if capability[0] == 9 else f"FA3 runs on Hopper sm_90 only, not {sm}"
    if capability < (8, 0):
        return f"{backend} needs sm_80 or newer, not {sm}"
    if backend == "torch_varlen" and head_dim % 8:
        return f"torch's varlen kernel takes head sizes in steps of 8, got {head_dim}"
    if backend == "torch_varlen" and not _torch_flash_built():
        return "this torch was built without its flash kernels"
    return None


def backend_available(
    backend: str, device: torch.device, dtype: torch.dtype, head_dim: int
) -> bool:
    """Whether ``backend`` runs for q on ``device`` with ``dtype`` and head size ``head_dim``."""
    return unavailable_reason(backend, device, dtype, head_dim) is None


def varlen_backend(
    device: torch.device,
    dtype: torch.dtype = torch.bfloat16,
    head_dim: int = 128,
    softcap: float | None = None,
) -> str:
    """The backend ``varlen_attention`` picks for (device, dtype, head_dim): the first of
    BACKENDS that is available (of SOFTCAP_BACKENDS with a ``softcap``)."""
    names = BACKENDS if not softcap else SOFTCAP_BACKENDS
    return next(b for b in names if backend_available(b, device, dtype, head_dim))


def resolve_backend(q: torch.Tensor, backend: str, softcap: float | None = None) -> str:
    """The backend that runs for q: ``varlen_backend``'s choice for "auto", else ``backend``
    itself, checked (one that cannot run for q's device, dtype and head size, or cannot apply
    the ``softcap`` asked for, raises)."""
    if backend == "auto":
        return varlen_backend(q.device, q.dtype, q.shape[-1], softcap)
    if not backend_available(backend, q.device, q.dtype, q.shape[-1]):
        why = unavailable_reason(backend, q.device, q.dtype, q.shape[-1])
        raise ValueError(f"backend: {backend!r} does not run here: {why}")
    if softcap and backend not in SOFTCAP_BACKENDS:
        raise ValueError(
            f"backend: {backend!r} applies no attention-score soft cap (softcap {softcap}, the "
            "model's attn_logit_softcapping); set model.attention to auto, sdpa or a flash-attn "
            "backend"
        )
    return backend


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    seqlens: list[int] | None,
    softcap: float | None = None,
) -> None:
    if softcap is not None and not (math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"softcap: expected None, 0 (none) or a finite number > 0, got {softcap}")
    if q.dim() != 3:
        raise ValueError(f"q: expected (T, Hq, Dh), got shape {tuple(q.shape)}")
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(
            f"k, v: expected equal shapes (T, Hkv, Dh), got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(
            f"k: expected (T={q.shape[0]}, Hkv, Dh={q.shape[2]}) to match q, got {tuple(k.shape)}"
        )
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q, k: Hq={q.shape[1]} must be a multiple of Hkv={k.shape[1]} (GQA)")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype != torch.int32:
        raise ValueError(
            f"cu_seqlens: expected (S + 1,) int32 with S >= 1, got shape "
            f"{tuple(cu_seqlens.shape)} dtype {cu_seqlens.dtype}"
        )
    if seqlens is not None:
        if len(seqlens) != cu_seqlens.numel() - 1:
            raise ValueError(
                f"seqlens: expected {cu_seqlens.numel() - 1} lengths (S), got {len(seqlens)}"
            )
        if any(n < 0 for n in seqlens) or sum(seqlens) != q.shape[0]:
            raise ValueError(
                f"seqlens: lengths must be >= 0 and sum to T={q.shape[0]}, got sum {sum(seqlens)}"
            )


def _sdpa_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seqlens: list[int],
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """Per-segment SDPA; q (T, Hq, Dh), k/v (T, Hkv, Dh) -> (T, Hq, Dh)."""
    gqa = q.shape[1] != k.shape[1]
    outs = []
    start = 0
    for n in seqlens:
        if n == 0:  # an empty segment contributes no rows
            continue
        end = start + n
        # (L, H, Dh) -> (1, H, L, Dh): SDPA's 4-D layout. It must be 4-D: with 3-D inputs the
        # CPU dispatcher takes the math path, which stores the (H, L, L) probabilities.
        o = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1).unsqueeze(0),
            k[start:end].transpose(0, 1).unsqueeze(0),
            v[start:end].transpose(0, 1).unsqueeze(0),
            is_causal=causal,
            scale=scale,
            enable_gqa=gqa,
        )
        outs.append(o[0].transpose(0, 1))
        start = end
    return _joined(outs, q, k, v)


def _joined(outs: list[torch.Tensor], q, k, v) -> torch.Tensor:
    """The segments' outputs end to end; T = 0: an empty output, still in the graph of q, k, v."""
    if not outs:
        return q * 0.0 + k.sum() * 0.0 + v.sum() * 0.0
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def _capped_varlen(q, k, v, seqlens: list[int], causal: bool, scale: float, cap: float):
    """Per-segment attention with soft-capped scores, c tanh(scale q . k / c), before the
    (causal) softmax; q (T, Hq, Dh), k/v (T, Hkv, Dh) -> (T, Hq, Dh). Written out (SDPA takes no
    cap): scores and softmax in fp32 (fp64 for fp64 inputs), as the flash kernels keep them;
    autograd differentiates it exactly (tanh's derivative included)."""
    group = q.shape[1] // k.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    outs, start = [], 0
    for n in (n for n in seqlens if n):
        rows = slice(start, start + n)
        qs = q[rows].transpose(0, 1).to(acc)  # (Hq, L, Dh)
        ks, vs = (t[rows].transpose(0, 1).repeat_interleave(group, 0).to(acc) for t in (k, v))
        scores = torch.tanh(qs @ ks.transpose(1, 2) * (scale / cap)) * cap
        if causal:
            future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        outs.append((torch.softmax(scores, dim=-1) @ vs).transpose(0, 1).to(q.dtype))
        start += n
    return _joined(outs, q, k, v)


def _flash_varlen(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool,
    scale: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """One varlen flash call over the whole packed batch (no host sync, no padding); a
    ``softcap`` goes to the flash kernel's own ``softcap`` (torch's kernel has none: refused
    by ``resolve_backend``)."""
    if backend == "torch_varlen":
        from torch.nn.attention.varlen import varlen_attn

        names = _parameters(varlen_attn)
        kwargs = {"scale": scale}
        # torch >= 2.11: window (-1, 0) is causal, (-1, -1) full; 2.9-2.10: an is_causal flag.
        if "window_size" in names:
            kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
        else:
            kwargs["is_causal"] = causal
        if q.shape[1] != k.shape[1]:
            if "enable_gqa" in names:
                kwargs["enable_gqa"] = True
            else:  # no GQA in this torch: repeat each KV head for its group of query heads
                group = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kwargs)
    if backend == "flash_attn_4":
        from flash_attn.cute import flash_attn_varlen_func
    elif backend == "flash_attn_3":
        from flash_attn_interface import flash_attn_varlen_func
    else:
        from flash_attn import flash_attn_varlen_func
    capped = {}
    if softcap:
        if "softcap" not in _parameters(flash_attn_varlen_func):
            raise ValueError(
                f"backend: {backend!r}: this release's flash_attn_varlen_func takes no softcap "
                "(the model soft-caps its attention scores); upgrade it or set model.attention "
                "to sdpa"
            )
        capped = {"softcap": softcap}
    out = flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_k=cu_seqlens,
        max_seqlen_q=max_seqlen,
        max_seqlen_k=max_seqlen,
        softmax_scale=scale,
        causal=causal,
        **capped,
    )
    return out[0] if isinstance(out, tuple) else out  # FA4 and some FA3 releases: (out, lse)


@functools.cache
def _parameters(fn) -> frozenset[str]:
    """``fn``'s parameter names, read once (not on every attention call)."""
    return frozenset(inspect.signature(fn).parameters)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    seqlens: list[int] | None = None,
    backend: str = "auto",
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention of each packed sequence over itself.

    Args:
        q: (T, Hq, Dh) queries of all sequences, end to end.
        k, v: (T, Hkv, Dh) keys and values; Hq a multiple of Hkv (GQA).
        cu_seqlens: (S + 1,) int32 on q's device: sequence boundaries, 0 first, T last.
        max_seqlen: the longest sequence (flash-attn needs it as a host int).
        causal: mask future tokens inside each sequence.
        softmax_scale: defaults to 1 / sqrt(Dh).
        seqlens: optional host list of the S lengths; the PyTorch path needs them on the host,
            and reading them from ``cu_seqlens`` otherwise costs one device sync on CUDA.
        backend: "auto" (``varlen_backend``'s choice) or one of BACKENDS (benchmarks, tests);
            an unavailable one raises.
        softcap: None or 0 (none), or c > 0: the scores become c tanh(scale q . k / c) before
            the softmax (Gemma 2's attn_logit_softcapping; a backend of SOFTCAP_BACKENDS).

    Returns:
        (T, Hq, Dh) attention output, q's dtype.
    """
    _check_inputs(q, k, v, cu_seqlens, seqlens, softcap)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    softcap = float(softcap) if softcap else None
    backend = resolve_backend(q, backend, softcap)
    if backend != "sdpa":
        args = (q, k, v, cu_seqlens, int(max_seqlen), causal, scale, softcap)
        return _flash_varlen(backend, *args)
    if seqlens is None:
        # Host copy of the lengths: free on the CPU; on CUDA one sync, avoided by passing seqlens.
        seqlens = torch.diff(cu_seqlens).tolist()
        bad = sum(seqlens) != q.shape[0] or any(n < 0 for n in seqlens)
        if bad or int(cu_seqlens[0]) != 0:
            raise ValueError(
                f"cu_seqlens: must rise from 0 to T={q.shape[0]}, got {cu_seqlens.tolist()}"
            )
    if softcap:
        return _capped_varlen(q, k, v, seqlens, causal, scale, softcap)
    return _sdpa_varlen(q, k, v, seqlens, causal, scale)
