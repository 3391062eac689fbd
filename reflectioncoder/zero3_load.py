"""Loading a Hugging Face checkpoint straight into ZeRO-3 partitions (or FSDP2 shards), from its
safetensors files.

``load_model_into_partitions`` is ``model.load_model`` then ``model.add_special_token_embeddings``
for a model partitioned as it is built: each rank reads, with plain reads by element range
(``SafetensorsFolder``), only its piece of every parameter, the special-token rows included, so
no parameter is ever whole on a rank. Its two halves, ``build_without_values`` and
``read_pieces``, also serve FSDP2 (``train/fsdp_load.py``), which shards between them. DeepSpeed
itself stays in ``train/deepspeed_config.py``: this module takes the partitioning context and
each parameter's local piece as arguments."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel
from transformers.initialization import no_init_weights

from reflectioncoder.model import embedding_tables, mean_row, special_token_ids
from reflectioncoder.model_config import read_model_config
from reflectioncoder.packed_attention import ATTN_IMPLEMENTATION

_SAFETENSORS_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
}
_READ_CHUNK_BYTES = 64 << 20  # bounds the staging buffer when the stored dtype differs
# A parameter -> this rank's piece of it (1-D, written in place) and where the piece starts in
# the flattened parameter.
LocalPiece = Callable[[nn.Parameter], tuple[torch.Tensor, int]]


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """Where a tensor's data lies in a safetensors file (row-major, little-endian)."""

    file: Path
    offset: int  # bytes from the start of the file
    dtype: torch.dtype
    shape: tuple[int, ...]


def has_safetensors(folder: Path) -> bool:
    """Whether a model folder's weights are safetensors (what ``SafetensorsFolder`` reads)."""
    return any(
        (folder / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json")
    )


class SafetensorsFolder:
    """The tensors of a model folder's safetensors files, read by flat element range with plain
    reads. Not safetensors' own ``safe_open``: it maps the file, and mapped pages count in the
    reader's resident memory, while a ZeRO-3 rank must hold no more than its own piece."""

    def __init__(self, folder: Path) -> None:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            names = ["model.safetensors"]
        self.tensors: dict[str, StoredTensor] = {}
        for name in names:
            self.tensors.update(_safetensors_header(folder / name))

    def read_into(self, name: str, out: torch.Tensor, start: int) -> None:
        """Elements [start, start + out.numel()) of tensor ``name`` flattened, into the 1-D
        ``out`` (converted to its dtype as ``Tensor.to`` does; staged on the host in chunks
        when the dtype or the device differ)."""
        stored = self.tensors[name]
        size = stored.dtype.itemsize
        with open(stored.file, "rb") as f:
            f.seek(stored.offset + start * size)
            if out.dtype == stored.dtype and out.device.type == "cpu":
                _read_exact(f, out, stored.file)
                return
            step = max(1, _READ_CHUNK_BYTES // size)
            for a in range(0, out.numel(), step):
                piece = torch.empty(min(step, out.numel() - a), dtype=stored.dtype)
                _read_exact(f, piece, stored.file)
                out[a : a + piece.numel()].copy_(piece)


def _safetensors_header(path: Path) -> dict[str, StoredTensor]:
    """The format: an 8-byte little-endian header length, a JSON header, then the data."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: {name}: dtype {entry['dtype']} is not supported")
        tensors[name] = StoredTensor(
            path,
            8 + length + entry["data_offsets"][0],
            _SAFETENSORS_DTYPES[entry["dtype"]],
            tuple(entry["shape"]),
        )
    return tensors


def _read_exact(f: Any, out: torch.Tensor, path: Path) -> None:
    view = memoryview(out.view(torch.uint8).numpy())
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise ValueError(f"{path}: truncated (the header promises more data)")
        done += got


def load_model_into_partitions(
    path: str | Path,
    tokenizer: Any,
    splits: Mapping[str, Sequence[int]],
    *,
    dtype: torch.dtype,
    partition_context: AbstractContextManager[Any],
    local_piece: LocalPiece,
    attn_implementation: str = ATTN_IMPLEMENTATION,
    config_overrides: Mapping[str, Any] | None = None,
) -> tuple[PreTrainedModel, dict[str, int]]:
    """``load_model`` then ``add_special_token_embeddings``, for parameters partitioned as they
    are built (ZeRO-3), with no parameter ever whole on a rank; the same values, bit for bit.

    The model is built inside ``partition_context`` (which partitions each module as it is
    built, with no values), at its final vocabulary size (``build_without_values``), then each
    rank reads its piece of each parameter (``read_pieces``). Returns the model (weights tied as
    its config says) and each special token -> its id.
    """
    model, ids = build_without_values(
        path, tokenizer, splits, dtype=dtype, context=partition_context,
        attn_implementation=attn_implementation, config_overrides=config_overrides,
    )  # fmt: skip
    read_pieces(model, Path(path), splits, ids, dtype=dtype, local_piece=local_piece)
    return model, ids


def build_without_values(
    path: str | Path,
    tokenizer: Any,
    splits: Mapping[str, Sequence[int]],
    *,
    dtype: torch.dtype,
    context: AbstractContextManager[Any],
    attn_implementation: str = ATTN_IMPLEMENTATION,
    config_overrides: Mapping[str, Any] | None = None,
) -> tuple[PreTrainedModel, dict[str, int]]:
    """The checkpoint's model built inside ``context`` (ZeRO-3's partitioning, or the meta
    device), its values left to ``read_pieces``, its embeddings already at the vocabulary size
    the special tokens need, ``config_overrides`` set on its config. Returns the model (weights
    tied as its config says) and each special token -> its id."""
    path = Path(path)
    config = read_model_config(path, config_overrides)
    text = config.get_text_config()
    ids = special_token_ids(tokenizer, splits, text.vocab_size)
    text.vocab_size = max(text.vocab_size, len(tokenizer), max(ids.values()) + 1)
    # No init: every value is read next (and ZeRO-3's partitions are empty until then).
    with no_init_weights(), context:
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    model.tie_weights()
    if model.can_generate() and (path / "generation_config.json").is_file():  # as from_pretrained
        model.generation_config = GenerationConfig.from_pretrained(str(path), local_files_only=True)
    return model, ids


def read_pieces(
    model: PreTrainedModel,
    path: Path,
    splits: Mapping[str, Sequence[int]],
    ids: Mapping[str, int],
    *,
    dtype: torch.dtype,
    local_piece: LocalPiece,
) -> None:
    """Each rank reads, from the safetensors files, only its piece of each parameter:
    ``local_piece(param)`` gives the piece (1-D) and where it starts in the flattened parameter.
    Values are those of the checkpoint in ``dtype`` (the training dtype), as ``load_model``
    gives them, stored in the piece's own dtype (FSDP's fp32 masters hold bf16 values). The
    special-token rows (the mean of their split's rows, read from the checkpoint) are written
    where they fall in the piece; persistent buffers are read whole."""
    reader = SafetensorsFolder(path)
    text = model.config.get_text_config()
    tables = {id(t) for t in embedding_tables(model)}
    with torch.no_grad():
        for name, param in model.named_parameters():
            stored = reader.tensors.get(name)
            shape = tuple(getattr(param, "ds_shape", param.shape))
            if stored is None or stored.shape[1:] != shape[1:]:
                raise ValueError(f"{path}: no tensor {name} of shape {shape} in its safetensors")
            piece, start = local_piece(param)
            rows = {}
            if id(param) in tables:
                rows = _new_rows(reader, name, shape, splits, ids, dtype, text)
            elif stored.shape != shape:
                raise ValueError(f"{path}: {name} has shape {stored.shape}, the model {shape}")
            staged = piece if piece.dtype == dtype else torch.empty_like(piece, dtype=dtype)
            _load_piece(reader, name, shape, staged, start, rows)
            if staged is not piece:
                piece.copy_(staged)
        for name, buffer in model.named_buffers():
            if name in reader.tensors:  # persistent buffers are whole on every rank
                reader.read_into(name, buffer.view(-1), 0)


def init_buffers(model: PreTrainedModel) -> None:
    """Every buffer of a model built without values (after ``to_empty``) as ``from_pretrained``
    computes the non-persistent ones: by the model's ``_init_weights`` (RoPE's ``inv_freq``
    from the config). Run before ``read_pieces``, which overwrites the parameters and reads the
    persistent buffers the checkpoint holds."""
    with torch.no_grad():
        for module in model.modules():
            if next(module.buffers(recurse=False), None) is not None:
                model._init_weights(module)


def _new_rows(
    reader: SafetensorsFolder,
    name: str,
    shape: tuple[int, ...],
    splits: Mapping[str, Sequence[int]],
    ids: Mapping[str, int],
    dtype: torch.dtype,
    config: Any,
) -> dict[int, torch.Tensor]:
    """An embedding table's rows that are not the checkpoint's: each special token's mean row,
    and rows past the checkpoint's that no token takes, drawn as the model's init draws them
    (normal, initializer_range), the same on every rank."""
    width, stored_rows = shape[1], reader.tensors[name].shape[0]
    rows = {}
    for token, split in splits.items():
        values = torch.empty(len(split), width, dtype=dtype)
        for k, row in enumerate(split):
            reader.read_into(name, values[k], row * width)
        rows[ids[token]] = mean_row(values)
    spare = [r for r in range(stored_rows, shape[0]) if r not in rows]
    if spare:
        draw = torch.Generator().manual_seed(0)
        std = getattr(config, "initializer_range", 0.02)
        for r in spare:
            rows[r] = torch.normal(0.0, std, (width,), generator=draw).to(dtype)
    return rows


def _load_piece(
    reader: SafetensorsFolder,
    name: str,
    shape: tuple[int, ...],
    piece: torch.Tensor,
    start: int,
    rows: Mapping[int, torch.Tensor],
) -> None:
    """Fill ``piece``, elements [start, start + len) of parameter ``name`` (``shape``) flattened,
    from the checkpoint, then overwrite the parts of ``rows`` (row -> values) that fall in it.
    Elements past the parameter's end (ZeRO-3 pads the last rank's piece) are left as they are."""
    numel = math.prod(shape)
    stop = min(start + piece.numel(), numel)
    stored_stop = min(stop, math.prod(reader.tensors[name].shape))
    if start < stored_stop:
        reader.read_into(name, piece[: stored_stop - start], start)
    width = numel // shape[0] if shape else 1
    for row, values in rows.items():
        a, b = max(start, row * width), min(stop, (row + 1) * width)
        if a < b:
            piece[a - start : b - start] = values[a - row * width : b - row * width]
