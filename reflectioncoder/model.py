"""Model integration: the only module that touches transformers internals.

- ``load_model`` loads any ``AutoModelForCausalLM`` from a local folder (Llama, Qwen2,
  DeepSeek-Coder, CodeLlama, ...); ``build_tiny_llama`` builds a small random Llama-style model
  (GQA, RoPE) from sizes, for tests, the demo and benchmarks.
- ``add_special_token_embeddings`` grows the embeddings for the seven SPEC tokens and
  mean-initialises their input and output rows (SPEC §1), ZeRO-3 safe through ``gather_for_update``.
- ``zero3_load.load_model_into_partitions`` does both for a model partitioned as it is built
  (ZeRO-3), with ``special_token_ids`` and ``mean_row`` from here.
- ``forward_hidden`` runs the body only, over a packed batch: attention is our
  ``varlen_attention`` registered in transformers' ``AttentionInterface``
  (``packed_attention.py``) and fed ``cu_seqlens`` explicitly (never inferred from position
  ids, which have gaps in the student segments). The LM head (``lm_head_weight``) is applied
  only in the fused loss, on the loss rows.
- ``prepare_model`` switches the attention, Liger-Kernel (RMSNorm, RoPE, SwiGLU; CUDA only),
  fused q/k/v and gate/up projections (``fused_projections``) and gradient checkpointing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from reflectioncoder import decoder_layout as layout
from reflectioncoder.activation_checkpointing import set_checkpointing
from reflectioncoder.model_config import (
    apply_config_overrides,
    read_model_config,
    resolve_model_path,
)
from reflectioncoder.model_support import (
    LOGIT_SCALES,
    causal_lm_class,
    check_attention_interface,
    check_supported,
)
from reflectioncoder.packed_attention import ATTN_IMPLEMENTATION, hand_packing_to_attention

# A factory of a context in which the given parameters are whole and writable: under ZeRO-3,
# ``reflectioncoder.train.distributed.gathered_params`` (GatheredParameters, modifier_rank=0).
GatherForUpdate = Callable[[list[nn.Parameter]], AbstractContextManager[Any]]


class PackedInputs(Protocol):
    """What ``forward_hidden`` reads from a ``data.packing.PackedBatch``."""

    input_ids: torch.Tensor  # (T,) int64
    position_ids: torch.Tensor  # (T,) int64, original (gapped) positions in student segments
    cu_seqlens: torch.Tensor  # (S + 1,) int32
    max_seqlen: int


@contextlib.contextmanager
def no_gather(params: list[nn.Parameter]) -> Iterator[None]:
    """The single-process ``GatherForUpdate``: parameters are already whole."""
    yield


# ---------------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------------


def build_tiny_llama(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
    tie_word_embeddings: bool = False,
    rope_theta: float = 10000.0,
    attn_implementation: str = ATTN_IMPLEMENTATION,
    seed: int | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> PreTrainedModel:
    """A random Llama-architecture model (RMSNorm, RoPE, GQA, SwiGLU) in float32;
    ``config_overrides``: fields of its LlamaConfig set (``model.config_overrides``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    for name, value in (
        ("vocab_size", vocab_size),
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
        ("num_heads", num_heads),
        ("num_kv_heads", num_kv_heads),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be a positive int, got {value!r}")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(
            f"num_heads: hidden_size={hidden_size} must divide by num_heads={num_heads}, which "
            f"must divide by num_kv_heads={num_kv_heads}"
        )
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    apply_config_overrides(config, config_overrides or {})
    config._attn_implementation = attn_implementation
    with _fork_rng(seed):
        model = LlamaForCausalLM(config)
    return model


@contextlib.contextmanager
def _fork_rng(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    attn_implementation: str = ATTN_IMPLEMENTATION,
    device: str | torch.device | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> PreTrainedModel:
    """Load a causal LM from a local folder (config.json + weights); never downloads.

    ``dtype`` defaults to the checkpoint's; ``config_overrides`` are set on its config before
    the model is built (``model.config_overrides``). Call ``prepare_model`` next for Liger and
    gradient checkpointing.
    """
    path = resolve_model_path(path, field="path")
    config = read_model_config(path, config_overrides)
    if attn_implementation == ATTN_IMPLEMENTATION:  # before the weights: some fail to load
        check_attention_interface(causal_lm_class(config), str(path))
    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        config=config,
        dtype=dtype if dtype is not None else "auto",
        attn_implementation=attn_implementation,
        local_files_only=True,
    )
    if device is not None:
        model.to(device)
    return model


def cast_weights(model: nn.Module, device: torch.device | str, dtype: torch.dtype) -> None:
    """``model.to(device, dtype)`` that keeps each floating buffer in its own dtype, as
    ``from_pretrained`` and DeepSpeed do: the rotary embedding's ``inv_freq`` stays fp32. In
    bf16 (8 bits of mantissa) RoPE's angle at position p is off by up to p x 2^-9 rad, 20 rad at
    16K, so a model trained with it would not see the positions inference gives it."""
    buffers = {name: b for name, b in model.named_buffers() if b.is_floating_point()}
    model.to(device, dtype)
    for name, original in buffers.items():
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._buffers[attr] = original.to(device)


def prepare_model(
    model: PreTrainedModel,
    *,
    attn_implementation: str = ATTN_IMPLEMENTATION,
    liger: bool | None = None,
    gradient_checkpointing: bool = False,
    checkpointing_policy: str = "full",
    fused_projections: bool = False,
    attention: str = "auto",
    device: torch.device | None = None,
) -> PreTrainedModel:
    """Put ``model`` in training mode and switch attention (``attention``: our varlen kernel's
    backend, ``"auto"`` or one of ``varlen_attention.BACKENDS``; one that cannot run for this
    model and device raises here, in one line), Liger-Kernel, fused q/k/v and
    gate/up projections (``fused_projections.fuse_projections``: call this after the model has
    its device and dtype) and gradient checkpointing (in place).

    Training mode matters: ``from_pretrained`` returns the model in eval mode, and transformers
    recomputes a checkpointed layer only when ``self.training`` is set, so without ``.train()``
    checkpointing would be silently off for every model loaded from disk.
    ``liger=None`` means on when the model is on CUDA: Liger's RMSNorm and SwiGLU kernels do
    not run under the Triton interpreter, so ``liger=True`` on the CPU raises. ``device``: the
    one the model will train on, when its parameters are not there yet (built on the meta
    device); the parameters' own by default.
    """
    check_supported(model, fused_projections=fused_projections)
    device = device if device is not None else next(model.parameters()).device
    model.train()
    model.set_attn_implementation(attn_implementation)
    hand_packing_to_attention(model)
    set_attention_backend(model, attention, device)
    on_cuda = device.type == "cuda"
    if liger is None:
        liger = on_cuda
    if liger:
        if not on_cuda:
            raise ValueError("liger: Liger-Kernel needs the model on CUDA (it fails on the CPU)")
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        # Loss kernels off: the head runs only in our fused loss, on the loss rows.
        _apply_liger_kernel_to_instance(
            model=model,
            rope=True,
            rms_norm=True,
            swiglu=True,
            cross_entropy=False,
            fused_linear_cross_entropy=False,
        )
    if fused_projections:
        from reflectioncoder.fused_projections import fuse_projections

        fuse_projections(model)
    set_checkpointing(model, gradient_checkpointing, checkpointing_policy)
    return model


def set_attention_backend(
    model: PreTrainedModel, attention: str, device: torch.device | None = None
) -> None:
    """Every decoder layer's attention runs ``varlen_attention`` with ``backend=attention``.
    A named backend is checked against ``device`` (the model's by default) and head size now
    (the dtype at each call: under autocast it is not the weights')."""
    if attention != "auto":
        from reflectioncoder.kernels.varlen_attention import unavailable_reason

        cfg = model.config.get_text_config()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        device = device if device is not None else next(model.parameters()).device
        softcap = getattr(cfg, "attn_logit_softcapping", None)  # Gemma 2's: not torch_varlen's
        why = unavailable_reason(attention, device, head_dim=head_dim, softcap=softcap)
        if why is not None:
            raise ValueError(f"model.attention: {attention!r} does not run here: {why}")
    for attn in layout.attention_modules(model):
        attn.rc_attention = attention


def compile_layers(model: PreTrainedModel, backend: str = "inductor") -> None:
    """``torch.compile`` each decoder layer (regional compilation: one graph, compiled once,
    reused by every layer), with ``dynamic=True`` so micro-batches of any length reuse it, and
    attention as the ``reflectioncoder::varlen_attention`` custom op (no graph break, and the
    segment lengths never become guards). ``forward_hidden`` then passes no host lengths.
    Layers whose plan is ``offload`` stay eager (their dispatch modes and hooks run in
    Python: reflectioncoder/activation_offload.py)."""
    # Under activation checkpointing the layer's forward sets a ContextVar (transformers'
    # output capture) that dynamo would otherwise refuse to trace inside the checkpoint; the
    # recompute has no use for it being set again.
    torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    plan = getattr(model, "rc_checkpointing_plan", ())
    for index, layer in enumerate(layout.require_layers(model)):
        if index < len(plan) and plan[index] == "offload":
            continue
        layout.layer_attention(model, layer).rc_custom_op = True
        layer.compile(backend=backend, dynamic=True)
    model.rc_compiled = True


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once; ZeRO-3 partitions whole)."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(getattr(p, "ds_numel", p.numel()) for p in unique)


# ---------------------------------------------------------------------------------------------
# Special tokens (SPEC §1)
# ---------------------------------------------------------------------------------------------


def add_special_token_embeddings(
    model: PreTrainedModel,
    tokenizer: Any,
    splits: Mapping[str, Sequence[int]],
    *,
    gather_for_update: GatherForUpdate = no_gather,
) -> dict[str, int]:
    """Make room for the special tokens and mean-initialise their embedding rows (in place).

    ``tokenizer`` already holds the tokens (``data.tokenize.add_special_tokens`` added them and
    returned ``splits``: each token string -> the ORIGINAL tokenizer's ids for that string).
    The input row and, if untied, the output (LM head) row of each token become the mean of the
    rows of its split. Embeddings grow to ``len(tokenizer)`` when smaller (never shrink: many
    checkpoints pad the vocabulary). Under ZeRO-3 pass ``gather_for_update`` (a factory of
    ``GatheredParameters(params, modifier_rank=0)``), so the rows are edited whole.
    Returns each token string -> its id.
    """
    # ZeRO-3 partitions leave an empty local tensor; ds_shape is the whole one. A head of fewer
    # rows than the input (Mllama's: 8 image rows fewer) grows to it: each id a row of both.
    rows = [int(getattr(t, "ds_shape", t.shape)[0]) for t in embedding_tables(model)]
    current = min(rows)
    ids = special_token_ids(tokenizer, splits, current)
    n_vocab = max(len(tokenizer), max(ids.values()) + 1, *rows)
    if n_vocab > current:
        # mean_resizing=False: the rows are set just below; skip transformers' covariance init.
        model.resize_token_embeddings(n_vocab, mean_resizing=False)

    tables = embedding_tables(model)
    with gather_for_update(tables), torch.no_grad():
        for table in tables:
            for token, split in splits.items():
                table[ids[token]] = mean_row(table[torch.tensor(list(split), device=table.device)])
    return ids


def special_token_ids(
    tokenizer: Any, splits: Mapping[str, Sequence[int]], rows: int
) -> dict[str, int]:
    """Each special token string -> its id, checking that every split names one of the model's
    ``rows`` (before growing)."""
    ids: dict[str, int] = {}
    for token, split in splits.items():
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(f"tokenizer: lacks token {token!r}; add it before the embeddings")
        if len(split) == 0:
            raise ValueError(f"splits[{token!r}]: empty split, nothing to average")
        bad = [i for i in split if not 0 <= i < rows]
        if bad:
            raise ValueError(f"splits[{token!r}]: ids {bad} outside the model's {rows} rows")
        ids[token] = int(tid)
    return ids


def embedding_tables(model: PreTrainedModel) -> list[nn.Parameter]:
    """The input embedding and, if untied, the LM head weight: the tables with a row per token."""
    tables = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not tables[0]:  # tied heads share the input rows
        tables.append(out.weight)
    return tables


def mean_row(rows: torch.Tensor) -> torch.Tensor:
    """A special token's row: the mean of its split's rows, summed in fp32 (SPEC §1)."""
    return rows.float().mean(dim=0).to(rows.dtype)


# ---------------------------------------------------------------------------------------------
# Packed forward
# ---------------------------------------------------------------------------------------------


def lm_head_weight(model: PreTrainedModel) -> torch.Tensor:
    """The LM head's (V, D) weight; the input embedding itself when tied."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("model: has no output embeddings (not a causal LM)")
    return head.weight


def lm_head_bias(model: PreTrainedModel) -> torch.Tensor | None:
    """The LM head's (V,) bias (Phi-1 / 1.5 / 2: logits = W h + b), or None."""
    head = model.get_output_embeddings()
    return getattr(head, "bias", None) if head is not None else None


def logit_scale(model: PreTrainedModel) -> float:
    """The constant the model's forward multiplies ``W h`` by after the LM head (1.0 for most);
    ``LOGIT_SCALES`` names the heads that have one."""
    config = model.config
    field, times = LOGIT_SCALES.get(getattr(config, "model_type", ""), (None, True))
    value = getattr(config, field, None) if field else None
    if value is None:
        return 1.0
    return float(value) if times else 1.0 / float(value)


def forward_hidden(
    model: PreTrainedModel,
    batch: PackedInputs,
    *,
    seqlens: list[int] | None = None,
    router_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Final hidden states (after the last norm) of a packed batch: (T, D).

    ``batch`` gives input_ids (T,), position_ids (T,), cu_seqlens (S + 1,) int32, max_seqlen.
    ``seqlens`` (host list of the S lengths; taken from ``batch.seq_lens`` when it has them)
    spares the PyTorch attention path a device sync per layer on CUDA. ``router_logits``: a
    mixture of experts' router logits too, one (T, E) tensor per MoE layer, as the model
    records them (its ``output_router_logits``): returns (hidden, router_logits).
    """
    impl = model.config._attn_implementation
    if impl != ATTN_IMPLEMENTATION:
        raise ValueError(
            f"model: attention is {impl!r}; packed batches need {ATTN_IMPLEMENTATION!r} "
            "(prepare_model) since other backends would infer sequences from position ids"
        )
    ids, pos = batch.input_ids, batch.position_ids
    if ids.dim() != 1 or pos.shape != ids.shape:
        raise ValueError(
            f"batch.input_ids, batch.position_ids: expected equal (T,) shapes, got "
            f"{tuple(ids.shape)} and {tuple(pos.shape)}"
        )
    if seqlens is None and not getattr(model, "rc_compiled", False):  # a host list: a guard
        seqlens = getattr(batch, "seq_lens", None)
    cu = batch.cu_seqlens
    body = model.base_model  # the decoder stack without the LM head
    if body is model:  # a base_model_prefix that names no module (Mllama's text model)
        body = layout.decoder_stack(model)
    out = body(
        input_ids=ids.unsqueeze(0),
        position_ids=pos.unsqueeze(0),
        use_cache=False,
        cu_seq_lens_q=cu,
        cu_seq_lens_k=cu,
        max_length_q=int(batch.max_seqlen),
        max_length_k=int(batch.max_seqlen),
        rc_seqlens=seqlens,
        **({"output_router_logits": True} if router_logits else {}),
    )
    if router_logits:
        return out.last_hidden_state[0], tuple(out.router_logits)
    return out.last_hidden_state[0]
