"""Convert a GGUF model file (llama.cpp, Ollama) into a Hugging Face folder every command takes.

examples:
  reflectioncoder convert-gguf model.Q4_K_M.gguf models/my-model
  reflectioncoder evaluate --task mbpp --model models/my-model --json mbpp.json

The weights are dequantised (transformers' GGUF reader) and saved as float32 safetensors, with
the tokenizer, its chat template, config.json and generation_config.json. OUT/gguf_source.json
records where they came from: the file's name, size and sha256, its declared file type, how many
tensors were stored in each quantisation, and its general.* metadata (name, license, ...).
A dequantised model carries the quantisation's rounding: it is the quantised model, in floats.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from reflectioncoder.errors import (
    UsageError,
    UserError,
    refuse_replacing_input,
    require_file,
    require_writable_output,
)
from reflectioncoder.file_modes import weights_mode_like_config

SOURCE_FILE = "gguf_source.json"
# llama.cpp's LLAMA_FTYPE names (general.file_type), for the record.
_FILE_TYPES = {
    0: "ALL_F32",
    1: "MOSTLY_F16",
    2: "MOSTLY_Q4_0",
    3: "MOSTLY_Q4_1",
    7: "MOSTLY_Q8_0",
    8: "MOSTLY_Q5_0",
    9: "MOSTLY_Q5_1",
    10: "MOSTLY_Q2_K",
    11: "MOSTLY_Q3_K_S",
    12: "MOSTLY_Q3_K_M",
    13: "MOSTLY_Q3_K_L",
    14: "MOSTLY_Q4_K_S",
    15: "MOSTLY_Q4_K_M",
    16: "MOSTLY_Q5_K_S",
    17: "MOSTLY_Q5_K_M",
    18: "MOSTLY_Q6_K",
    32: "MOSTLY_BF16",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a .gguf model file")
    parser.add_argument("out", type=Path, help="the Hugging Face folder to write (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or lines")


def main(args: argparse.Namespace) -> int:
    record = convert_gguf(args.file, args.out, overwrite=args.overwrite)
    print(describe(record, args.out))
    return 0


def describe(record: dict[str, Any], out: Path) -> str:
    types = ", ".join(f"{n} {t}" for t, n in record["tensor_types"].items())
    return (
        f"{out}: {record['parameters'] / 1e6:.1f}M parameters, float32 safetensors, dequantised "
        f"from {record['file_type']} ({types} tensors) of {record['file']}"
    )


def require_gguf() -> None:
    """The gguf package, or one line saying how to install it (before any download or work)."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UsageError(
            "reading GGUF needs the gguf package: pip install 'reflectioncoder[gguf]'"
        ) from None


def gguf_summary(path: Path) -> dict[str, Any]:
    """What a GGUF file holds, without reading its tensors: its general.* metadata, its declared
    file type and the number of tensors per stored type."""
    require_gguf()
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as err:
        raise UserError(f"not a readable GGUF file ({err})", file=path) from None
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("general.") and key != "general.file_type":
            meta[key] = field.contents()
    file_type = reader.fields.get("general.file_type")
    code = int(file_type.contents()) if file_type is not None else None
    counts = collections.Counter(t.tensor_type.name for t in reader.tensors)
    arch = meta.get("general.architecture")
    return {
        "file_type": _FILE_TYPES.get(code, f"file type {code}") if code is not None else "unknown",
        "tensor_types": dict(counts.most_common()),
        "architecture": arch,
        "metadata": meta,
    }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_gguf(
    file: str | Path, out: str | Path, *, overwrite: bool = False, extra: dict | None = None
) -> dict[str, Any]:
    """Write ``out`` (a Hugging Face folder) from the GGUF ``file``; returns the provenance
    record also written to ``out/gguf_source.json`` (``extra`` is added to it). The folder is
    built beside ``out`` and renamed into place, so a failed conversion leaves nothing half
    written."""
    file, out = Path(file), Path(out)
    require_file(file, "GGUF file", field="FILE")
    if out.exists() and not overwrite:
        raise UserError("already exists (give --overwrite to replace it)", file=out, field="OUT")
    if out.is_file() or (out.is_dir() and not (out / SOURCE_FILE).is_file() and any(out.iterdir())):
        # --overwrite replaces an earlier conversion, never a folder of the user's (a run, models/)
        raise UserError(
            "exists and is not a converted model folder (no gguf_source.json); give a new or "
            "empty folder",
            file=out,
            field="OUT",
        )
    refuse_replacing_input(out, file, "FILE", "OUT")
    require_writable_output(out, "OUT", folder=True)
    summary = gguf_summary(file)
    staging = out.with_name(out.name + ".converting")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        parameters = _write_hf_folder(file, staging)
        record = {
            "file": file.name,
            "bytes": file.stat().st_size,
            "sha256": sha256_of(file),
            **summary,
            "dequantised_to": "float32",
            "parameters": parameters,
            "converter": _versions(),
            **(extra or {}),
        }
        (staging / SOURCE_FILE).write_text(json.dumps(record, indent=1, default=str) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def _write_hf_folder(file: Path, out: Path) -> int:
    """Dequantise with transformers' GGUF reader, then save a plain (unquantised) model: the
    GGUF-loaded one refuses ``save_pretrained``, so its weights go into a model built from the
    same config without the quantisation entry."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    if not torch.cuda.is_available():  # DeepSpeed, which transformers asks, would log a warning
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # transformers reads the GGUF's folder too: a tokenizer.json or tokenizer_config.json beside
    # the file (a Hub repo that ships both, an earlier conversion) would replace the GGUF's own
    # vocabulary, end token and chat template. The file is read alone, through a link.
    with tempfile.TemporaryDirectory(prefix="reflectioncoder-gguf-") as folder:
        name = file.name
        (Path(folder) / name).symlink_to(file.resolve())
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=torch.float32
            )
        except (ValueError, KeyError, NotImplementedError) as err:
            raise UserError(f"transformers cannot load this GGUF: {err}", file=file) from None
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for key in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise UserError(f"weights do not fit the config: missing {missing}, extra {unexpected}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    if tokenizer.model_max_length > config.max_position_embeddings:  # GGUF has no such field
        tokenizer.model_max_length = config.max_position_embeddings
    out.mkdir(parents=True)
    model.save_pretrained(out)
    weights_mode_like_config(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _tied_keys(model) -> set[str]:
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(
        model, "_tied_weights_keys", None
    )
    if isinstance(tied, dict):
        return set(tied)
    return set(tied or [])


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("reflectioncoder", "transformers", "gguf", "torch")}
