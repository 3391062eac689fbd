"""``varlen_attention`` as a ``torch.library`` custom op, so that ``torch.compile`` traces a
decoder layer around it without a graph break: ``torch.ops.reflectioncoder.varlen_attention``.

    out = varlen_attention_op(q, k, v, cu_seqlens, max_seqlen, causal, scale, backend)
    # q (T, Hq, Dh), k / v (T, Hkv, Dh), cu_seqlens (S + 1,) int32 -> (T, Hq, Dh)
    # backend: "auto" or one of varlen_attention.BACKENDS (model.attention)

The compiler sees an opaque op of known output shape (q's): the segment lengths never become
guards, so micro-batches of other lengths reuse the compiled layer (with ``dynamic=True``,
``T`` and ``max_seqlen`` are symbolic). The backward is a second op that runs the forward
again under autograd and differentiates it (the eager ``varlen_attention``'s own backward:
flash-attn's or SDPA's), an attention forward more than the eager path per layer.
"""

from __future__ import annotations

import torch

from .varlen_attention import varlen_attention


@torch.library.custom_op("reflectioncoder::varlen_attention", mutates_args=())
def varlen_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool,
    scale: float,
    backend: str = "auto",
) -> torch.Tensor:
    """(T, Hq, Dh) attention of each packed sequence over itself (``varlen_attention``)."""
    return varlen_attention(
        q, k, v, cu_seqlens, max_seqlen, causal=causal, softmax_scale=scale, backend=backend
    )


@varlen_attention_op.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, causal, scale, backend="auto"):
    return torch.empty_like(q)


def _autograd_key_bits() -> int:
    """The dispatch keys a custom op's kernel runs with autograd excluded by (their raw bits)."""
    outside = torch._C._dispatch_tls_local_exclude_set().raw_repr()
    with torch._C._AutoDispatchBelowAutograd():
        inside = torch._C._dispatch_tls_local_exclude_set().raw_repr()
    return inside & ~outside


_AUTOGRAD_BITS = _autograd_key_bits()


def _with_autograd() -> torch._C._ForceDispatchKeyGuard:
    """Autograd back on inside a custom op's kernel (which runs below it), for the recompute."""
    exclude = torch._C._dispatch_tls_local_exclude_set().raw_repr() & ~_AUTOGRAD_BITS
    return torch._C._ForceDispatchKeyGuard(
        torch._C._dispatch_tls_local_include_set(),
        torch._C.DispatchKeySet.from_raw_repr(exclude),
    )


@torch.library.custom_op("reflectioncoder::varlen_attention_backward", mutates_args=())
def varlen_attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) for an upstream ``grad`` (T, Hq, Dh): the forward again, differentiated."""
    with _with_autograd(), torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = varlen_attention(
            *leaves, cu_seqlens, max_seqlen, causal=causal, softmax_scale=scale, backend=backend
        )
        dq, dk, dv = torch.autograd.grad(out, leaves, grad)
    return dq, dk, dv


@varlen_attention_backward.register_fake
def _(grad, q, k, v, cu_seqlens, max_seqlen, causal, scale, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cu_seqlens, max_seqlen, causal, scale, backend = inputs
    ctx.save_for_backward(q, k, v, cu_seqlens)
    ctx.args = (max_seqlen, causal, scale, backend)


def _backward(ctx, grad):
    q, k, v, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = varlen_attention_backward(grad, q, k, v, cu_seqlens, *ctx.args)
    return dq, dk, dv, None, None, None, None, None


varlen_attention_op.register_autograd(_backward, setup_context=_setup_context)
