"""Checkpoints: a Hugging Face model folder plus everything a killed run needs to continue.

OUT/checkpoints/step-000120/
    model/              config.json, model.safetensors, tokenizer (with the special tokens):
                        loadable by AutoModelForCausalLM.from_pretrained as is
    optimizer.pt        AdamW state (single process), or deepspeed/ (ZeRO partitions, per rank),
                        or fsdp/ (FSDP2's shards: torch.distributed.checkpoint, any ranks read)
    rng/rank-00000.pt   python, numpy, torch (and CUDA) RNG states of each rank
    trainer_state.json  step, skipped updates, the data plan's fingerprint, model_only
    COMPLETE            written last

A checkpoint is written under OUT/checkpoints/.tmp-step-000120 and renamed to step-000120 only
once complete, so a kill during a save leaves the previous checkpoints as they were (the torn
temporary folder is removed by the next save). ``checkpoint.model_only`` writes model/ and
trainer_state.json only (the authors' --save_only_model: a tenth of the bytes, not resumable).
Pruning to ``keep_last`` never deletes the checkpoint just written.

The data position is the optimizer step: the step plan (which samples each step takes) and the
masks are functions of (seed, step), so a resumed run sees exactly the batches it would have.

Loading one back, natively or from another layout: ``restore.py``; the run folder it lives in
(its lock, what makes it hold a run): ``run_folder.py``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from reflectioncoder.chat_template import make_usable
from reflectioncoder.errors import UserError
from reflectioncoder.file_modes import weights_mode_like_config
from reflectioncoder.model_config import WEIGHT_SHAPES
from reflectioncoder.train import distributed
from reflectioncoder.train.distributed import DistInfo
from reflectioncoder.train.engine import Engine

log = logging.getLogger("reflectioncoder.train")

COMPLETE = "COMPLETE"
TMP_PREFIX = ".tmp-"


def step_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under OUT/checkpoints, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if step_of(p) is not None and (p / COMPLETE).is_file()]
    return sorted(done, key=step_of)


def step_of(path: Path) -> int | None:
    """The step of a checkpoint folder's name (``step-000120``: 120); None for any other name
    (a user's copy, ``step-000120.bak``, is not a checkpoint of the run)."""
    match = re.fullmatch(r"(?:\.tmp-)?step-(\d+)", path.name)
    return int(match.group(1)) if match else None


def is_resumable(path: Path) -> bool:
    return not read_trainer_state(path).get("model_only", False)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete, resumable (not model-only) checkpoint, or None."""
    for path in reversed(list_checkpoints(out_dir)):
        if is_resumable(path):  # a damaged one stops here, naming the one before it
            return path
    return None


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
    model: torch.nn.Module,
    tokenizer: Any,
    state_dict: dict[str, torch.Tensor],
    path: Path,
    card: str | None = None,
) -> None:
    """``model`` with weights ``state_dict`` as a Hugging Face folder (safetensors + tokenizer,
    and the model card ``card`` as README.md)."""
    path.mkdir(parents=True, exist_ok=True)
    # Our packed attention is registered at import of reflectioncoder.model; a plain
    # from_pretrained elsewhere must not need it, so the saved config names sdpa.
    if tokenizer is not None:
        make_usable(model, tokenizer)
    config = model.config
    saved_impl = config._attn_implementation
    config._attn_implementation = "sdpa"
    # save_pretrained names the module's dtype: FSDP's are its fp32 masters, the weights saved
    # are bf16 (a loader's dtype="auto", vLLM, would take them as fp32); it empties state_dict
    saved = next((v.dtype for v in state_dict.values() if v.is_floating_point()), None)
    try:
        model.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True)
        if saved is not None and config.dtype != saved:
            config.dtype = saved
            config.save_pretrained(str(path))
    finally:
        config._attn_implementation = saved_impl
    weights_mode_like_config(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    if card is not None:
        (path / "README.md").write_text(card, encoding="utf-8")


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    engine: Engine,
    model: torch.nn.Module,
    tokenizer: Any,
    info: DistInfo,
    trainer_state: dict[str, Any],
    keep_last: int,
    model_only: bool = False,
    card: str | None = None,
) -> Path:
    """Write the checkpoint of ``step`` (every rank calls this) under a temporary name, rename
    it when complete, then prune to ``keep_last`` (never the one just written)."""
    path = step_dir(out_dir, step)
    tmp = path.with_name(TMP_PREFIX + path.name)
    if info.is_main:
        _clear_torn_saves(path.parent)
    distributed.barrier()
    full = engine.full_state_dict()  # a collective under ZeRO-3: every rank calls it
    with _refused_write(tmp, path):
        if info.is_main:
            save_hf_model(model, tokenizer, full, tmp / "model", card)
        del full
        if not model_only:
            engine.save_state(tmp)
            (tmp / "rng").mkdir(parents=True, exist_ok=True)
            torch.save(rng_state(), tmp / "rng" / f"rank-{info.rank:05d}.pt")
        sync_to_disk(tmp)  # each rank: what its node wrote (a node-local disk holds its own)
        distributed.barrier()
        if info.is_main:
            state = dict(
                trainer_state,
                step=step,
                world_size=info.world_size,
                layout=engine.layout(),
                model_only=model_only,
            )
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            (tmp / COMPLETE).write_text("ok\n")
            sync_to_disk(tmp, files=("trainer_state.json", COMPLETE))
            _replace_dir(tmp, path)  # rank 0 alone: another rank's rename would find no tmp
            prune_checkpoints(out_dir, keep_last, keep=path)
    distributed.barrier()
    return path


def check_same_model(path: Path, config: Any) -> None:
    """--resume from ``path`` needs the model it trained: the shapes in its model/config.json
    (``model_config.WEIGHT_SHAPES``, by the names the config uses) against this run's model
    ``config``, before anything is written or loaded into it."""
    saved_file = Path(path) / "model" / "config.json"
    if not saved_file.is_file():
        return
    saved, current = json.loads(saved_file.read_text()), config.to_dict()
    named = getattr(config, "attribute_map", {})  # GPT-2's config.json says n_embd, n_layer
    keys = ["model_type", *(named.get(name, name) for name in WEIGHT_SHAPES)]
    changed = [
        f"{key} {saved[key]} -> {current.get(key)}"
        for key in keys
        if key in saved and saved[key] != current.get(key)
    ]
    if changed:
        raise UserError(
            f"its model is not this config's ({', '.join(changed)}): resume with the model it "
            "was trained with (model.arch, model.name_or_path)",
            file=path,
            field="--resume",
        )


def run_threads(path: Path | None) -> int | None:
    """The CPU threads per rank the run of the checkpoint at ``path`` trained with (None: no
    checkpoint, or one saved before the number was recorded)."""
    threads = read_trainer_state(path).get("threads") if path is not None else None
    return threads if isinstance(threads, int) and threads >= 1 else None


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """trainer_state.json of a checkpoint (step, total_steps, tokenizer_sha256, ...); a damaged
    one is one line naming it and the complete checkpoint before it."""
    file = Path(path) / "trainer_state.json"
    try:
        return json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        run = file.parent.parent.parent
        earlier = [p for p in list_checkpoints(run) if p.name < file.parent.name]
        hint = f"; an earlier one: --resume {earlier[-1]}" if earlier else ""
        raise UserError(
            f"damaged ({err.msg if isinstance(err, json.JSONDecodeError) else err.reason}){hint}",
            file=file,
            field="--resume",
        ) from err


def save_final_model(
    model: torch.nn.Module,
    tokenizer: Any,
    state_dict: dict[str, torch.Tensor],
    out_dir: Path,
    card: str | None = None,
) -> Path:
    """OUT/final, written beside it and renamed into place: Ctrl-C or a kill during the save
    leaves the previous OUT/final (or none), never half a model."""
    tmp = Path(out_dir) / (TMP_PREFIX + "final")
    shutil.rmtree(tmp, ignore_errors=True)
    final = Path(out_dir) / "final"
    with _refused_write(tmp, final):
        save_hf_model(model, tokenizer, state_dict, tmp, card)
        sync_to_disk(tmp)
    _replace_dir(tmp, final)
    return final


def sync_to_disk(folder: Path, files: tuple[str, ...] | None = None) -> None:
    """``files`` of ``folder`` (None: every file under it) and the folder itself flushed to
    disk (fsync) before the rename that makes a save complete. Without it a node lost after the
    rename (a power cut, a preempted VM) could leave the renamed checkpoint's files empty or cut
    short, after pruning had deleted the ones before it: the run lost. A write the disk refuses
    only now (NFS, a quota) is raised here, inside the save's one-line refusal."""
    if files is None:
        for root, _, names in os.walk(folder):
            for name in names:
                # another rank's file renamed away mid-walk (safetensors writes through a
                # temporary file): that rank syncs it
                with contextlib.suppress(FileNotFoundError):
                    _fsync(Path(root) / name)
            _fsync(Path(root))
        return
    for name in files:
        _fsync(folder / name)
    _fsync(folder)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # a folder on a filesystem that cannot sync one: its files are
        if not path.is_dir() or err.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def _refused_write(tmp: Path, home: Path) -> Iterator[None]:
    """A save the disk refuses (full, read-only, over quota): one line naming where it was going
    and what to run once the disk takes it, and its partial folder removed, which gives back
    the space it took; what was saved before is untouched."""
    try:
        yield
    except BaseException as caught:  # DCP's CheckpointException is one (FSDP's shards)
        err = _disk_error(caught, tmp)
        if err is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UserError(
            f"not saved: {reason}; {_what_then(home, err)}",
            file=home,
            field="checkpoint.out_dir",
        ) from caught


def _what_then(home: Path, err: OSError | SafetensorError) -> str:
    """What the user runs once the disk takes the save: where --resume continues from (it said
    "what was saved before is untouched" also where nothing had been saved)."""
    from reflectioncoder.train.runs import newest_resumable

    full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
        f"os error {code}" in str(err) for code in (errno.ENOSPC, errno.EDQUOT)
    )  # safetensors says the OS's error in its text
    fix = "make room, then" if full else "once the disk takes writes,"
    newest = newest_resumable(
        home.parent.parent if home.parent.name == "checkpoints" else home.parent
    )
    if newest is None:
        return (f"no checkpoint was saved before it: {fix} the same command with "
                "--resume starts the run again from step 0")  # fmt: skip
    return (f"the checkpoints before it are whole: {fix} the same command with --resume "
            f"continues from {newest}")  # fmt: skip


# torch.save's zip writer on a failed write (a full disk): RuntimeErrors, not OSError
TORCH_WRITE_FAILED = ("iostream error", "unexpected pos", "PytorchStreamWriter failed")


def _disk_error(err: BaseException, folder: Path) -> OSError | SafetensorError | None:
    """The disk's refusal in ``err``: itself, or the first one DCP's CheckpointException wraps
    (it gathers each rank's error of an FSDP save), or torch.save's failed write into
    ``folder`` (a full disk: said as ENOSPC when the disk has no room left); None for any other
    error."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict):
        err = next(
            (e for e, _ in failures.values() if isinstance(e, OSError | SafetensorError)), err
        )
    if isinstance(err, RuntimeError) and any(m in str(err) for m in TORCH_WRITE_FAILED):
        full = _free_bytes(folder) == 0
        return OSError(errno.ENOSPC if full else errno.EIO,
                       os.strerror(errno.ENOSPC) if full else f"write failed ({err})")  # fmt: skip
    return err if isinstance(err, OSError | SafetensorError) else None


def _free_bytes(folder: Path) -> int | None:
    """Bytes this user may still write where ``folder`` is (None: unknown)."""
    for place in (folder, *folder.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(place).free
    return None


def prune_checkpoints(out_dir: str | Path, keep_last: int, keep: Path) -> None:
    """Delete the oldest checkpoints but ``keep_last`` (``keep`` among them). Each is renamed
    out of ``list_checkpoints``' sight before its files go: a Ctrl-C during the deletion left a
    folder with COMPLETE but no model listed as complete (the next save clears the rest)."""
    others = [p for p in list_checkpoints(out_dir) if p != keep]
    for old in others[: max(0, len(others) - (keep_last - 1))]:
        doomed = old.with_name(TMP_PREFIX + "pruned-" + old.name)
        old.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def _clear_torn_saves(root: Path) -> None:
    """Remove what a save killed midway left; a moved-aside complete copy whose replacement
    never landed is put back."""
    for torn in root.glob(TMP_PREFIX + "*"):
        if torn.name.startswith(TMP_PREFIX + "old-"):
            home = root / torn.name[len(TMP_PREFIX + "old-") :]
            if not home.exists():
                torn.rename(home)
                continue
        shutil.rmtree(torn)


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` (the same step saved again) is moved aside
    first and removed only after the rename, so one complete copy exists at every moment."""
    old = dst.with_name(TMP_PREFIX + "old-" + dst.name)
    if dst.exists():
        dst.rename(old)
    try:
        src.rename(dst)
    except BaseException:
        if old.exists():  # the complete copy goes back where --resume looks
            old.rename(dst)
        raise
    _fsync(dst.parent)  # the rename itself on disk before an older copy is deleted
    shutil.rmtree(old, ignore_errors=True)
