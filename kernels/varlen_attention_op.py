"""``varlen_attention`` as a ``torch.library`` custom op, so that ``torch.compile`` traces a
decoder layer around it without a graph break: ``torch.ops.reflectioncoder.varlen_attention``.

    out = varlen_attention_op(q, k, v, cu_seqlens, max_seqlen, causal, scale, backend, softcap)
    # q (T, Hq, Dh), k / v (T, Hkv, Dh), cu_seqlens (S + 1,) int32 -> (T, Hq, Dh)
    # backend: "auto" or one of varlen_attention.BACKENDS (model.attention)
    # softcap: 0.0 (none) or the scores' soft cap c (Gemma 2: c tanh(s / c))

The compiler sees an opaque op of known output shapes: the segment lengths never become
guards, so micro-batches of other lengths reuse the compiled layer (with ``dynamic=True``,
``T`` and ``max_seqlen`` are symbolic). The op returns ``(out, lse, rng_state)``; its
backward, a second op, hands them to the backend's own backward kernel, so a compiled layer
runs one attention forward and one attention backward per micro-batch, as the eager path does:

- ``torch_varlen``: ``torch.ops.torch_attn._varlen_attn`` -> ``(out, lse (Hq, T) fp32,
  rng_state (2,) uint64)``, then ``torch_attn._varlen_attn_backward`` (the two ops torch's own
  ``varlen_attn`` autograd uses, torch >= 2.11's schemas, with ``window_size``). GQA: torch
  2.13's ``enable_gqa`` hands the KV heads as they are (the kernel sums dk / dv over each
  group); torch 2.11's op has no such flag, so the op repeats each KV head for its group of
  query heads (as the eager path does there) and sums dk / dv over the group itself.
- ``flash_attn_4``: ``flash_attn.cute.interface._flash_attn_fwd(..., return_lse=True)`` ->
  ``(out, lse (Hq, T))``, then ``_flash_attn_bwd`` (flash-attn-4 4.0.0b40's signatures).
- ``flash_attn`` (flash-attn >= 2.7): ``_wrapped_flash_attn_varlen_forward`` -> ``(out, lse
  (Hq, T), rng_state (2,) int64)``, then ``_wrapped_flash_attn_varlen_backward``; head sizes
  that are multiples of 8 (flash-attn pads the others, and its padded output is not ours).

The rest rerun: the backward runs the forward again under autograd and differentiates it
(``lse`` and ``rng_state`` are then empty), one attention forward more per layer:
``sdpa`` (per-segment SDPA has no log-sum-exp API worth it; the CPU path), ``flash_attn_3``
(FA3's ``_flash_attn_forward`` / ``_flash_attn_backward`` changed signature between commits
and no release pins one), and any installed version whose internals lack the arguments
above (``kernel_backward`` checks their names), and every soft-capped call (``softcap`` > 0:
the rerun hands the cap to the backend's forward, ``varlen_attention``). The backend is
resolved inside both the op and its fake from q's device, dtype and head size
(``resolve_backend``), never in traced code.
"""

from __future__ import annotations

import functools
import importlib

import torch

from .flop_formulas import register_attention_formulas
from .varlen_attention import _parameters, resolve_backend, varlen_attention

# The arguments each backend's internals must take for the kernel backward (else: rerun).
_TORCH_FORWARD_ARGS = {"cu_seq_q", "max_q", "is_causal", "scale", "window_size"}
_TORCH_BACKWARD_ARGS = {"out", "lse", "rng_state", "scale", "window_size"}
_FA4_FORWARD_ARGS = {"cu_seqlens_q", "max_seqlen_q", "softmax_scale", "causal", "return_lse"}
_FA4_BACKWARD_ARGS = {"cu_seqlens_q", "max_seqlen_q", "softmax_scale", "causal"}
_FA2_BACKWARD_ARGS = {"window_size_left", "window_size_right", "softcap", "rng_state"}


@functools.cache
def _schema_names(op) -> frozenset[str]:
    return frozenset(arg.name for arg in op.default._schema.arguments)


def _takes(fn, names: set[str]) -> bool:
    """``fn`` (a function, or a ``torch.library.custom_op``) exists and takes every one of
    ``names`` (a version without it reruns; it must not fail the call)."""
    return fn is not None and names <= _parameters(getattr(fn, "_init_fn", fn))


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def kernel_backward(backend: str, head_dim: int) -> bool:
    """Whether the op saves ``backend``'s log-sum-exp and calls its own backward (else the
    backward reruns the forward); ``backend`` is resolved (not "auto")."""
    if backend == "torch_varlen":
        _module("torch.nn.attention.varlen")  # registers torch_attn's ops
        ops = torch.ops.torch_attn
        if not (hasattr(ops, "_varlen_attn") and hasattr(ops, "_varlen_attn_backward")):
            return False
        return _TORCH_FORWARD_ARGS <= _schema_names(ops._varlen_attn) and (
            _TORCH_BACKWARD_ARGS <= _schema_names(ops._varlen_attn_backward)
        )
    if backend == "flash_attn_4":
        fa4 = _module("flash_attn.cute.interface")
        return (
            fa4 is not None
            and _takes(getattr(fa4, "_flash_attn_fwd", None), _FA4_FORWARD_ARGS)
            and _takes(getattr(fa4, "_flash_attn_bwd", None), _FA4_BACKWARD_ARGS)
        )
    if backend == "flash_attn":
        fa2 = _module("flash_attn.flash_attn_interface")
        names = ("_wrapped_flash_attn_varlen_forward", "_wrapped_flash_attn_varlen_backward")
        return (
            head_dim % 8 == 0
            and fa2 is not None
            and all(hasattr(fa2, name) for name in names)
            and _takes(getattr(fa2, "_flash_attn_varlen_backward", None), _FA2_BACKWARD_ARGS)
        )
    return False  # sdpa, flash_attn_3: the backward reruns the forward


def _window(causal: bool) -> list[int]:
    return [-1, 0] if causal else [-1, -1]


def _torch_takes_gqa() -> bool:
    """Whether torch's ``_varlen_attn`` takes ``enable_gqa`` (2.13: yes; 2.11: no)."""
    return "enable_gqa" in _schema_names(torch.ops.torch_attn._varlen_attn)


def _torch_kv_groups(q, k) -> int:
    """How many times the torch op repeats each KV head: its GQA group size where torch has
    no ``enable_gqa`` (2.11), else 1 (no GQA, or the kernel takes the heads as they are)."""
    group = q.shape[1] // k.shape[1]
    return 1 if group == 1 or _torch_takes_gqa() else group


def _repeated(kv: torch.Tensor, group: int) -> torch.Tensor:
    return kv if group == 1 else kv.repeat_interleave(group, 1)


def _torch_forward(q, k, v, cu_seqlens, max_seqlen, causal, scale):
    group = _torch_kv_groups(q, k)
    k, v = _repeated(k, group), _repeated(v, group)
    gqa = [q.shape[1] != k.shape[1]] if _torch_takes_gqa() else []
    return torch.ops.torch_attn._varlen_attn(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal, scale,
        _window(causal), *gqa,
    )  # fmt: skip


def _torch_backward(grad, q, k, v, out, lse, rng_state, cu_seqlens, max_seqlen, causal, scale):
    group = _torch_kv_groups(q, k)
    dq, dk, dv = torch.ops.torch_attn._varlen_attn_backward(
        grad, q, _repeated(k, group), _repeated(v, group), out, lse, cu_seqlens, cu_seqlens,
        max_seqlen, max_seqlen, causal, rng_state, scale, _window(causal),
    )  # fmt: skip
    if group == 1:
        return dq, dk, dv
    # a repeated head's gradient is the sum over its copies (each group's heads stand together)
    return dq, *(d.unflatten(1, (k.shape[1], group)).sum(2) for d in (dk, dv))


def _forward_with_stats(backend, q, k, v, cu_seqlens, max_seqlen, causal, scale):
    """(out, lse, rng_state) from ``backend``'s own forward."""
    if backend == "torch_varlen":
        return _torch_forward(q, k, v, cu_seqlens, max_seqlen, causal, scale)
    if backend == "flash_attn_4":
        from flash_attn.cute.interface import _flash_attn_fwd

        out, lse = _flash_attn_fwd(
            q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen,
            max_seqlen_k=max_seqlen, softmax_scale=scale, causal=causal, return_lse=True,
        )[:2]  # fmt: skip
        return out, lse, _no_rng_state(q)
    from flash_attn.flash_attn_interface import _wrapped_flash_attn_varlen_forward

    out, lse, _, rng_state = _wrapped_flash_attn_varlen_forward(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, 0.0, scale, causal,
        window_size_left=-1, window_size_right=-1,
    )  # fmt: skip
    return out, lse, rng_state


def _kernel_backward(backend, grad, q, k, v, out, lse, rng_state, cu_seqlens, max_seqlen,
                     causal, scale):  # fmt: skip
    """(dq, dk, dv) from ``backend``'s own backward, with the forward's out, lse, rng_state."""
    grad = grad.contiguous()
    if backend == "torch_varlen":
        return _torch_backward(
            grad, q, k, v, out, lse, rng_state, cu_seqlens, max_seqlen, causal, scale
        )
    if backend == "flash_attn_4":
        from flash_attn.cute.interface import _flash_attn_bwd

        dq, dk, dv = _flash_attn_bwd(
            q, k, v, out, grad, lse, softmax_scale=scale, causal=causal,
            cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen,
            max_seqlen_k=max_seqlen,
        )[:3]  # fmt: skip
        return dq, dk, dv
    from flash_attn.flash_attn_interface import _wrapped_flash_attn_varlen_backward

    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _wrapped_flash_attn_varlen_backward(
        grad, q, k, v, out, lse, dq, dk, dv, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
        0.0, scale, causal, -1, -1, 0.0, None, False, rng_state,
    )  # fmt: skip
    return dq, dk, dv


def _no_lse(q: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.float32, device=q.device)


def _no_rng_state(q: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64, device=q.device)


# rng_state (numel, dtype) per backend of the kernel backward (dropout is 0: never read).
_RNG_STATE = {"torch_varlen": (2, torch.uint64), "flash_attn": (2, torch.int64)}


@torch.library.custom_op("reflectioncoder::varlen_attention", mutates_args=())
def varlen_attention_with_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool,
    scale: float,
    backend: str = "auto",
    softcap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out (T, Hq, Dh), lse (Hq, T) fp32, rng_state) of each packed sequence's attention over
    itself; ``lse`` and ``rng_state`` empty where the backward reruns (``kernel_backward``, or
    scores soft-capped at ``softcap`` > 0)."""
    resolved = resolve_backend(q, backend, softcap)
    if not softcap and kernel_backward(resolved, q.shape[-1]):
        return _forward_with_stats(resolved, q, k, v, cu_seqlens, max_seqlen, causal, scale)
    out = varlen_attention(
        q, k, v, cu_seqlens, max_seqlen, causal=causal, softmax_scale=scale, backend=resolved,
        softcap=softcap,
    )  # fmt: skip
    return out, _no_lse(q), _no_rng_state(q)


@varlen_attention_with_stats.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, causal, scale, backend="auto", softcap=0.0):
    resolved = resolve_backend(q, backend, softcap)
    # FA4 allocates its output contiguous; torch's and flash-attn 2's take q's strides.
    out = q.new_empty(q.shape) if resolved == "flash_attn_4" else torch.empty_like(q)
    if softcap or not kernel_backward(resolved, q.shape[-1]):
        return out, _no_lse(q), _no_rng_state(q)
    lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    numel, dtype = _RNG_STATE.get(resolved, (0, torch.int64))
    return out, lse, q.new_empty(numel, dtype=dtype)


def varlen_attention_op(*args, **kwargs) -> torch.Tensor:
    """(T, Hq, Dh) attention of each packed sequence over itself (``varlen_attention``): the
    output of ``varlen_attention_with_stats``, called with the same arguments."""
    return varlen_attention_with_stats(*args, **kwargs)[0]


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


def _rerun_backward(grad, q, k, v, cu_seqlens, max_seqlen, causal, scale, backend, softcap):
    """(dq, dk, dv): the forward again under autograd, differentiated."""
    with _with_autograd(), torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = varlen_attention(
            *leaves, cu_seqlens, max_seqlen, causal=causal, softmax_scale=scale,
            backend=backend, softcap=softcap,
        )  # fmt: skip
        dq, dk, dv = torch.autograd.grad(out, leaves, grad)
    return dq, dk, dv


@torch.library.custom_op("reflectioncoder::varlen_attention_backward", mutates_args=())
def varlen_attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    rng_state: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool,
    scale: float,
    backend: str,
    softcap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) for an upstream ``grad`` (T, Hq, Dh): the backend's own backward from the
    forward's ``out``, ``lse`` and ``rng_state``, or the forward again, differentiated."""
    resolved = resolve_backend(q, backend, softcap)
    if not softcap and kernel_backward(resolved, q.shape[-1]):
        return _kernel_backward(
            resolved, grad, q, k, v, out, lse, rng_state, cu_seqlens, max_seqlen, causal, scale
        )
    args = (cu_seqlens, max_seqlen, causal, scale, resolved, softcap)
    return _rerun_backward(grad, q, k, v, *args)


@varlen_attention_backward.register_fake
def _(grad, q, k, v, out, lse, rng_state, cu_seqlens, max_seqlen, causal, scale, backend,
      softcap=0.0):  # fmt: skip
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cu_seqlens, max_seqlen, causal, scale, backend, softcap = inputs
    out, lse, rng_state = output
    ctx.save_for_backward(q, k, v, out, lse, rng_state, cu_seqlens)
    ctx.args = (max_seqlen, causal, scale, backend, softcap)


def _backward(ctx, grad, grad_lse, grad_rng_state):
    # lse and rng_state are statistics for the backward, never used downstream: no gradient.
    dq, dk, dv = varlen_attention_backward(grad, *ctx.saved_tensors, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


varlen_attention_with_stats.register_autograd(_backward, setup_context=_setup_context)
register_attention_formulas()  # torch's FLOP counter sees both ops
