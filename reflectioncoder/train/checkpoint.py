"""Checkpoints: a Hugging Face model folder plus everything a killed run needs to continue.

OUT/checkpoints/step-000120/
    model/              config.json, model.safetensors, tokenizer (with the special tokens):
                        loadable by AutoModelForCausalLM.from_pretrained as is
    optimizer.pt        AdamW state (single process), or deepspeed/ (ZeRO partitions, per rank)
    rng/rank-00000.pt   python, numpy, torch (and CUDA) RNG states of each rank
    trainer_state.json  step, skipped updates, the data plan's fingerprint
    COMPLETE            written last: a checkpoint without it is ignored (killed mid-save)

The data position is the optimizer step: the step plan (which samples each step takes) and the
masks are functions of (seed, step), so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reflectioncoder.chat_template import make_usable
from reflectioncoder.train import distributed
from reflectioncoder.train.distributed import DeepSpeedEngine, DistInfo, LocalEngine

COMPLETE = "COMPLETE"


def step_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under OUT/checkpoints, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / COMPLETE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_hf_model(
    model: torch.nn.Module, tokenizer: Any, state_dict: dict[str, torch.Tensor], path: Path
) -> None:
    """``model`` with weights ``state_dict`` as a Hugging Face folder (safetensors + tokenizer)."""
    path.mkdir(parents=True, exist_ok=True)
    # Our packed attention is registered at import of reflectioncoder.model; a plain
    # from_pretrained elsewhere must not need it, so the saved config names sdpa.
    if tokenizer is not None:
        make_usable(model, tokenizer)
    config = model.config
    saved_impl = config._attn_implementation
    config._attn_implementation = "sdpa"
    try:
        model.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True)
    finally:
        config._attn_implementation = saved_impl
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    engine: LocalEngine | DeepSpeedEngine,
    model: torch.nn.Module,
    tokenizer: Any,
    info: DistInfo,
    trainer_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write the checkpoint of ``step`` (every rank calls this), then prune to ``keep_last``."""
    path = step_dir(out_dir, step)
    if info.is_main and path.exists():
        shutil.rmtree(path)  # a half-written one from a killed save
    distributed.barrier()
    full = engine.full_state_dict()  # a collective under ZeRO-3: every rank calls it
    if info.is_main:
        save_hf_model(model, tokenizer, full, path / "model")
    del full
    if isinstance(engine, DeepSpeedEngine):
        engine.save(path)
    elif info.is_main:
        torch.save(engine.state_dict(), path / "optimizer.pt")
    (path / "rng").mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), path / "rng" / f"rank-{info.rank:05d}.pt")
    distributed.barrier()
    if info.is_main:
        state = dict(trainer_state, step=step, world_size=info.world_size)
        (path / "trainer_state.json").write_text(json.dumps(state, indent=2))
        (path / COMPLETE).write_text("ok\n")
        for old in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return path


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """trainer_state.json of a checkpoint (step, total_steps, tokenizer_sha256, ...)."""
    return json.loads((Path(path) / "trainer_state.json").read_text())


def load_checkpoint(
    path: str | Path,
    engine: LocalEngine | DeepSpeedEngine,
    model: torch.nn.Module,
    info: DistInfo,
) -> dict[str, Any]:
    """Restore weights, optimizer and this rank's RNG from ``path``; returns the trainer state."""
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise ValueError(f"--resume: {path} is not a complete checkpoint (no {COMPLETE} file)")
    state = read_trainer_state(path)
    if state.get("world_size", info.world_size) != info.world_size and isinstance(
        engine, DeepSpeedEngine
    ):
        raise ValueError(
            f"--resume: {path} was written by {state['world_size']} ranks, this run has "
            f"{info.world_size} (ZeRO partitions do not reshard here)"
        )
    if isinstance(engine, DeepSpeedEngine):
        engine.load(path)  # module weights and optimizer partitions
    else:
        from safetensors.torch import load_file

        weights: dict[str, torch.Tensor] = {}
        for shard in sorted((path / "model").glob("*.safetensors")):  # large models are sharded
            weights.update(load_file(str(shard), device="cpu"))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        # A tied LM head is saved once; anything else missing is a real mismatch.
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if missing or unexpected:
            raise ValueError(f"--resume: {path}/model: missing {missing}, unexpected {unexpected}")
        engine.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    rng_file = path / "rng" / f"rank-{info.rank:05d}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state
