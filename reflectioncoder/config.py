"""Typed configuration of a training run: one dataclass per component.

A run is a ``RunConfig``: ``model`` (here), ``data``, ``mask`` and ``packing`` (the data
room's ``DataConfig``, ``MaskConfig``, ``PackingConfig``), ``optim``, ``train``,
``distributed``, ``checkpoint``, ``logging`` (the train room's, ``train/config.py``). Every
dataclass checks itself in ``__post_init__`` and raises ``ValueError`` naming the bad field.

``config_loader.load_config`` builds one from a preset (``config_presets``) or a YAML file,
then command-line overrides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reflectioncoder.data.config import DataConfig, MaskConfig, PackingConfig
from reflectioncoder.errors import atomic_write_text, check_field, did_you_mean, hint
from reflectioncoder.train.config import (
    CheckpointConfig,
    DistributedConfig,
    LoggingConfig,
    OptimConfig,
    TrainConfig,
)

DTYPES = ("auto", "bf16", "fp16", "fp32")
# "auto" and kernels/varlen_attention.py's BACKENDS, written out so that reading a config
# imports no torch (tests/test_varlen_attention.py checks that the two agree).
ATTENTION = ("auto", "flash_attn_3", "flash_attn_4", "flash_attn", "torch_varlen", "sdpa")
CHECKPOINTING_POLICIES = ("full", "save_gemms", "mlp_rerun", "offload", "alternate", "auto")
MIXED_PRECISIONS = ("masters", "autocast")


# model.build_tiny_llama's keyword arguments that ``model.arch`` may set
ARCH_SIZES = ("hidden_size", "num_layers", "num_heads", "num_kv_heads")
ARCH_FIELDS = (*ARCH_SIZES, "intermediate_size", "max_position_embeddings",
               "tie_word_embeddings", "rope_theta")  # fmt: skip
# The LlamaConfig fields model.arch sets, by their arch name: an override of one is refused
# for a model built from arch (its one home, checked there: heads dividing the width, ...)
ARCH_OF_CONFIG = {"hidden_size": "hidden_size", "num_hidden_layers": "num_layers",
                  "num_attention_heads": "num_heads", "num_key_value_heads": "num_kv_heads",
                  "intermediate_size": "intermediate_size",
                  "max_position_embeddings": "max_position_embeddings",
                  "tie_word_embeddings": "tie_word_embeddings"}  # fmt: skip


def _check_arch(arch: dict[str, Any]) -> None:
    """``model.arch`` checked when the config is read (``--print-config`` too), not as a
    TypeError or a bare ``num_heads: ...`` once the data is tokenised."""
    for key in arch:
        hint = did_you_mean(key, ARCH_FIELDS, "model.arch")
        check_field(key in ARCH_FIELDS, f"model.arch.{key}",
               f"unknown field{hint}; known: {', '.join(ARCH_FIELDS)}")  # fmt: skip
    for key in ARCH_SIZES:
        value = arch.get(key, 1)
        check_field(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
               f"model.arch.{key}", f"must be a positive integer, got {value!r}")  # fmt: skip
    if "hidden_size" in arch or "num_heads" in arch or "num_kv_heads" in arch:
        width, heads = arch.get("hidden_size", 64), arch.get("num_heads", 4)
        kv = arch.get("num_kv_heads", 2)
        check_field(width % heads == 0 and heads % kv == 0, "model.arch",
               f"hidden_size {width} must divide by num_heads {heads}, which must divide by "
               f"num_kv_heads {kv}")  # fmt: skip


@dataclass
class ModelConfig:
    """The model: a Hugging Face checkpoint, or a small Llama built from ``arch`` (tests, demo)."""

    name_or_path: str | None = None
    """Hugging Face model folder, or a hub name already in the local Hugging Face cache (never
    downloaded); None builds ``arch``."""
    tokenizer: str | None = None
    """Tokenizer folder; None: that of ``name_or_path``, or one trained on the data."""
    tokenizer_vocab_size: int = 512
    """Vocabulary of the tokenizer trained locally when neither path is given."""
    arch: dict[str, Any] = field(default_factory=dict)
    """``model.build_tiny_llama`` keyword arguments for a model built from scratch
    (hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, ...)."""
    config_overrides: dict[str, Any] = field(default_factory=dict)
    """Fields of the model's Hugging Face config set before the model is built, e.g.
    ``{attention_dropout: 0.0}`` for StarCoder2's released checkpoints (``--set
    model.config_overrides.attention_dropout=0.0``): the downloaded folder is never edited. Each
    must name a field the config has, with a value of its type (a mapping for a nested config:
    ``text_config``); checked against the model's config.json at start (none resizing its
    weights; a model built from ``arch`` takes the sizes arch sets there). The saved
    checkpoints' config.json carries them."""
    dtype: str = "auto"
    """Training dtype of the weights' compute: auto = bf16 on GPU, fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (the paper: on)."""
    checkpointing_policy: str = "auto"
    """With checkpointing on, what each decoder layer keeps
    (``reflectioncoder.activation_checkpointing``): ``full`` (recompute every layer),
    ``save_gemms`` (keep GEMM and attention outputs, recompute the element-wise ops),
    ``mlp_rerun`` (keep what ``save_gemms`` keeps of the attention half, nothing of the MLP:
    the backward reruns the element-wise ops and the MLP's gate / up GEMMs; half
    ``save_gemms``' bytes),
    ``offload`` (keep what ``save_gemms`` keeps, in host memory: copied out on a side CUDA
    stream in the forward and back ahead of the layer's backward; those layers are not
    compiled), ``alternate`` (recompute every second layer), ``auto`` (on CUDA: the least
    recompute whose activations fit the GPU beside the weights, gradients and optimizer
    states, planned once at start, layer by layer, offloading the first layers as far as the
    host link carries them in time when ``activation_offload`` is on; on a CPU: ``full``)."""
    activation_offload: bool = True
    """Whether ``checkpointing_policy: auto`` may give layers ``offload`` (on CUDA). Off: a
    host with little free pinned memory, or many ranks sharing a slow host link."""
    compile: bool | str = "auto"
    """``torch.compile`` each decoder layer (regional; attention as a custom op, so no graph
    break and no recompile across micro-batch lengths: ``model.compile_layers``). ``auto``: on
    when training on CUDA, off on a CPU (compiling there costs more than it saves)."""
    fused_projections: bool = False
    """q/k/v as one GEMM and gate/up as one (``fused_projections``; the weights stay Hugging
    Face's own). Off: on the CPU the whole forward + backward measured 1.5-13% slower with it
    (bench.bench_fused_projections: the slices are strided, the backward concatenates their
    gradients), and on a GPU Liger's RoPE and SwiGLU copy the slices, about what the one GEMM
    saves (docs/training.md); a GPU measurement is owed. Not with ZeRO-3, whose hooks gather
    each projection's own weights."""
    attention: str = "auto"
    """The packed attention's kernel (``reflectioncoder.kernels.varlen_attention``): ``auto``
    takes the first that runs of ``flash_attn_3`` (FA3's Hopper build, from source),
    ``flash_attn_4`` (FlashAttention-4, Hopper / Blackwell, extra ``hopper``), ``flash_attn``
    (extra ``gpu``), ``torch_varlen`` (torch's
    own, CUDA) and ``sdpa`` (the CPU); naming one that cannot run here fails at start, in one
    line saying why."""
    mixed_precision: str = "masters"
    """bf16 in one process (``distributed.backend=none``): ``masters`` keeps the weights in
    bf16 and fp32 master weights, fp32 gradient sums and the AdamW states in the optimizer (as
    DeepSpeed's bf16 optimizer does); ``autocast`` keeps fp32 weights and computes under
    torch.autocast (each layer's inputs cast again per GEMM, an fp32 residual stream)."""

    def __post_init__(self) -> None:
        check_field(
            self.dtype in DTYPES,
            "model.dtype",
            f"must be one of {DTYPES}, got {self.dtype!r}{hint(self.dtype, DTYPES)}",
        )
        check_field(
            self.checkpointing_policy in CHECKPOINTING_POLICIES,
            "model.checkpointing_policy",
            f"must be {' | '.join(CHECKPOINTING_POLICIES)}, got {self.checkpointing_policy!r}"
            + hint(self.checkpointing_policy, CHECKPOINTING_POLICIES),
        )
        check_field(
            isinstance(self.activation_offload, bool),
            "model.activation_offload",
            f"must be true | false, got {self.activation_offload!r}",
        )
        check_field(
            self.compile in (True, False, "auto"),
            "model.compile",
            f"must be true | false | auto, got {self.compile!r}{hint(self.compile, ('auto',))}",
        )
        check_field(
            self.attention in ATTENTION,
            "model.attention",
            f"must be {' | '.join(ATTENTION)}, got {self.attention!r}"
            + hint(self.attention, ATTENTION),
        )
        check_field(
            self.mixed_precision in MIXED_PRECISIONS,
            "model.mixed_precision",
            f"must be {' | '.join(MIXED_PRECISIONS)}, got {self.mixed_precision!r}"
            + hint(self.mixed_precision, MIXED_PRECISIONS),
        )
        check_field(
            self.name_or_path is not None or bool(self.arch),
            "model.arch",
            "give model.name_or_path or model.arch (a LlamaConfig to build from scratch)",
        )
        _check_arch(self.arch)
        bad = [k for k in self.config_overrides if not isinstance(k, str) or not k.strip()]
        check_field(not bad, "model.config_overrides",
                    f"expected field names of the model's config, got {bad[:1]}")  # fmt: skip
        for key in self.config_overrides if self.name_or_path is None else ():
            check_field(key not in ARCH_OF_CONFIG, f"model.config_overrides.{key}",
                        f"a model built from model.arch takes it as "
                        f"model.arch.{ARCH_OF_CONFIG.get(key)} (checked there)")  # fmt: skip
        if self.name_or_path is None and self.config_overrides:  # arch's LlamaConfig: check now
            from transformers import LlamaConfig

            from reflectioncoder.model_config import check_config_overrides

            check_config_overrides(LlamaConfig(), self.config_overrides)
        check_field(
            isinstance(self.tokenizer_vocab_size, int) and self.tokenizer_vocab_size >= 300,
            "model.tokenizer_vocab_size",
            f"must be an int >= 300, got {self.tokenizer_vocab_size!r}",
        )


@dataclass
class RunConfig:
    """A whole training run."""

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-serialisable)."""
        return _to_plain(dataclasses.asdict(self))

    def save(self, path: str | Path) -> None:
        """Write the config as YAML (the run folder keeps the exact config it ran with)."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))  # a kill: whole


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
