"""Loading a checkpoint into FSDP2's shards without any rank holding the whole model.

Under ``distributed.backend: fsdp`` a model whose checkpoint has safetensors weights is built on
the meta device (``build_on_meta``: no storage, no values), goes through the trainer's
preparation and the engine's ``fully_shard`` as it is, and only then gets storage:
``load_shards`` gives each rank its shard of each parameter (``to_empty``) and reads into it,
from the safetensors files, only the rows of that shard (FSDP2 shards dim 0: the DTensor's local
shape and global offset give the rows, uneven sizes included). Values are those of the
whole-model path (``load_model`` in the training dtype, ``add_special_token_embeddings``, the
engine's fp32 masters), bit for bit.

Why this design. torch's own ``set_model_state_dict(..., full_state_dict=True,
broadcast_from_rank0=True)`` needs the whole state dict on rank 0's host (68 GB for a 34B model)
and sends every tensor whole to every rank, which keeps its shard; torchtitan builds on meta,
shards, ``to_empty``, recomputes its buffers (``init_weights``) and then reads its own DCP
checkpoint. We take torchtitan's order and read the Hugging Face checkpoint directly: a rank's
shard is a contiguous range of rows, so it is a contiguous range of bytes in the safetensors
file, and ``zero3_load`` already reads such ranges for ZeRO-3 (its ``build_without_values`` and
``read_pieces``, shared, not copied). Its ``SafetensorsFolder`` reads with plain reads rather than
``safe_open(...).get_slice``, whose mapped pages count in the reader's resident memory. The
special-token rows are the mean of their split's rows: each rank reads those few rows from the
file and averages them as the whole-model path does, which gives its values bit for bit (a sum
of per-rank partial sums over the ranks would change the summation order, and so the last bit)
with no communication. Buffers are built on meta too (accelerate's
``init_empty_weights(include_buffers=False)`` would still allocate each parameter whole before
moving it to meta) and recomputed after ``to_empty`` as ``from_pretrained`` recomputes the
non-persistent ones, by the model's ``_init_weights`` (RoPE's ``inv_freq`` from the config, in
fp32 as the engine keeps floating buffers); persistent buffers are then read from the
checkpoint. A resumed run loads this way too, then the DCP checkpoint overrides every shard
(``FSDPEngine.load_state``).

Checkpoints without safetensors (``pytorch_model.bin``) keep the whole-model path: each rank
loads the whole model, then ``fully_shard`` keeps its shards (one log line says so).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from reflectioncoder.zero3_load import build_without_values, init_buffers, read_pieces


@dataclasses.dataclass(frozen=True)
class PendingLoad:
    """What a model built on the meta device still has to read, once sharded."""

    folder: Path
    splits: Mapping[str, Sequence[int]]
    ids: Mapping[str, int]
    dtype: torch.dtype  # the training dtype: the values' (the masters hold them in fp32)


def build_on_meta(
    path: Path,
    tokenizer: Any,
    splits: Mapping[str, Sequence[int]],
    dtype: torch.dtype,
    config_overrides: Mapping[str, Any] | None = None,
) -> PreTrainedModel:
    """The checkpoint's model on the meta device (no storage, no values), at the vocabulary size
    the special tokens need, ``config_overrides`` set on its config; ``load_shards`` gives it its
    values once the engine has sharded it. ``tokenizer`` already holds the special tokens
    (``splits``)."""
    context = torch.device("meta")
    model, ids = build_without_values(
        path, tokenizer, splits, dtype=dtype, context=context, config_overrides=config_overrides
    )
    model.rc_pending_load = PendingLoad(Path(path), splits, ids, dtype)
    return model


def pending_load(module: nn.Module) -> PendingLoad | None:
    """The load a model (or a module holding it) built by ``build_on_meta`` still owes."""
    owner = _owner(module)
    return None if owner is None else owner.rc_pending_load


def _owner(module: nn.Module) -> Any:
    return next((m for m in module.modules() if hasattr(m, "rc_pending_load")), None)


def load_shards(module: nn.Module, device: torch.device) -> None:
    """After ``fully_shard``: every parameter gets storage for this rank's shard on ``device``
    and reads it from the checkpoint; every buffer gets storage and the value the model's
    ``_init_weights`` gives it (RoPE's ``inv_freq``, fp32 as the engine keeps floating
    buffers), as ``from_pretrained`` gives it, then the checkpoint's where it has one."""
    owner = _owner(module)
    pending = owner.rc_pending_load
    module.to_empty(device=device)
    init_buffers(owner)
    read_pieces(
        owner, pending.folder, pending.splits, pending.ids, dtype=pending.dtype,
        local_piece=local_shard,
    )  # fmt: skip
    del owner.rc_pending_load


def local_shard(param: nn.Parameter) -> tuple[torch.Tensor, int]:
    """This rank's shard of an FSDP2 parameter (a DTensor sharded on dim 0), flattened, and the
    element where it starts in the flattened parameter."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if tuple(param.placements) != (Shard(0),):
        raise ValueError(f"expected a parameter sharded on dim 0, got {param.placements}")
    local = param.to_local()
    shape, offset = compute_local_shape_and_global_offset(
        param.shape, param.device_mesh, param.placements
    )
    if tuple(shape) != tuple(local.shape):
        raise ValueError(f"local shard {tuple(local.shape)} is not the {tuple(shape)} expected")
    return local.view(-1), offset[0] * math.prod(param.shape[1:])
