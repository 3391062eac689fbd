"""Which loaded models packed training computes as they compute themselves (``check_supported``).

Packed training runs the decoder layers (``decoder_layout.decoder_layers``: Llama's
``model.layers``, GPT-2's ``transformer.h``, ...) with our varlen attention and
takes the logits as ``W h`` in the fused loss, on the loss rows. A model that does more than
that (logits rescaled other than ``LOGIT_SCALES`` says, attention dropout, a sliding window
that binds at the run's lengths, decoder layers not found; soft caps, ``SOFTCAPS``, are
applied) would train on a loss it never computes itself, or fail at its first step once the
run folder is written: it is refused in one line naming the field, before anything is written.
"""

from __future__ import annotations

import math
import re
from typing import Any

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from reflectioncoder.decoder_layout import (
    attention_modules,
    decoder_stack,
    layer_attention,
    require_layers,
)
from reflectioncoder.router_loss import router_loss_of

# Config fields, with the values that leave the model as packed training computes it: logits
# rescaled after the LM head's GEMM (a type LOGIT_SCALES names trains with its own scale:
# Cohere, Granite; another type's is refused, its meaning unknown), attention probabilities
# dropped out in training (StarCoder2's released configs: 0.1).
PLAIN_VALUES = {
    "logit_scale": (None, 1, 1.0),
    "logits_scaling": (None, 1, 1.0),
    "lm_head_multiplier": (None, 1, 1.0),
    "attention_dropout": (None, 0, 0.0),
}
# Soft caps packed training applies as the model does (Gemma 2, VaultGemma, nanochat): the final
# logits' c tanh(z / c) in the fused loss (``final_logit_softcap``), the attention scores' in
# the varlen attention (the ``softcap`` the model's attention passes it). None or a number > 0.
SOFTCAPS = ("final_logit_softcapping", "attn_logit_softcapping")


def final_logit_softcap(model: Any) -> float | None:
    """The soft cap c of the model's logits (c tanh(W h / c) after the LM head), or None."""
    value = getattr(model.config, "final_logit_softcapping", None)
    return None if value is None else float(value)


# Heads whose logits are their config's constant times W h (or W h over it), by model type:
# (config field, True: logits = value * W h; False: logits = W h / value). The loss is linear in
# h before the softmax, so feeding the fused loss ``logit_scale(model) * h`` is exact.
LOGIT_SCALES = {
    "cohere": ("logit_scale", True),
    "cohere2": ("logit_scale", True),
    "cohere2_moe": ("logit_scale", True),
    "cohere_compass_text": ("logit_scale", True),
    "granite": ("logits_scaling", False),
    "granite_swa": ("logits_scaling", False),
    "granitemoe": ("logits_scaling", False),
    "granitemoe_swa": ("logits_scaling", False),
    "granitemoehybrid": ("logits_scaling", False),
    "granitemoeshared": ("logits_scaling", False),
    "hyperclovax": ("logits_scaling", True),  # the same field as Granite's, multiplied
    "falcon_h1": ("lm_head_multiplier", True),
}


# The ``layer_types`` the varlen attention computes as the model does: causal softmax attention
# within each sequence (a sliding window too, checked against data.max_len). Linear attention
# (MiniMax, Qwen3-Next, Qwen3.5), convolutions (LFM), DeepSeek-V3.2's indexed sparse attention
# (it selects keys from a dense mask), DeepSeek-V4's compressed attention or Llama 4's chunked
# attention would mix the packed samples or attend where the model does not.
ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")

# Layers and attentions transformers ships whose packed forward cannot equal the model's own,
# found by reflectioncoder/testing/archsweep.py (rerun it on a transformers upgrade):
# class name -> why.
_DRAFTER = (
    "a speculative-decoding drafter: its layers attend to its target model's keys and values, "
    "it is not a language model that runs (or trains) alone"
)
UNPACKABLE_CLASSES = {
    "DogeAttention": "its attention adds a dynamic mask computed from the values to the scores, "
    "which the varlen attention does not apply",
    "Gemma4AssistantForCausalLM": _DRAFTER,
    "Gemma4UnifiedAssistantForCausalLM": _DRAFTER,
}


def check_supported(
    model: Any, max_len: int | None = None, fused_projections: bool = False
) -> None:
    """Raise ValueError naming what of ``model`` packed training would not compute as the model
    does; ``max_len``, the longest sequence the run trains on, decides whether a sliding window
    can bind (unchecked when None: the attention refuses one that binds); with
    ``fused_projections`` (model.fused_projections), a model with nothing to fuse is refused."""
    try:
        _check_model(model, max_len)
        if fused_projections:
            from reflectioncoder.fused_projections import nothing_to_fuse

            why = nothing_to_fuse(model)
            if why is not None:
                raise ValueError(why)
    except ValueError as err:  # the line names the folder the user gave, where it has one
        folder = getattr(model.config, "_name_or_path", "") or ""
        if folder and folder not in str(err):
            raise ValueError(f"{err} (model folder: {folder})") from None
        raise


def _check_model(model: Any, max_len: int | None) -> None:
    config = model.config
    name = type(config).__name__
    _check_values(config)
    require_layers(model)  # decoder_layout.py: where transformers itself finds them
    _check_attention_layers(model)
    _check_layer_types(model)
    _check_head(model)
    router_loss_of(model)  # a balancing loss packed training cannot add is refused
    if max_len is not None:
        _check_position_table(model, max_len)
    window = sliding_window(config.get_text_config())
    if window is not None and max_len is not None and max_len > window:
        raise ValueError(
            f"model: {name}.sliding_window = {window} is shorter than data.max_len {max_len}: "
            f"sliding-window attention is not supported; train with data.max_len <= {window} "
            "(the window then never binds)"
        )


def _check_position_table(model: Any, max_len: int) -> None:
    """A learned position table (GPT-2's and StarCoder-1's wpe: max_position_embeddings rows;
    OPT's, 2 more) has a row for every position a sample of data.max_len tokens takes (past
    it, the first step stopped on an index out of range, the run folder written)."""
    config = model.config.get_text_config()
    limit = getattr(config, "max_position_embeddings", None)
    token = model.get_input_embeddings()
    tables = [
        m for m in decoder_stack(model).children()
        if isinstance(m, nn.Embedding) and m is not token and limit
        and limit <= m.num_embeddings <= limit + 2
    ]  # fmt: skip
    if tables and max_len > limit:  # named as config.json names it (GPT-2's n_positions)
        field = config.attribute_map.get("max_position_embeddings", "max_position_embeddings")
        raise ValueError(
            f"model: {type(config).__name__}.{field} = {limit} is shorter than "
            f"data.max_len {max_len}: its learned position table has no row past it; train "
            f"with data.max_len <= {limit}"
        )


def _check_attention_layers(model: Any) -> None:
    """Every decoder layer attends through its attention module (``decoder_layout``: Llama's
    ``self_attn``, GPT-2's ``attn``), which transformers' attention interface
    feeds (``_supports_attention_backend``: the packed segments reach our varlen attention).
    Models without it either never pass them (StableLM: it stopped at the first step) or mix
    tokens across segments outside attention (Mamba, Jamba, Qwen3-Next, Falcon-H1's state-space
    layers: a packed batch would train silently on the wrong sums)."""
    cls = type(model).__name__
    check_attention_interface(type(model))
    if type(model).__name__ in UNPACKABLE_CLASSES:
        raise ValueError(
            f"model: {cls}: {UNPACKABLE_CLASSES[cls]}; this architecture is not supported"
        )
    _check_recomputable(model)
    for layer in require_layers(model):
        for part in (layer, layer_attention(model, layer)):
            why = UNPACKABLE_CLASSES.get(type(part).__name__)
            if why is not None:
                raise ValueError(f"model: {cls}: {why}; this architecture is not supported")
    for i, attn in enumerate(attention_modules(model)):
        if getattr(attn, "is_causal", True) is False:  # BERT-like: is_decoder false
            raise ValueError(
                f"model: {cls}: layer {i}'s attention ({type(attn).__name__}) is not causal "
                "(is_causal is False: each token attends to the tokens after it too), which "
                "packed training's causal attention would not compute as the model does; this "
                "architecture is not supported"
            )
        if getattr(attn, "sinks", None) is not None:  # GPT-OSS: a softmax term more
            raise ValueError(
                f"model: {cls}: layer {i}'s attention has sinks, which the varlen attention "
                "does not apply; this architecture is not supported"
            )


def _check_recomputable(model: Any) -> None:
    """Activation checkpointing (which ``auto``'s memory plan may choose) can recompute the
    layers: the model supports it (JetMoE does not) and its layers are transformers'
    ``GradientCheckpointingLayer`` (CTRL's are not: a plan would be silently off)."""
    cls = type(model).__name__
    if getattr(model, "supports_gradient_checkpointing", True) is False:
        raise ValueError(
            f"model: {cls} does not support activation checkpointing "
            "(supports_gradient_checkpointing is False), which the memory plan may choose; "
            "this architecture is not supported"
        )
    layer = require_layers(model)[0]
    if not isinstance(layer, GradientCheckpointingLayer):
        raise ValueError(
            f"model: {cls}: its decoder layers ({type(layer).__name__}) are not transformers' "
            "GradientCheckpointingLayer, through which activation checkpointing (which the "
            "memory plan may choose) recomputes a layer; this architecture is not supported"
        )


def check_attention_interface(model_class: type, folder: str = "") -> None:
    """Refuse a model class whose attention does not go through transformers' attention
    interface; ``load_model`` asks before loading the weights (GPT-Neo's own attention table
    stopped the load with ``KeyError: 'reflectioncoder_varlen'``)."""
    if not getattr(model_class, "_supports_attention_backend", False):
        where = f" (model folder: {folder})" if folder else ""
        raise ValueError(
            f"model: {model_class.__name__} does not run its attention through transformers' "
            "attention interface (_supports_attention_backend is False), which packed training "
            f"feeds the segments through; this architecture is not supported{where}"
        )


def _check_head(model: Any) -> None:
    """Nothing with weights between the decoder stack and the LM head: the fused loss takes the
    logits as ``W h`` of the stack's output (ModernBERT-decoder's ``lm_head`` is a prediction
    head, dense, activation and norm, that its ``decoder``, the output embedding, follows)."""
    stack, head = decoder_stack(model), model.get_output_embeddings()
    for name, child in model.named_children():
        inside = any(m is stack for m in child.modules())
        if child is head or inside or not any(True for _ in child.parameters()):
            continue
        raise ValueError(
            f"model: {type(model).__name__}: its `{name}` ({type(child).__name__}) computes on "
            "the hidden states outside the decoder stack, which packed training (the fused "
            "loss: logits = W h of the stack's output) does not apply; this architecture is "
            "not supported"
        )


def _check_layer_types(model: Any) -> None:
    """Every entry of the config's ``layer_types`` one of ``ATTENTION_LAYER_TYPES``."""
    layer_types = vars(model.config.get_text_config()).get("layer_types")
    for i, kind in enumerate(layer_types if isinstance(layer_types, list | tuple) else ()):
        if kind not in ATTENTION_LAYER_TYPES:
            raise ValueError(
                f"model: {type(model).__name__}: config.json's layer_types[{i}] = {kind!r}: "
                "packed training "
                f"runs causal softmax attention within each sample "
                f"({', '.join(ATTENTION_LAYER_TYPES)}), which would not compute this layer as "
                "the model does; this architecture is not supported"
            )


def _check_values(config: Any) -> None:
    """``PLAIN_VALUES`` in ``config`` and, for a model that wraps a language model (Gemma 3's
    image-text checkpoints), in its ``text_config``."""
    owners = {type(config).__name__: config}
    text = config.get_text_config()
    if text is not config:
        owners[f"{type(config).__name__}.text_config"] = text
    scaled = _check_logit_scale(config)
    for owner, cfg in owners.items():
        _check_attention_dropout(owner, cfg, "" if cfg is config else "text_config.")
        _check_softcaps(owner, cfg, wrapped=cfg is not config)
        for field, plain in PLAIN_VALUES.items():
            value = getattr(cfg, field, None)
            if cfg is config and field == scaled:  # the fused loss takes it (model.logit_scale)
                continue
            if ATTENTION_DROPOUT.search(field):  # _check_attention_dropout
                continue
            if value not in plain:
                raise ValueError(
                    f"model: {owner}.{field} = {value!r} changes the logits after the LM head, "
                    "which packed training (varlen attention, the fused loss: logits = W h) does "
                    "not apply; this architecture is not supported"
                )


# Config fields of the attention probabilities' dropout, by their name (Llama's
# attention_dropout, GPT-2's and StarCoder-1's attn_pdrop, BERT-like attention_probs_dropout_prob):
# packed attention applies none. Residual and embedding dropout (resid_pdrop, embd_pdrop) the
# model applies itself, token by token, packed or not.
ATTENTION_DROPOUT = re.compile(r"(attn|attention).*drop")


def _check_attention_dropout(owner: str, cfg: Any, inner: str) -> None:
    for field, value in vars(cfg).items():
        if ATTENTION_DROPOUT.search(field) and value not in (None, 0, 0.0, False):
            raise ValueError(
                f"model: {owner}.{field} = {value!r} (config.json or model.config_overrides): "
                "packed attention (varlen kernels) applies no attention dropout; to train without "
                f"it: --set model.config_overrides.{inner}{field}=0.0"
            )


def _check_softcaps(owner: str, config: Any, wrapped: bool) -> None:
    """``SOFTCAPS`` None or a finite number > 0 (c tanh(z / c) divides by c); a wrapped language
    model's (``wrapped``: an image-text model's text_config) final cap is refused: whether its
    wrapper's head applies it is the wrapper's (Gemma 3's does not), unknown to the loss."""
    for field in SOFTCAPS:
        value = getattr(config, field, None)
        if value is None:
            continue
        if wrapped and field == "final_logit_softcapping":
            raise ValueError(
                f"model: {owner}.{field} = {value!r} soft-caps a wrapped language model's "
                "logits, which packed training (the fused loss: the causal LM's own cap) does "
                "not apply; this architecture is not supported"
            )
        if not isinstance(value, int | float) or isinstance(value, bool) or not (
            math.isfinite(value) and value > 0
        ):  # fmt: skip
            raise ValueError(
                f"model: {owner}.{field} = {value!r}: a soft cap must be null or a finite "
                "number > 0"
            )


def _check_logit_scale(config: Any) -> str | None:
    """The config field of the head's logit scale (``LOGIT_SCALES``), checked finite and
    non-zero; None when the model type has none."""
    field = LOGIT_SCALES.get(getattr(config, "model_type", ""), (None,))[0]
    value = getattr(config, field, None) if field else None
    if value is None or (isinstance(value, int | float) and math.isfinite(value) and value):
        return field
    raise ValueError(
        f"model: {type(config).__name__}.{field} = {value!r}: the logits' scale must be a "
        "finite non-zero number"
    )


def sliding_window(config: Any) -> int | None:
    """The sliding window some of the model's layers attend within, or None."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)


def causal_lm_class(config: Any) -> type:
    """The class ``AutoModelForCausalLM`` builds for ``config``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise ValueError(
            f"model: {type(config).__name__} ({config.model_type}) has no causal-LM class in "
            "transformers (AutoModelForCausalLM): not a decoder-only language model"
        ) from None
