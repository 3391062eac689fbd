"""Loading a checkpoint back into the engine (``load_checkpoint``): natively when this run's
layout wrote it, else converted one parameter at a time.

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
import json
import logging
import pickle
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from reflectioncoder.errors import UserError
from reflectioncoder.train import distributed
from reflectioncoder.train.checkpoint import (
    COMPLETE,
    TMP_PREFIX,
    list_checkpoints,
    read_trainer_state,
    set_rng_state,
)
from reflectioncoder.train.checkpoint_files import damage
from reflectioncoder.train.deepspeed_engine import ZERO0_NAMES, convert_to_universal
from reflectioncoder.train.distributed import DistInfo
from reflectioncoder.train.engine import Engine, ParamState, read_weights

log = logging.getLogger("reflectioncoder.train")

UNIVERSAL = "universal"  # DeepSpeed's universal checkpoint, converted on a resume that needs it


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
    why = damage(path)  # what `reflectioncoder runs` lists as damaged, found before any load
    if why:
        raise UserError(
            f"cannot be read, a file in it is damaged ({why}){_earlier(path)}",
            file=path,
            field="--resume",
        )
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
        raise UserError(
            f"holds no optimizer state of rank(s) {missing} of the {ranks} that wrote it (no "
            f"deepspeed/*zero_pp_rank_{missing[0]}_mp_rank_00_optim_states.pt): copy those files "
            f"into {folder} (a node-local disk holds its own ranks' files)"
            f"{_earlier(path, 'or an earlier one')}",
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
        reason = str(err).splitlines()[0].split(". ")[0]  # torch's first sentence
        raise UserError(
            f"cannot be read, a file in it is damaged ({reason}){_earlier(path)}",
            file=path,
            field="--resume",
        ) from err


def _earlier(path: Path, words: str = "an earlier one") -> str:
    """``; an earlier one: --resume STEP`` naming the complete checkpoint before ``path``."""
    earlier = [p for p in list_checkpoints(path.parent.parent) if p.name < path.name]
    return f"; {words}: --resume {earlier[-1]}" if earlier else ""


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
