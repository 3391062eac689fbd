"""The one FLOP count of a packed training step (the trainer's MFU / HFU, every bench, the docs).

A micro-batch of S packed segments of lengths L_1..L_S (T tokens) with R loss rows, on a
decoder of ``layers`` layers of ``heads`` query heads, whose scores QK^T are ``qk_dim`` wide a
head and whose values ``v_dim`` (both ``head_dim`` but for multi-head latent attention:
DeepSeek-V2/V3's qk_nope_head_dim + qk_rope_head_dim and v_head_dim), costs, forward +
backward (each multiply-add 2 FLOPs, backward twice the forward):

    model FLOPs    = 6 x body_params x T              (every parameter of the decoder
                                                        stack outside its embeddings (of
                                                        tokens, of learned positions); of a
                                                        mixture of experts' routed experts,
                                                        the share a token runs through:
                                                        top-k / experts)
                   + 6 x V x D x R                     (the LM head, on the loss rows only)
                   + 6 x layers x heads x (qk_dim + v_dim) x sum_i L_i^2   (QK^T and PV,
                                                        per segment; equal widths:
                                                        12 x layers x heads x head_dim x ...)
    hardware FLOPs = model FLOPs, plus with activation checkpointing one more forward of the
                   decoder layers but their last GEMM: 2 x recomputed_params x T
                   + 2 x layers x heads x (qk_dim + v_dim) x sum L^2, times the share of layers
                   recomputed (``recomputed_share``'s ``layers``: full 1, alternate 0.5,
                   save_gemms 0, whose reruns are element-wise), plus the MLP's gate and up
                   GEMMs again, 2 x mlp_in_params x T times the share of ``mlp_rerun`` layers
                   (``recomputed_share``'s ``mlp``)
                   + on logging steps that split the CE (``logging.split_ce``), the teacher-CE
                   pass: 2 x V x D x (the teacher's CE rows), a forward of the head alone

Attention is counted as torchtitan and PaLM count it (the whole L x L square, not halved for
the causal mask), so our MFU compares with the published anchors; a causal kernel executes
about half of that term. The embedding lookup, norms, RoPE and activations count no FLOPs
(norm weights are in ``body_params`` but are < 0.1% of it at 7B). MFU = model FLOPs over
(seconds x devices x peak); HFU = hardware FLOPs over the same. torch's non-reentrant checkpoint
stops recomputing a layer once every tensor its backward saved is back (early stop), so the
layer's last GEMM (the MLP's down projection, whose output only feeds the residual add) is not
run again: ``recomputed_params`` leaves it out. Of a mixture of experts, the layer's last GEMM
is its shared experts' down projection where they are added after the routed experts
(DeepSeek-V2/V3); the routed experts' down projections do run again (the router's weight
multiplies their outputs, whose backward reads them), at their top-k share as everywhere, and so
does every GEMM of an ``mlp_rerun`` layer's MLP but its last (``_last_gemm``; counted by hand
and by torch's FLOP counter in tests/test_moe_flops.py). Multi-head latent attention's low-rank
projections (q_a / q_b, kv_a / kv_b) are in ``body_params`` as the modules they are.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from reflectioncoder.decoder_layout import (
    decoder_stack,
    gemm_width,
    layer_attention,
    mlp_gemms,
    mlp_modules,
    require_layers,
)


@dataclass(frozen=True)
class ExpertShape:
    """What the memory plan needs of a mixture of experts' MoE layers (the first one's)."""

    layers: int  # decoder layers with routed experts (the others: a dense MLP of intermediate)
    experts: int  # E, routed experts
    top_k: int  # the experts each token runs through
    width: int  # a routed expert's MLP width
    shared_width: int = 0  # the shared experts' MLP width together (0: none)
    shared_gated: bool = False  # a gate multiplies the shared experts' output (Qwen2-MoE)


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a decoder-only model."""

    layers: int
    hidden: int  # D
    attn_width: int  # query heads x head size
    vocab: int  # V, rows of the LM head
    body_params: int  # the decoder stack's parameters outside its embeddings
    recomputed_params: int  # decoder-layer parameters checkpointing runs again (no last GEMM)
    mlp_in_params: int  # the MLPs' parameters but the last GEMM's (mlp_rerun's: gate and up)
    heads: int  # query heads
    kv_heads: int  # key / value heads (grouped-query attention: fewer than ``heads``)
    intermediate: int  # I, the MLP's width
    qk_width: int = 0  # query heads x a query / key head's size where not attn_width's (MLA)
    v_width: int = 0  # query heads x a value head's size where not attn_width's (MLA)
    q_lora: int = 0  # MLA: the queries' low-rank width (q_lora_rank; 0: one q_proj)
    kv_lora: int = 0  # MLA: the keys' and values' low-rank width (kv_lora_rank)
    rope_dim: int = 0  # MLA: a query / key head's rotary part (qk_rope_head_dim), one key's
    experts: ExpertShape | None = None  # a mixture of experts' MoE layers (memory plan)
    mlp_inputs: int = 2  # the MLP's GEMMs before its last: gate and up, or GPT-2's c_fc alone
    act_extra: float = 0.0  # what the MLP's activation saves for itself, per I (gelu_new: 3)

    @property
    def score_width(self) -> int:
        """Query heads x the head size QK^T runs over (MLA: qk_nope + qk_rope)."""
        return self.qk_width or self.attn_width

    @property
    def value_width(self) -> int:
        """Query heads x the head size PV runs over (MLA: v_head_dim)."""
        return self.v_width or self.attn_width

    @property
    def kv_width(self) -> int:
        """D_kv: key / value heads x head size."""
        return self.attn_width // self.heads * self.kv_heads

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelShape:
        """The shape of a Hugging Face causal LM (ZeRO-3 partitions counted whole)."""
        config = model.config.get_text_config()
        heads = config.num_attention_heads
        head_dim = _per_layer(config, "head_dim") or config.hidden_size // heads
        head = model.get_output_embeddings().weight
        stack = decoder_stack(model)  # not an image-text model's vision tower: text runs alone
        outside = {id(p) for m in stack.modules() if isinstance(m, nn.Embedding)
                   for p in m.parameters()}  # fmt: skip
        unique = {id(p): p for p in stack.parameters()}
        layers = require_layers(model)
        routed = {id(p) for layer in layers for p in _routed_experts(layer).parameters()}
        share = _active_expert_share(config)

        def active(params: dict) -> int:  # a routed expert's weights work on its tokens only
            return sum(
                round(_numel(p) * share) if i in routed else _numel(p) for i, p in params.items()
            )

        body = active({i: p for i, p in unique.items() if i not in outside})
        recomputed = {id(p): p for p in layers.parameters()}
        mlp_in = {id(p): p for layer in layers for p in _mlp(layer).parameters()}
        kv_heads = _kv_heads(model, layers[0], config, heads)
        for layer in layers:
            for p in _last_gemm(layer).parameters():
                recomputed.pop(id(p))
                mlp_in.pop(id(p))
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            attn_width=heads * head_dim,
            vocab=int(getattr(head, "ds_shape", head.shape)[0]),
            body_params=body,
            recomputed_params=active(recomputed),
            mlp_in_params=active(mlp_in),
            heads=heads,
            kv_heads=kv_heads,
            intermediate=_mlp_width(config, layers[0]),
            qk_width=heads * _latent_qk_head_dim(config),
            v_width=heads * (getattr(config, "v_head_dim", None) or 0),
            **_latent_ranks(config),
            experts=_expert_shape(layers, config),
            mlp_inputs=_mlp_inputs(active(mlp_in), layers, config),
            act_extra=_activation_extra(layers[0]),
        )

    @classmethod
    def llama(
        cls,
        hidden: int,
        intermediate: int,
        layers: int,
        heads: int,
        kv_heads: int,
        vocab: int,
        head_dim: int | None = None,
    ) -> ModelShape:
        """A Llama-architecture shape from its sizes (no model built): q/k/v/o, SwiGLU, two
        RMSNorms per layer and a final one."""
        head_dim = head_dim or hidden // heads
        attn = hidden * head_dim * (2 * heads + 2 * kv_heads)
        per_layer = attn + 3 * hidden * intermediate + 2 * hidden
        return cls(
            layers=layers,
            hidden=hidden,
            attn_width=heads * head_dim,
            vocab=vocab,
            body_params=layers * per_layer + hidden,
            recomputed_params=layers * (per_layer - hidden * intermediate),
            mlp_in_params=layers * 2 * hidden * intermediate,
            heads=heads,
            kv_heads=kv_heads,
            intermediate=intermediate,
        )


@dataclass(frozen=True)
class StepFlops:
    """Model FLOPs (useful work: MFU) and hardware FLOPs (executed: HFU) of some micro-batches."""

    model: float = 0.0
    hardware: float = 0.0

    def __add__(self, other: StepFlops) -> StepFlops:
        return StepFlops(self.model + other.model, self.hardware + other.hardware)


@dataclass(frozen=True)
class Recompute:
    """The shares of decoder layers whose GEMMs checkpointing runs again: ``layers`` whole but
    their last GEMM (``full``), ``mlp`` their MLP's gate and up GEMMs alone (``mlp_rerun``)."""

    layers: float = 0.0
    mlp: float = 0.0


def recomputed_share(plan: Sequence[str]) -> Recompute:
    """``Recompute`` from the per-layer plan (``model.rc_checkpointing_plan``): ``full``
    layers count to ``layers``, ``mlp_rerun`` ones to ``mlp``; ``save_gemms`` and ``offload``
    to neither (only element-wise ops rerun, which count no FLOPs here), ``none`` neither."""
    if not plan:
        return Recompute()
    return Recompute(plan.count("full") / len(plan), plan.count("mlp_rerun") / len(plan))


def packed_flops(
    shape: ModelShape, seq_lens: Sequence[int], loss_rows: int, recompute: float | Recompute
) -> StepFlops:
    """Forward + backward FLOPs of one packed micro-batch (module docstring).

    ``seq_lens``: the segments' lengths; ``loss_rows``: rows the LM head runs on;
    ``recompute``: what checkpointing runs forward again (``Recompute``), or the share of
    decoder layers it runs whole (True: all).
    """
    if not isinstance(recompute, Recompute):
        recompute = Recompute(float(recompute))
    tokens = sum(seq_lens)
    # QK^T and PV of every segment, a forward's multiply-adds: 2 FLOPs each, 6 with backward
    square = shape.layers * (shape.score_width + shape.value_width) * sum(n * n for n in seq_lens)
    model = 6.0 * shape.body_params * tokens + 6.0 * shape.vocab * shape.hidden * loss_rows
    model += 6.0 * square
    extra = recompute.layers * (2.0 * shape.recomputed_params * tokens + 2.0 * square)
    extra += recompute.mlp * 2.0 * shape.mlp_in_params * tokens
    return StepFlops(model, model + extra)


def batch_flops(
    shape: ModelShape, batch, recompute: float | Recompute, split: bool = False
) -> StepFlops:
    """``packed_flops`` of a ``PackedBatch`` (host figures only: no device sync). A zero-weight
    filler batch (a rank's empty slot) is executed but does no useful work: hardware only.
    ``split``: a logging step's teacher-CE pass runs too (executed, not useful: hardware only)."""
    flops = packed_flops(shape, batch.seq_lens, batch.loss_rows.shape[0], recompute)
    if split:
        flops += StepFlops(0.0, 2.0 * shape.vocab * shape.hidden * batch.teacher_ce_rows.shape[0])
    return flops if batch.num_samples > 0 else StepFlops(0.0, flops.hardware)


def utilisation(flops: StepFlops, seconds: float, devices: int, peak_flops: float) -> dict:
    """{"mfu", "hfu"}: the step's FLOPs over ``seconds`` x ``devices`` x the peak FLOP/s."""
    capacity = seconds * devices * peak_flops
    return {"mfu": flops.model / capacity, "hfu": flops.hardware / capacity}


def _mlp(layer: nn.Module) -> nn.Module:
    """The layer's MLP as one module (OPT's fc1 and fc2 in a list: ``decoder_layout``)."""
    parts = mlp_modules(layer)
    return parts[0] if len(parts) == 1 else nn.ModuleList(parts)


def _last_gemm(layer: nn.Module) -> nn.Module:
    """The module of a decoder layer's last GEMM, which torch's checkpoint does not run again
    (early stop: its output only feeds adds, read by no backward), or an empty module: a dense
    MLP's down_proj; the shared experts' down_proj of a mixture of experts that adds them after
    its routed experts (DeepSeek-V2/V3, GLM-4-MoE, ...). A routed expert's down projection runs
    again: the router's weight multiplies its output, and that product's backward reads it; so
    does Qwen2-MoE's shared expert's (a sigmoid gate multiplies it), and shared experts that run
    before the routed ones (ERNIE 4.5). tests/test_moe_flops.py counts each by hand."""
    mlp = _mlp(layer)
    down = getattr(mlp, "down_proj", None)
    if isinstance(down, nn.Module):
        return down
    if not any(True for _ in _routed_experts(layer).parameters()):  # a dense MLP: its last GEMM
        gemms = mlp_gemms(layer)  # GPT-2's c_proj, GPT-J's fc_out, OPT's fc2
        return gemms[-1] if gemms else nn.Module()
    shared = getattr(getattr(mlp, "shared_experts", None), "down_proj", None)
    if isinstance(shared, nn.Module) and _adds_shared_experts_last(type(mlp)):
        return shared
    return nn.Module()


@functools.cache
def _adds_shared_experts_last(block: type) -> bool:
    """Whether a mixture-of-experts block's forward calls its shared experts after its routed
    ones (read from its source: transformers' blocks say ``self.experts(...)`` then
    ``self.shared_experts(...)``, then add; a source not to be had: False, counted rerun)."""
    try:
        source = inspect.getsource(block.forward)
    except (OSError, TypeError):
        return False
    routed, shared = source.find("self.experts("), source.find("self.shared_experts(")
    return 0 <= routed < shared


def _routed_experts(layer: nn.Module) -> nn.Module:
    """A mixture-of-experts layer's routed experts (Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3:
    ``mlp.experts``; shared experts and the router see every token), or an empty module."""
    experts = getattr(_mlp(layer), "experts", None)
    return experts if isinstance(experts, nn.Module) else nn.Module()


def _active_expert_share(config) -> float:
    """The share of the routed experts' weights one token runs through: top-k over the experts."""
    top_k = getattr(config, "num_experts_per_tok", None)
    for field in ("n_routed_experts", "num_local_experts", "num_experts"):
        experts = getattr(config, field, None)
        if top_k and experts:
            return top_k / experts
    return 1.0


def _mlp_inputs(mlp_in: int, layers: nn.ModuleList, config) -> int:
    """How many I-wide GEMM outputs a dense MLP makes before its last GEMM: 2 (gate, up), or 1
    (GPT-2's, StarCoder-1's, OPT's c_fc / fc1): its input GEMMs' parameters over D x I."""
    width = _mlp_width(config, layers[0])
    if _expert_shape(layers, config) is not None or not width:
        return 2
    return max(1, min(2, round(mlp_in / len(layers) / (config.hidden_size * width))))


def _activation_extra(layer: nn.Module) -> float:
    """Tensors the layer's MLP activation saves for its backward besides its input and output
    (counted already), per element of its input: 0 for SiLU, GELU and PyTorch's tanh GELU
    (one op each); 3 for GPT-2's, CodeGen's and GPT-J's ``gelu_new``, whose Python tanh
    formula keeps tanh's output, x / 2 and 1 + tanh. Found by running it once on a small CPU
    tensor (an activation module has no weights)."""
    import torch

    acts = [
        m
        for part in [*mlp_modules(layer), layer]
        for m in part.children()
        if type(m).__module__ in ("transformers.activations", "torch.nn.modules.activation")
    ]
    if not acts:
        return 0.0
    x = torch.randn(64, requires_grad=True)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.data_ptr()] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = acts[0](x)
    for counted in (x, y):  # the input (c_fc's output) and the output (c_proj's input)
        saved.pop(counted.data_ptr(), None)
    return sum(saved.values()) / x.numel()


def _kv_heads(model: nn.Module, layer: nn.Module, config, heads: int) -> int:
    """Key / value heads, as the attention computes them: its ``num_key_value_groups`` query
    heads share one (transformers' eager attention repeats them so; StarCoder-1's multi-query
    attention: all of them, whatever num_key_value_heads says), else the config's."""
    groups = getattr(layer_attention(model, layer), "num_key_value_groups", None)
    if isinstance(groups, int) and groups > 0 and heads % groups == 0:
        return heads // groups
    return getattr(config, "num_key_value_heads", None) or heads


def _per_layer(config, name: str) -> Any:
    """``config.<name>``, or None; where the layers differ (a heterogeneous config: Gemma 4's
    head sizes, which transformers refuses to read globally) the largest layer's: the memory
    plan sizes for it."""
    try:
        return getattr(config, name, None)
    except RuntimeError:  # AmbiguousGlobalPerLayerAttributeError
        values = [getattr(layer, name, None) for layer in config.per_layer_config]
        return max((v for v in values if v is not None), default=None)


def _mlp_width(config, layer: nn.Module) -> int:
    """I, the MLP width a token runs through: ``intermediate_size``; a model with experts in
    every layer and no dense width (Solar Open, Kolibri, Ergo) runs its top-k experts' and its
    shared experts' widths; a config without either (GPT-2's n_inner, None: 4 D; OPT's
    ffn_dim) the output width of ``layer``'s first MLP GEMM."""
    width = _per_layer(config, "intermediate_size")
    if width:
        return int(width)
    if not any(True for _ in _routed_experts(layer).parameters()):
        gemms = mlp_gemms(layer)
        if gemms:
            return gemm_width(gemms[0])
    expert = getattr(config, "moe_intermediate_size", None) or 0
    shared = getattr(config, "shared_expert_intermediate_size", None) or getattr(
        config, "shared_intermediate_size", None
    )
    if shared is None:
        shared = expert * (getattr(config, "n_shared_experts", None) or 0)
    return int(expert * (getattr(config, "num_experts_per_tok", None) or 1) + shared)


def _latent_qk_head_dim(config) -> int:
    """A query / key head's size under multi-head latent attention (its config's head_dim is
    the rotary part alone), or 0 for attention whose heads are head_dim wide."""
    nope, rope = (getattr(config, f"qk_{part}_head_dim", None) for part in ("nope", "rope"))
    return nope + rope if nope and rope else 0


def _expert_shape(layers: nn.ModuleList, config) -> ExpertShape | None:
    """The MoE layers' widths, read from the first one's modules (a shared expert's from its
    down_proj's input), or None for a dense model."""
    moe = [layer for layer in layers if any(True for _ in _routed_experts(layer).parameters())]
    top_k = _per_layer(config, "num_experts_per_tok")
    counts = (
        _per_layer(config, f) for f in ("n_routed_experts", "num_local_experts", "num_experts")
    )
    experts = next((n for n in counts if n), None)
    width = _per_layer(config, "moe_intermediate_size") or _per_layer(config, "intermediate_size")
    if not moe or not top_k or not experts or not width:
        return None
    mlp = _mlp(moe[0])
    shared = getattr(mlp, "shared_experts", None) or getattr(mlp, "shared_expert", None)
    down = getattr(shared, "down_proj", None)
    return ExpertShape(
        layers=len(moe),
        experts=int(experts),
        top_k=int(top_k),
        width=int(width),
        shared_width=int(getattr(down, "in_features", 0) or 0),
        shared_gated=isinstance(getattr(mlp, "shared_expert_gate", None), nn.Module),
    )


def _latent_ranks(config) -> dict[str, int]:
    """Multi-head latent attention's low-rank widths (``q_lora``, ``kv_lora``, ``rope_dim``:
    the memory plan's), none for other attention."""
    if not _latent_qk_head_dim(config):
        return {}
    return {
        "q_lora": getattr(config, "q_lora_rank", None) or 0,
        "kv_lora": config.kv_lora_rank,
        "rope_dim": config.qk_rope_head_dim,
    }


def _numel(param: nn.Parameter) -> int:
    return int(getattr(param, "ds_numel", param.numel()))
