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

Resume anywhere: trainer_state.json records the layout that wrote the checkpoint (engine, ZeRO
stage, ranks). A run of another layout (2 ranks -> 1, 1 -> 8, ZeRO-3 -> ZeRO-1, DeepSpeed -> one
process, or back) converts on load: a DeepSpeed ZeRO 1-3 checkpoint goes through DeepSpeed's
universal checkpoint conversion (``ds_to_universal``, once, kept as step-N/universal/), a ZeRO-0
one (its whole state in rank 0's file, which that tool cannot read) is read by the parameter
names saved beside it, a one-process one is read from optimizer.pt and model/, an FSDP one
from its DCP shards a parameter at a time (FSDP reads its own shards on any number of ranks);
each rank then writes its own share of every parameter's fp32 weight and AdamW state. The step
count and the data position carry over unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pickle
import random
import re
import shutil
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors import SafetensorError

from reflectioncoder.chat_template import make_usable
from reflectioncoder.errors import UsageError, UserError
from reflectioncoder.file_modes import weights_mode_like_config
from reflectioncoder.train import distributed
from reflectioncoder.train.deepspeed_engine import ZERO0_NAMES, convert_to_universal
from reflectioncoder.train.distributed import DistInfo
from reflectioncoder.train.engine import Engine, ParamState, read_weights

log = logging.getLogger("reflectioncoder.train")

COMPLETE = "COMPLETE"
UNIVERSAL = "universal"  # DeepSpeed's universal checkpoint, converted on a resume that needs it
TMP_PREFIX = ".tmp-"
# What makes a folder hold a run: a fresh launch into it is refused (--resume or --overwrite).
# metrics.jsonl counts once it holds a row: a start that stopped before its first step was
# logged (an error in the first forward, an out-of-memory, a kill) left only its start files.
RUN_MARKERS = ("checkpoints", "final", "metrics.jsonl")
LOCK_FILE = ".lock"  # held by the run training in the folder (lock_run_folder)


class RunFolderError(UserError):
    """A fresh run was launched into a folder that holds a run."""


def step_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step:06d}"


def run_markers(out_dir: str | Path) -> list[str]:
    """What in ``out_dir`` is a run's work (RUN_MARKERS): its checkpoints (a torn save too),
    its final model, a metrics.jsonl with a row. None: nothing a fresh start would replace."""
    out_dir = Path(out_dir)
    return [m for m in RUN_MARKERS if _holds_work(out_dir / m)]


def _holds_work(path: Path) -> bool:
    if path.name != "metrics.jsonl" or not path.is_file():
        return path.exists()
    with path.open("rb") as file:  # any byte but blanks: a row, even a torn one, is kept
        while chunk := file.read(1 << 16):
            if chunk.strip():
                return True
    return False


def check_run_folder(out_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse a fresh launch into ``out_dir`` when it holds a run (``run_markers``), and a
    folder that cannot be written, touching nothing: found at start, not after the model has
    loaded. A run that never logged a step and saved nothing is started again."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError("is a file; give a folder", file=out_dir, field="checkpoint.out_dir")
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot be written ({existing} is read-only to this user)",
            file=out_dir,
            field="checkpoint.out_dir",
        )
    found = run_markers(out_dir)
    if found and not (resume or overwrite):
        raise RunFolderError(
            f"{out_dir} already holds a run ({', '.join(found)}); pass --resume to continue "
            "it or --overwrite to start over (deletes it)",
            field="checkpoint.out_dir",
        )


def lock_run_folder(out_dir: str | Path, announce: bool = True) -> IO[str]:
    """Hold OUT/.lock while the run lives (the OS lets go when the process ends): a second
    launch into the folder, a job submitted twice, stops here instead of interleaving its
    metrics and checkpoints with this run's. Returns the open lock file; close it to let go.
    ``announce``: write this process into it now (else ``announce_holder`` does, once the run
    writes its folder: a start that fails changes no file of an existing run)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = (out_dir / LOCK_FILE).open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(
            f"{holder} is training in this folder; wait for it to end or choose another folder",
            file=out_dir,
            field="checkpoint.out_dir",
        ) from None
    except OSError as err:  # no locks on this filesystem (Lustre without -o flock: ENOSYS)
        log.warning(
            "%s: not locked (the filesystem refuses flock: %s): a second launch into this "
            "folder will not be stopped",
            out_dir,
            err.strerror or err,
        )
    if announce:
        announce_holder(handle)
    return handle


def announce_holder(handle: IO[str]) -> None:
    """Write this process into the held lock file (what a second launch is told)."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()


def release_lock(handle: IO[str], made: bool) -> None:
    """Let go of OUT/.lock. One this launch ``made`` and never wrote into (a ``--resume`` that
    failed before the run was named in it) is removed: the folder is left as it was."""
    if made and os.fstat(handle.fileno()).st_size == 0:
        Path(handle.name).unlink(missing_ok=True)  # while still held: no launch took it meanwhile
    handle.close()


def clear_run_folder(out_dir: str | Path) -> None:
    """--overwrite: remove the previous run's checkpoints, final model and metrics."""
    out_dir = Path(out_dir)
    for name in (*RUN_MARKERS, "tensorboard", "wandb", "mlruns", "loss.png"):
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


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
            _replace_dir(tmp, path)  # rank 0 alone: another rank's rename would find no tmp
            prune_checkpoints(out_dir, keep_last, keep=path)
    distributed.barrier()
    return path


ARCHITECTURE = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
)


def check_same_model(path: Path, config: Any) -> None:
    """--resume from ``path`` needs the model it trained: the shapes in its model/config.json
    against this run's model ``config``, before anything is written or loaded into it."""
    saved_file = Path(path) / "model" / "config.json"
    if not saved_file.is_file():
        return
    saved, current = json.loads(saved_file.read_text()), config.to_dict()
    changed = [
        f"{key} {saved[key]} -> {current.get(key)}"
        for key in ARCHITECTURE
        if key in saved and saved[key] != current.get(key)
    ]
    if changed:
        raise UserError(
            f"its model is not this config's ({', '.join(changed)}): resume with the model it "
            "was trained with (model.arch, model.name_or_path)",
            file=path,
            field="--resume",
        )


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
    _replace_dir(tmp, final)
    return final


@contextlib.contextmanager
def _refused_write(tmp: Path, home: Path) -> Iterator[None]:
    """A save the disk refuses (full, read-only, over quota): one line naming where it was going,
    and its partial folder removed, which gives back the space it took; what was saved before
    is untouched."""
    try:
        yield
    except BaseException as caught:  # DCP's CheckpointException is one (FSDP's shards)
        err = _disk_error(caught)
        if err is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UserError(
            f"not saved: {reason}; what was saved before is untouched",
            file=home,
            field="checkpoint.out_dir",
        ) from caught


def _disk_error(err: BaseException) -> OSError | SafetensorError | None:
    """The disk's refusal in ``err``: itself, or the first one DCP's CheckpointException wraps
    (it gathers each rank's error of an FSDP save); None for any other error."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict):
        err = next(
            (e for e, _ in failures.values() if isinstance(e, OSError | SafetensorError)), err
        )
    return err if isinstance(err, OSError | SafetensorError) else None


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
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: str | Path, engine: Engine, info: DistInfo) -> dict[str, Any]:
    """Restore weights, optimizer and this rank's RNG from ``path``; returns the trainer state."""
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise ValueError(f"--resume: {path} is not a complete checkpoint (no {COMPLETE} file)")
    state = read_trainer_state(path)
    if state.get("model_only"):
        raise ValueError(
            f"--resume: {path} holds the model only (checkpoint.model_only): no optimizer "
            "state to continue from"
        )
    saved, current = saved_layout(path, state), engine.layout()
    _check_rank_files(path, saved)
    with _damaged(path):
        if needs_conversion(saved, current):
            if info.is_main:
                changes = "; ".join(_flag_changes(saved, current))
                log.info(
                    "--resume: %s was written by %s; this run is %s%s: converting its state",
                    path,
                    describe_layout(saved),
                    describe_layout(current),
                    f" ({changes})" if changes else "",
                )
            engine.load_param_states(_state_reader(path, saved, info, current))
        else:
            engine.load_state(path)
        rng_file = path / "rng" / f"rank-{info.rank:05d}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
    return state


def _check_rank_files(path: Path, saved: dict[str, Any]) -> None:
    """A DeepSpeed ZeRO checkpoint holds one optimizer file per rank that wrote it; one missing
    (a copy that left some out, another node's local disk) is one line naming the ranks, not
    DeepSpeed's error or a conversion of half the state."""
    ranks, folder = saved.get("world_size"), path / "deepspeed"
    if saved["engine"] != "deepspeed" or not saved["zero_stage"] or not ranks:
        return
    missing = [
        r
        for r in range(ranks)
        if not any(folder.glob(f"*zero_pp_rank_{r}_mp_rank_*optim_states.pt"))
    ]
    if missing:
        earlier = [p for p in list_checkpoints(path.parent.parent) if p.name < path.name]
        hint = f"; or an earlier one: --resume {earlier[-1]}" if earlier else ""
        raise UserError(
            f"holds no optimizer state of rank(s) {missing} of the {ranks} that wrote it (no "
            f"deepspeed/*zero_pp_rank_{missing[0]}_mp_rank_00_optim_states.pt): copy those files "
            f"into {folder} (a node-local disk holds its own ranks' files){hint}",
            file=path,
            field="--resume",
        )


@contextlib.contextmanager
def _damaged(path: Path) -> Iterator[None]:
    """A checkpoint whose files cannot be read (damaged on disk, truncated by a copy): one line
    naming it and the complete checkpoints before it, instead of torch's reader error."""
    try:
        yield
    except (pickle.UnpicklingError, EOFError, SafetensorError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "PytorchStreamReader" not in str(err):
            raise  # not a file torch could not read
        earlier = [p for p in list_checkpoints(path.parent.parent) if p.name < path.name]
        hint = f"; an earlier one: --resume {earlier[-1]}" if earlier else ""
        reason = str(err).splitlines()[0].split(". ")[0]  # torch's first sentence
        raise UserError(
            f"cannot be read, a file in it is damaged ({reason}){hint}",
            file=path,
            field="--resume",
        ) from err


# ---------------------------------------------------------------------------------------------
# Layouts, and reading a checkpoint of another layout one parameter at a time.


def saved_layout(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """The layout a checkpoint records (checkpoints from before it was recorded: inferred)."""
    if "layout" in state:
        return state["layout"]
    engine = "deepspeed" if (path / "deepspeed").is_dir() else "single"
    return {"engine": engine, "zero_stage": None, "world_size": state.get("world_size")}


def needs_conversion(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """False when the checkpoint loads natively (one-process state is whole on every rank;
    DeepSpeed's partitions only into the same ranks and stage)."""
    if saved["engine"] != current["engine"]:
        return True
    if saved["engine"] in ("single", "fsdp"):  # FSDP's DCP shards load on any ranks
        return False
    stage_known = saved["zero_stage"] is not None
    return (
        saved["world_size"] != current["world_size"]
        or (stage_known and saved["zero_stage"] != current["zero_stage"])
        or bool(_flag_changes(saved, current))
    )


# Layout flags a DeepSpeed checkpoint records only when set (one without had it off): its
# optimizer (CPU Adam) or its files' names (a bf16 run's) differ with each, so a change converts
_FLAGS = ("offload_optimizer", "bf16")


def _flag_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [
        f"{key} there: {saved.get(key, False)}, here: {current.get(key, False)}"
        for key in _FLAGS
        if saved.get(key, False) != current.get(key, False)
    ]


def describe_layout(layout: dict[str, Any]) -> str:
    ranks = f"{layout['world_size']} rank(s)"
    if layout["engine"] == "single":
        return f"the single engine on {ranks}"
    if layout["engine"] == "fsdp":
        return f"FSDP2 on {ranks}"
    stage = "?" if layout["zero_stage"] is None else layout["zero_stage"]
    return f"DeepSpeed ZeRO-{stage} on {ranks}"


def _state_reader(
    path: Path, saved: dict[str, Any], info: DistInfo, current: dict[str, Any] | None = None
):
    """``read(name, shape) -> ParamState`` over a checkpoint of another layout (``current``:
    the resuming run's, for what a refusal says)."""
    if saved["engine"] == "deepspeed":
        if saved["zero_stage"] == 0:  # no ZeRO partitions: its whole state, rank 0's file
            return _zero0_reader(path, saved, current)
        folder = path / UNIVERSAL
        if info.is_main and not (folder / "zero").is_dir():
            tmp = path / (TMP_PREFIX + UNIVERSAL)
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                convert_to_universal(path / "deepspeed", tmp)
            except BaseException:  # a conversion that fails leaves the checkpoint as it was
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            tmp.rename(folder)
        distributed.barrier()
        return _universal_reader(folder / "zero")
    if saved["engine"] == "fsdp":
        return _fsdp_reader(path)
    return _single_reader(path)


def _universal_reader(zero: Path):
    """DeepSpeed's universal layout: zero/NAME/{fp32,exp_avg,exp_avg_sq[,step]}.pt."""
    common = torch.load(zero / "optimizer_state.pt", map_location="cpu", weights_only=False)
    # ZeRO-3 keeps the step counts here; ZeRO 1-2 in each parameter's step.pt.
    group_states = common.get("optimizer_state_dict", {}).get("state", {})
    default_step = max((float(v["step"]) for v in group_states.values() if "step" in v), default=0)

    def load(folder: Path, key: str, shape: torch.Size) -> torch.Tensor | None:
        file = folder / f"{key}.pt"
        if not file.is_file():
            return None
        value = torch.load(file, map_location="cpu", weights_only=False)
        value = value["param"] if isinstance(value, dict) else value  # ZeRO 1-2 | ZeRO-3
        return value.float().reshape(shape)

    def read(name: str, shape: torch.Size) -> ParamState:
        folder = zero / name
        weight = load(folder, "fp32", shape)
        if weight is None:
            raise ValueError(f"--resume: {zero.parent} holds no state for parameter {name}")
        step = folder / "step.pt"
        moments = [load(folder, key, shape) for key in ("exp_avg", "exp_avg_sq")]
        moments = [torch.zeros(shape) if m is None else m for m in moments]  # never stepped
        return ParamState(
            weight,
            *moments,
            float(torch.load(step, weights_only=False)) if step.is_file() else default_step,
        )

    return read


def _fsdp_reader(path: Path):
    """FSDP's DCP shards (fsdp/), read one parameter at a time by each rank on its own (DCP
    reassembles the full tensors from every rank's shards): no rank holds more than one
    parameter's state (at 7B, never the 84 GB of the whole fp32 state)."""
    import torch.distributed.checkpoint as dcp

    from reflectioncoder.train.fsdp_engine import FSDP_DIR

    folder = str(path / FSDP_DIR)
    saved = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata

    def read(name: str, shape: torch.Size) -> ParamState:
        if f"model.{name}" not in saved:
            raise ValueError(f"--resume: {path} holds no state for parameter {name}")
        moments = {k: torch.zeros(shape) for k in ("exp_avg", "exp_avg_sq")}
        adam = {k: v for k, v in moments.items() if f"optim.state.{name}.{k}" in saved}
        if f"optim.state.{name}.step" in saved:
            adam["step"] = torch.zeros(())
        state = {"model": {name: torch.empty(shape)}, "optim": {"state": {name: adam}}}
        with warnings.catch_warnings():  # no_dist's "loading in a single process": meant
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(state, checkpoint_id=folder, no_dist=True)
        moments |= adam
        return ParamState(
            state["model"][name], moments["exp_avg"], moments["exp_avg_sq"],
            float(adam.get("step", 0)),
        )  # fmt: skip

    return read


def _single_reader(path: Path):
    """A one-process checkpoint: optimizer.pt (AdamW by name, and the fp32 masters of 16-bit
    weights) and model/ (the weights, fp32 where the run kept no masters)."""
    saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    if "names" not in saved:
        raise ValueError(
            f"--resume: {path} predates resuming on another layout; resume it as it was saved "
            "(the single engine), then save again"
        )
    weights = {f"model.{k}": v for k, v in read_weights(path / "model").items()}
    masters = dict(zip(saved.get("master_names", []), saved.get("fp32_masters", []), strict=True))
    return _whole_reader(path, saved["optimizer"], saved["names"], weights, masters)


def _zero0_reader(path: Path, saved: dict[str, Any], current: dict[str, Any] | None):
    """A DeepSpeed ZeRO-0 checkpoint: rank 0's model states (every rank's state is whole):
    its weights, its AdamW state (by ``ZERO0_NAMES``) and, in 16 bits, the fp32 masters its
    ``FP16_UnfusedOptimizer`` stepped."""
    folder = path / "deepspeed"
    if not (folder / ZERO0_NAMES).is_file():
        raise UserError(
            f"was written by {describe_layout(saved)} before such checkpoints named their "
            "parameters, so it cannot be resumed as "
            f"{describe_layout(current) if current else 'another layout'}; resume it with "
            "distributed.backend=deepspeed distributed.zero_stage=0 on "
            f"{saved['world_size']} rank(s), or start a new run from its weights "
            f"(--set model.name_or_path={path / 'model'})",
            file=path,
            field="--resume",
        )
    names = json.loads((folder / ZERO0_NAMES).read_text())
    model_states = folder / "mp_rank_00_model_states.pt"
    states = torch.load(model_states, map_location="cpu", weights_only=False)
    optimizer = states["optimizer"]
    masters = [m for group in optimizer.get("fp32_groups", []) for m in group]
    adam = optimizer.get("optimizer_state_dict", optimizer)
    by_name = dict(zip(names, masters, strict=True)) if masters else {}
    return _whole_reader(path, adam, names, states["module"], by_name)


def _whole_reader(
    path: Path,
    adam: dict[str, Any],
    names: list[str],
    weights: dict[str, torch.Tensor],
    masters: dict[str, torch.Tensor],
):
    """``read`` over a whole (unpartitioned) state: AdamW's state_dict ``adam`` whose indices
    are ``names``, the weights by the loss module's names, the fp32 masters of 16-bit weights
    (the weights saved are rounded)."""
    by_name = {name: adam["state"].get(i) for i, name in enumerate(names)}

    def read(name: str, shape: torch.Size) -> ParamState:
        if name not in weights or name not in by_name:
            raise ValueError(f"--resume: {path} holds no state for parameter {name}")
        state = by_name[name] or {}
        zeros = torch.zeros(shape)
        weight = masters.get(name, weights[name])
        return ParamState(
            weight.float().reshape(shape),
            state.get("exp_avg", zeros).float().reshape(shape),
            state.get("exp_avg_sq", zeros).float().reshape(shape),
            float(state.get("step", 0)),
        )

    return read
