"""Packed attention through transformers' ``AttentionInterface``: the decoder layers' attention
call, registered as ``ATTN_IMPLEMENTATION``, runs ``kernels.varlen_attention`` over the packed
segments that ``cu_seq_lens_q`` gives (``model.forward_hidden`` passes them explicitly: never
inferred from position ids, which have gaps in the student segments); what the kernels would
not compute as the model does is refused."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface

from reflectioncoder.kernels.varlen_attention import varlen_attention

ATTN_IMPLEMENTATION = "reflectioncoder_varlen"


# Attention arguments some models pass that our kernels do not apply: GPT-OSS's attention sinks.
# (Gemma 2's ``softcap`` on the scores is applied: ``varlen_attention(softcap=)``.)
_UNSUPPORTED_ATTENTION_KWARGS = ("s_aux", "sinks")


def _varlen_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    rc_seqlens: list[int] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query (1, Hq, T, Dh), key/value (1, Hkv, T, Dh)
    -> ((1, T, Hq, Dh), None). The packing comes from ``cu_seq_lens_q`` only."""
    if cu_seq_lens_q is None or max_length_q is None:
        raise ValueError(
            f"{ATTN_IMPLEMENTATION}: cu_seq_lens_q and max_length_q are required (packed "
            "batches only); call reflectioncoder.model.forward_hidden"
        )
    if cu_seq_lens_k is not None and cu_seq_lens_k is not cu_seq_lens_q:
        raise ValueError(f"{ATTN_IMPLEMENTATION}: cu_seq_lens_k must be cu_seq_lens_q")
    if query.shape[0] != 1:
        raise ValueError(f"{ATTN_IMPLEMENTATION}: packed batch must be (1, T), got {query.shape}")
    if dropout > 0.0:
        raise ValueError(f"{ATTN_IMPLEMENTATION}: attention dropout {dropout} is not supported")
    if attention_mask is not None:  # packing replaces padding masks; a custom mask would be lost
        raise ValueError(f"{ATTN_IMPLEMENTATION}: attention_mask must be None (packed batches)")
    window = kwargs.get("sliding_window")
    if window is not None and max_length_q > window:  # shorter sequences: the window never binds
        raise ValueError(
            f"{ATTN_IMPLEMENTATION}: sliding-window attention is not supported (window {window}, "
            f"a sequence of {max_length_q} tokens)"
        )
    for name in _UNSUPPORTED_ATTENTION_KWARGS:  # each changes the softmax: dropping it is wrong
        if kwargs.get(name) is not None:
            raise ValueError(f"{ATTN_IMPLEMENTATION}: attention with {name!r} is not supported")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    q, k, v, v_dim = _one_head_size(q, k, v)
    backend = getattr(module, "rc_attention", "auto")  # model.attention (prepare_model)
    softcap = float(kwargs.get("softcap") or 0.0)  # Gemma 2's attn_logit_softcapping
    if getattr(module, "rc_custom_op", False):  # inside a compiled layer: one opaque op
        from reflectioncoder.kernels.varlen_attention_op import varlen_attention_op

        args = (cu_seq_lens_q, max_length_q, True, scale, backend, softcap)
        out = varlen_attention_op(q, k, v, *args)
    else:
        out = varlen_attention(
            q, k, v, cu_seq_lens_q, max_length_q, causal=True, softmax_scale=scale,
            seqlens=rc_seqlens, backend=backend, softcap=softcap,
        )  # fmt: skip
    return out[..., :v_dim].unsqueeze(0), None


def _one_head_size(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """(q, k, v, v's head size) with one head size for all three, as the kernels take: multi-head
    latent attention (DeepSeek-V2/V3) has values of another head size than queries and keys.
    Zero columns change nothing: in q and k they add 0 to every score (the scale is fixed
    before), in v they give output columns of 0, cut off after."""
    v_dim = v.shape[-1]
    size = max(k.shape[-1], v_dim)
    if k.shape[-1] < size:
        q, k = (torch.nn.functional.pad(t, (0, size - t.shape[-1])) for t in (q, k))
    if v_dim < size:
        v = torch.nn.functional.pad(v, (0, size - v_dim))
    return q, k, v, v_dim


# The packing arguments forward_hidden gives the decoder stack, which the attention needs.
PACKING_ARGUMENTS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "rc_seqlens")

# Decoder layers that call their attention without the arguments they were given.
DROPS_ATTENTION_ARGUMENTS = ("NemotronDecoderLayer",)


def hand_packing_to_attention(model: nn.Module) -> None:
    """Give each layer of ``DROPS_ATTENTION_ARGUMENTS`` (transformers' Nemotron) hooks that
    carry the packing arguments the layer receives to its ``self_attn``, which it calls without
    them: a hook on the layer keeps them, one on the attention adds them to its call. The
    checkpointed recompute runs the layer again, hooks and all, with the same arguments."""
    from reflectioncoder.decoder_layout import layer_attention, require_layers

    for layer in require_layers(model):
        if type(layer).__name__ not in DROPS_ATTENTION_ARGUMENTS or hasattr(layer, "rc_handing"):
            continue
        attn = layer_attention(model, layer)

        def keep(module, args, kwargs, attn=attn):
            attn.rc_packing = {k: kwargs[k] for k in PACKING_ARGUMENTS if k in kwargs}

        def give(module, args, kwargs):
            return args, {**getattr(module, "rc_packing", {}), **kwargs}

        layer.rc_handing = (
            layer.register_forward_pre_hook(keep, with_kwargs=True),
            attn.register_forward_pre_hook(give, with_kwargs=True),
        )


AttentionInterface.register(ATTN_IMPLEMENTATION, _varlen_attention_forward)
