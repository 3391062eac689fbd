"""Fused projections: q, k, v as one GEMM and gate, up as one GEMM, in a Hugging Face decoder
whose attention calls ``q_proj``, ``k_proj``, ``v_proj`` (and whose MLP ``gate_proj``,
``up_proj``) on one input in that order (Llama, CodeLlama, Mistral, Qwen2, DeepSeek-Coder).

The parameters stay the model's own, named and shaped as Hugging Face saves them, so loading,
saving, checkpoints, resume on another layout and the optimizer see ``q_proj.weight``, ...
unchanged. ``fuse_projections`` moves each group's weights (and biases) into one buffer, row
block after row block, so the fused GEMM reads them where they lie; the group's first
projection computes every output of the group and its siblings return their slices of it. If
something has moved the weights apart since (``Module.to``, an engine's flat buffers), the
call concatenates them instead: slower, the same result.

Not under ZeRO-3: there each projection's weights are gathered only by its own module's hooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def fuse_projections(model: nn.Module) -> int:
    """Fuse every q/k/v and gate/up group of plain ``nn.Linear`` layers (in place); returns
    how many groups were fused."""
    fused = 0
    for module in list(model.modules()):
        for names in GROUPS:
            linears = [getattr(module, name, None) for name in names]
            if _fusable(linears):
                _share_storage(linears)
                head, *members = linears
                head.__class__ = GroupHead
                head.rc_members = members  # a plain list: not registered, not in state_dict
                for member in members:
                    member.__class__ = GroupMember
                fused += 1
    return fused


def nothing_to_fuse(model: nn.Module) -> str | None:
    """Why ``model.fused_projections`` would fuse nothing in ``model``, in one line (None: it
    fuses a group, or has fused): GPT-2's, StarCoder-1's and CodeGen's attention computes q, k
    and v in one GEMM already (c_attn, qkv_proj), and their MLPs have no gate / up pair."""
    from reflectioncoder.decoder_layout import (
        gemm_in_width,
        gemm_width,
        is_gemm,
        layer_attention,
        require_layers,
    )

    modules = list(model.modules())
    if any(isinstance(m, GroupHead) for m in modules) or any(
        _fusable([getattr(m, name, None) for name in names]) for m in modules for names in GROUPS
    ):
        return None
    layer = require_layers(model)[0]
    attn = layer_attention(model, layer) or nn.Module()
    wide = [f"{type(attn).__name__}.{n}" for n, m in attn.named_children()
            if is_gemm(m) and gemm_width(m) > gemm_in_width(m)]  # fmt: skip
    already = (
        f"their attention computes q, k and v in one GEMM already ({', '.join(wide)})"
        if wide
        else "their attention has no q_proj, k_proj, v_proj of plain Linear layers"
    )
    return (
        f"model.fused_projections: {type(layer).__name__} layers have no q/k/v or gate/up "
        f"projections to fuse: {already}, and their MLP no gate_proj/up_proj pair; set "
        "model.fused_projections: false"
    )


def _fusable(linears: list[nn.Module | None]) -> bool:
    """Plain Linear layers (not LoRA, not quantised) over one input size, dtype and device,
    all with biases or none."""
    if not all(type(layer) is nn.Linear for layer in linears):
        return False
    first = linears[0]
    return all(
        layer.in_features == first.in_features
        and layer.weight.dtype == first.weight.dtype
        and layer.weight.device == first.weight.device
        and (layer.bias is None) == (first.bias is None)
        for layer in linears
    )


def _share_storage(linears: list[nn.Linear]) -> None:
    """Each group's weights (and biases) become row blocks of one buffer, in order; the
    parameters themselves (and their names) stay."""
    with torch.no_grad():
        for attr in ("weight", "bias"):
            params = [getattr(layer, attr) for layer in linears]
            if params[0] is None:
                continue
            whole = torch.cat([p.detach() for p in params])
            start = 0
            for p in params:
                p.data = whole[start : start + p.shape[0]]
                start += p.shape[0]


def joined(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors)`` without a copy when they lie one after another in one storage
    (``fuse_projections``' buffers), else the copy. Compiled (a traced graph sees no
    storages), the copy: inductor plans its memory."""
    if torch.compiler.is_compiling():
        return torch.cat(tensors)
    first = tensors[0]
    storage, offset = first.untyped_storage(), first.storage_offset()
    for t in tensors:
        same = t.untyped_storage().data_ptr() == storage.data_ptr()
        if not (same and t.is_contiguous() and t.storage_offset() == offset):
            return torch.cat(tensors)
        offset += t.numel()
    rows = sum(t.shape[0] for t in tensors)
    return first.new_empty(0).set_(storage, first.storage_offset(), (rows, *first.shape[1:]))


class _GroupLinear(torch.autograd.Function):
    """x (..., in) -> x @ [W_1; ...; W_n]^T (+ [b_1; ...; b_n]) (..., sum of outs): one GEMM
    forward; backward one GEMM for dx and one for the weights' gradients (split into each
    weight's rows). Under autocast it computes in the autocast dtype, casting x once."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int, *params: torch.Tensor) -> torch.Tensor:
        weights, biases = params[:n], params[n:]
        device = x.device.type
        dtype = weights[0].dtype
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        x_c = x.to(dtype)
        ctx.n, ctx.x_dtype, ctx.has_bias = n, x.dtype, bool(biases)
        ctx.save_for_backward(x_c, *weights)
        bias = joined(list(biases)).to(dtype) if biases else None
        with torch.autocast(device, enabled=False):
            return F.linear(x_c, joined(list(weights)).to(dtype), bias)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x_c, *weights = ctx.saved_tensors
        rows = [w.shape[0] for w in weights]
        dx = None
        if ctx.needs_input_grad[0]:
            dx = (dy @ joined(weights).to(dy.dtype)).to(ctx.x_dtype)
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x_c.reshape(-1, x_c.shape[-1])
        n, dtype = ctx.n, weights[0].dtype
        dw = [None] * n
        if any(ctx.needs_input_grad[2 : 2 + n]):  # frozen weights (LoRA) need none
            dw = (dy2.t() @ x2).to(dtype).split(rows)
        db = dy2.sum(0).to(dtype).split(rows) if ctx.has_bias else ()
        return dx, None, *dw, *db


class GroupHead(nn.Linear):
    """The group's first projection: computes the whole group and leaves each sibling its
    slice (with the input it belongs to)."""

    rc_members: list[GroupMember]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = [self, *self.rc_members]
        params = [layer.weight for layer in layers]
        if self.bias is not None:
            params += [layer.bias for layer in layers]
        out = _GroupLinear.apply(x, len(layers), *params)
        own, *rest = out.split([layer.out_features for layer in layers], dim=-1)
        for member, piece in zip(self.rc_members, rest, strict=True):
            member.rc_pending = (x, piece)
        return own


class GroupMember(nn.Linear):
    """A later projection of a group: its slice of the head's output, when called on the
    head's input; computed on its own otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pending = self.__dict__.pop("rc_pending", None)
        if pending is not None and pending[0] is x:
            return pending[1]
        return F.linear(x, self.weight, self.bias)
