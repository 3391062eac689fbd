"""Process groups and engines: the ONLY module that imports DeepSpeed.

Three engines behind one interface, ``Engine`` (the step: ``backward``, ``finish_step``,
``set_lr``; the state and its layout: ``save_state``, ``load_state``, ``layout``, ...):
- ``LocalEngine``: plain PyTorch AdamW, one process (or several under torchrun, wrapped in
  torch's DDP: gradients summed in buckets during the backward), global-norm clipping,
  non-finite updates skipped;
- ``DeepSpeedEngine``: DeepSpeed ZeRO 0-3, launched by ``deepspeed`` or ``torchrun`` (both set
  RANK / WORLD_SIZE / LOCAL_RANK), multi-node; gloo on CPU, NCCL on GPU;
- ``FSDPEngine`` (train/fsdp_engine.py): torch's FSDP2, fp32 shards of masters, gradients and
  AdamW states, bf16 weights gathered per layer.

All expect the loss of a micro-batch to be a SUM whose weights already carry the step's global
normalisation (the data room computes them across all ranks' micro-batches), so gradients are
summed over ranks, never averaged: DeepSpeed averages, so its losses are scaled by the world size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from reflectioncoder.config import DistributedConfig, OptimConfig, RunConfig
from reflectioncoder.errors import ConfigError


@dataclass
class DistInfo:
    """Where this process sits: its rank, the world, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    deepspeed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError as err:
        raise ValueError(f"environment {name}: expected an int, got {value!r}") from err


def setup(cfg: DistributedConfig, device: str = "auto") -> DistInfo:
    """Read the launcher's environment, pick the device, start the process group if needed."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: cuda requested but torch.cuda.is_available() is False")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    use_ds = cfg.backend == "deepspeed" or (cfg.backend == "auto" and world > 1)
    grouped = world > 1 or use_ds or cfg.backend == "fsdp"
    if grouped and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        timeout = datetime.timedelta(minutes=cfg.timeout_minutes)
        if world == 1:  # DeepSpeed or FSDP in one process without a launcher: a group of one
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
                os.environ.setdefault(key, value)
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        if use_ds:
            import deepspeed

            deepspeed.init_distributed(
                dist_backend=backend, auto_mpi_discovery=False, timeout=timeout
            )
        else:
            dist.init_process_group(backend, timeout=timeout)
    return DistInfo(rank, world, local_rank, dev, use_ds)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(local_ranks: int) -> int:
    """torch threads per rank: this machine's cores shared among its ranks, less the cores other
    programs keep busy. On 2 busy cores, 2 threads made a tiny-model step 19-72x slower than 1
    (bench/RESULTS.md): threads that wait for a core spin, they do not help."""
    cores = usable_cores()
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(cores // max(1, local_ranks), cores - busy))


def set_threads(requested: int | None, local_ranks: int) -> int:
    """Apply ``train.threads`` (None: ``default_threads``); returns the number set."""
    threads = requested if requested is not None else default_threads(local_ranks)
    torch.set_num_threads(threads)
    return threads


def shutdown() -> None:
    """Destroy the process group this module started (a no-op for one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op for one process); returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (host objects: paths, plans)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def is_zero3_param(param: torch.nn.Parameter) -> bool:
    """True for a parameter partitioned by ZeRO-3 (its full data lives on no single rank)."""
    return hasattr(param, "ds_id")


@contextlib.contextmanager
def gathered_params(
    params: torch.nn.Parameter | list[torch.nn.Parameter], modifier_rank: int | None = 0
) -> Iterator[None]:
    """Inside the block, ZeRO-3 partitioned ``params`` are whole on every rank.

    With ``modifier_rank`` set, that rank's in-place edits are broadcast and re-partitioned on
    exit (e.g. mean-initialising new embedding rows); ``None`` gathers for reading only. Without
    ZeRO-3 it does nothing, so callers need not know how the model is sharded.
    """
    plist = [params] if isinstance(params, torch.nn.Parameter) else list(params)
    if not any(is_zero3_param(p) for p in plist):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(plist, modifier_rank=modifier_rank):
        yield


@contextlib.contextmanager
def zero3_partitioning(run: RunConfig, info: DistInfo) -> Iterator[None]:
    """Inside, each module's parameters are partitioned over the ranks as it is built, holding
    no values yet (``zero3_load.load_model_into_partitions`` reads them next). DeepSpeed's broadcast
    of rank 0's values is skipped: it would make every parameter whole on every rank for a
    moment. The whole tensors, never written, are never resident."""
    import deepspeed
    from transformers.modeling_utils import set_zero3_state

    try:  # transformers >= 5.2x: RoPE's buffers keep their dtype under zero.Init
        from transformers.integrations.deepspeed import prevent_arange_dtype_change
    except ImportError:
        prevent_arange_dtype_change = contextlib.nullcontext

    class EmptyPartitions(deepspeed.zero.Init):
        def _zero_init_param(self, param: torch.nn.Parameter) -> None:
            self._convert_to_deepspeed_param(param)  # as DeepSpeed's, less the broadcast
            param.partition()

    with (
        prevent_arange_dtype_change(),
        EmptyPartitions(config_dict_or_path=deepspeed_config(run, info)),
        set_zero3_state(),  # tells transformers a zero.Init is open: it must not open its own
    ):
        yield


def zero3_local_piece(param: torch.nn.Parameter) -> tuple[torch.Tensor, int]:
    """This rank's piece of a ZeRO-3 parameter (1-D) and where it starts in the flattened
    parameter: rank r holds elements [r * n, (r + 1) * n), the last rank's padded past the end."""
    piece = param.ds_tensor
    return piece, piece.ds_numel * param.ds_zero_partition_rank


def uses_zero3(run: RunConfig, info: DistInfo) -> bool:
    return info.deepspeed and _zero_stage(run) == 3


def zero3_transformers_config(run: RunConfig, info: DistInfo) -> Any:
    """Under ZeRO-3 with a model loaded from disk, transformers' DeepSpeed integration object
    (``HfDeepSpeedConfig``). A checkpoint that is not safetensors needs it: while it lives,
    ``from_pretrained`` builds the model under ``deepspeed.zero.Init``, rank 0 loads each
    module's weights into the partitions (gathering it), and ``resize_token_embeddings``
    gathers and re-partitions. Keep it alive as long as the model. (Safetensors checkpoints
    load through ``zero3_partitioning`` and ``zero3_local_piece`` without gathering.) None
    otherwise: a small model built from ``model.arch`` (tests, demo) is built whole, so that its
    random init equals one process's, and ``deepspeed.initialize`` partitions it."""
    if not uses_zero3(run, info) or run.model.name_or_path is None:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(deepspeed_config(run, info))


# ---------------------------------------------------------------------------------------------
# DeepSpeed JSON: the reference's format, "auto" values filled from our config.


def _user_json(run: RunConfig) -> dict[str, Any]:
    path = run.distributed.deepspeed_config
    return json.loads(Path(path).read_text()) if path else {}


def _zero_stage(run: RunConfig) -> int:
    stage = _user_json(run).get("zero_optimization", {}).get("stage", "auto")
    return run.distributed.zero_stage if stage == "auto" else int(stage)


# The DeepSpeed JSON optimizer section's params we honour (-> OptimConfig field), and those
# that change nothing here (which implementation runs is ours to choose).
_OPTIM_PARAMS = {"lr": "lr", "betas": "betas", "eps": "eps", "weight_decay": "weight_decay"}
_IMPLEMENTATION_PARAMS = ("torch_adam", "fused", "adam_w_mode")


def optim_with_deepspeed_section(run: RunConfig) -> OptimConfig:
    """``run.optim`` with the DeepSpeed JSON's optimizer section applied: an Adam/AdamW section's
    explicit params (lr, betas, eps, weight_decay) win over the config's, "auto" keeps ours; any
    other optimizer, or a param we cannot honour, is refused naming it."""
    section = _user_json(run).get("optimizer")
    if not section:
        return run.optim
    where = f"{run.distributed.deepspeed_config}: optimizer"
    kind = str(section.get("type", "")).lower()
    if kind not in ("adam", "adamw"):
        raise ConfigError(
            f"type {section.get('type')!r} is not supported: the trainer runs AdamW (DeepSpeed's "
            "CPU Adam under offload); use Adam or AdamW, or remove the section",
            field=where,
        )
    params = dict(section.get("params", {}))
    if kind == "adam" and params.get("adam_w_mode") is False and params.get("weight_decay"):
        raise ConfigError("adam_w_mode=false (L2 weight decay) is not supported", field=where)
    unknown = sorted(set(params) - set(_OPTIM_PARAMS) - set(_IMPLEMENTATION_PARAMS))
    if unknown:
        raise ConfigError(
            f"params {unknown} cannot be honoured; known: lr, betas, eps, weight_decay", field=where
        )
    chosen = {_OPTIM_PARAMS[k]: v for k, v in params.items() if k in _OPTIM_PARAMS and v != "auto"}
    try:
        return dataclasses.replace(run.optim, **chosen)
    except ValueError as err:
        raise ConfigError(str(err), field=where) from err


def offloaded_stage(stage: int) -> int:
    """The ZeRO stage an offloaded optimizer runs at: DeepSpeed 0.19.8's ZeRO-1 offloaded keeps
    a whole fp32 gradient per parameter beside the fp32 partition it offloads (4 bytes a
    parameter more, 27 GB at 7B: tests/test_zero_fp32_sums.py), where ZeRO-2 offloads the same
    partitioned optimizer without it; so an offloaded ZeRO-1 runs as ZeRO-2."""
    return 2 if stage == 1 else stage


def offloads_optimizer(config: dict[str, Any]) -> bool:
    """Whether a (filled) DeepSpeed config puts the optimizer on the CPU or NVMe."""
    device = config["zero_optimization"].get("offload_optimizer", {}).get("device", "none")
    return device in ("cpu", "nvme")


# ZeRO's bucket sizes from the model's hidden size D, as transformers' DeepSpeed integration
# fills its "auto" values: buckets of about one D x D matrix, parameters under 10 D kept whole.
BUCKETS_FROM_HIDDEN = {
    "reduce_bucket_size": lambda d: d * d,
    "stage3_prefetch_bucket_size": lambda d: int(0.9 * d * d),
    "stage3_param_persistence_threshold": lambda d: 10 * d,
}


def deepspeed_config(
    run: RunConfig, info: DistInfo, hidden_size: int | None = None
) -> dict[str, Any]:
    """The DeepSpeed config dict: the user's JSON (if any) with its "auto" values filled.

    Our trainer owns packing, accumulation, AdamW and the schedule: DeepSpeed sees micro-batch 1,
    one accumulation step (we set the boundary by hand), and no optimizer or scheduler section
    (the optimizer section's values reach AdamW through ``optim_with_deepspeed_section``).
    ZeRO-2 overlaps its gradient reduction with the backward (``overlap_comm``) unless the JSON
    says otherwise. With ``hidden_size`` (the engine's model), ZeRO's bucket sizes given as
    "auto" or left out (the stage-3 ones at stage 3) are sized from it (``BUCKETS_FROM_HIDDEN``).
    bf16 weights sum their gradients in fp32 unless told otherwise (``_fp32_sums``).
    """
    raw = _user_json(run)
    dtype = resolve_dtype(run.model.dtype, info.device)
    fill: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": info.world_size,
        "gradient_clipping": run.optim.grad_clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    cfg = {k: v for k, v in raw.items() if k not in ("optimizer", "scheduler")}
    for key, value in fill.items():
        if cfg.get(key, "auto") == "auto" or key in (
            "train_micro_batch_size_per_gpu",
            "gradient_accumulation_steps",
            "train_batch_size",
        ):
            cfg[key] = value
    zero = dict(cfg.get("zero_optimization", {}))
    if zero.get("stage", "auto") == "auto":
        zero["stage"] = run.distributed.zero_stage
    if run.distributed.offload_optimizer is True and "offload_optimizer" not in zero:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offloads_optimizer({"zero_optimization": zero}):
        zero["stage"] = offloaded_stage(zero["stage"])
    for key, size in BUCKETS_FROM_HIDDEN.items():
        stage3_key, stage3 = key.startswith("stage3_"), zero["stage"] == 3
        # DeepSpeed's own reduce bucket (5e8 elements) is 1 GB of bf16 twice over at ZeRO-2
        # (overlap_comm), and 2 GB of fp32 at ZeRO-1 offloaded (tests/test_zero_fp32_sums.py)
        reduce = key == "reduce_bucket_size" and zero["stage"] >= 1
        wanted = zero.get(key) == "auto" or (key not in zero and (stage3 or reduce))
        if hidden_size and wanted and (stage3 or not stage3_key):
            zero[key] = size(hidden_size)
    for key, value in list(zero.items()):
        if value == "auto":  # no model to size it from (set-up before it is built): DeepSpeed's
            del zero[key]
    if zero["stage"] == 2:
        zero.setdefault("overlap_comm", True)
    cfg["zero_optimization"] = zero
    bf16 = dict(cfg.get("bf16", {}))
    fp16 = dict(cfg.get("fp16", {}))
    if bf16.get("enabled", "auto") == "auto":
        bf16["enabled"] = dtype == torch.bfloat16
    if fp16.get("enabled", "auto") == "auto":
        fp16["enabled"] = dtype == torch.float16
    # A NaN/inf gradient must skip the update in bf16 too (fp16 does through its loss scaler).
    bf16.setdefault("check_grad_overflow", run.train.skip_nonfinite)
    cfg["bf16"], cfg["fp16"] = bf16, fp16
    fp32_accum = run.distributed.fp32_grad_accum
    if fp32_accum == "auto":
        fp32_accum = zero["stage"] >= 1
    if fp32_accum and bf16["enabled"]:
        if zero["stage"] == 0:
            raise ConfigError(
                "needs ZeRO stage 1-3 under DeepSpeed (its stage 0 sums in the weights' dtype)",
                field="distributed.fp32_grad_accum",
            )
        _fp32_sums(cfg, bf16, stage=zero["stage"], offload=offloads_optimizer(cfg))
    cfg["zero_allow_untested_optimizer"] = True
    leftover = [k for k, v in cfg.items() if v == "auto"]
    if leftover:
        raise ValueError(f"distributed.deepspeed_config: cannot fill 'auto' for {leftover}")
    return cfg


def _fp32_sums(cfg: dict[str, Any], bf16: dict[str, Any], stage: int, offload: bool) -> None:
    """bf16 weights, fp32 gradient sums (tests/test_zero_fp32_sums.py measures each stage).

    ``grad_accum_dtype`` fp32: ZeRO-1 runs DeepSpeed's BF16 optimizer (a full fp32 gradient per
    rank); ZeRO-2 adds each micro-batch's reduced gradient into an fp32 partition
    (stage_1_and_2.py, the "compact grad partition buffer"), ZeRO-3 its reduce-scattered one
    (stage3.py ``partition_grads``), so both sum micro-batches in fp32 over 1/ranks. Without it
    ZeRO-2/3 sum in bf16. ``communication_data_type`` fp32: the cross-rank sum, which DeepSpeed
    otherwise runs in bf16 at every stage (ZeRO-1 too: its fp32 sums are cast to bf16 for the
    all-reduce); twice the bytes, overlapped with the backward at ZeRO-2/3."""
    data_types = dict(cfg.get("data_types", {}))
    if data_types.get("grad_accum_dtype", "auto") == "auto":  # the JSON's own wins
        data_types["grad_accum_dtype"] = "fp32"
    cfg["data_types"] = data_types
    if cfg.get("communication_data_type", "auto") == "auto":
        cfg["communication_data_type"] = "fp32"
    if stage == 1 and not offload and data_types["grad_accum_dtype"] == "fp32":
        # each bf16 gradient added to the fp32 sums as backward makes it, then freed: 2
        # bytes a parameter less at the peak (activation_checkpointing.resident_bytes)
        bf16.setdefault("immediate_grad_update", True)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """model.dtype -> torch dtype; auto = bf16 on GPU, fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


# ---------------------------------------------------------------------------------------------
# Engines.


def _adamw(
    params: list[torch.nn.Parameter],
    optim: OptimConfig,
    on_cpu: bool = False,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """AdamW over ``params``; ``on_cpu``: DeepSpeed's CPU Adam (ZeRO-Offload runs the step on
    the host, and DeepSpeed accepts no other client optimizer there); ``fused``: torch's fused
    kernel (one launch per dtype and device, no host reads, and it honours ``found_inf``)."""
    # No weight decay on biases and norm weights (1-D), as usual for transformers.
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if on_cpu:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(
            groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, adamw_mode=True
        )
    kind = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, **kind)


@dataclass
class ParamState:
    """One parameter's whole training state, whatever the ranks or ZeRO stage that trained it:
    the fp32 (master) weight and AdamW's moments and step count, all full-shaped."""

    weight: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: float


# Reads a saved parameter's state: (its name in the loss module, its full shape) -> ParamState.
StateReader = Any


def optimizer_param_names(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    masters: dict[int, torch.Tensor] | None = None,
) -> list[str]:
    """The loss module's names of ``optimizer``'s parameters, in its state_dict's index order
    (``masters``: id(weight) -> the fp32 master the optimizer holds instead, if any)."""
    masters = masters or {}
    names = {id(masters.get(id(p), p)): n for n, p in module.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _adam_state(
    like: torch.Tensor, state: ParamState, optimizer: torch.optim.Optimizer
) -> dict[str, torch.Tensor]:
    """AdamW's state of one parameter, where torch keeps it: the step count on the parameter's
    device for the fused (or capturable) kernel, on the host otherwise."""
    defaults = optimizer.defaults
    on_device = defaults.get("fused") or defaults.get("capturable")
    return {
        "step": torch.tensor(float(state.step), device=like.device if on_device else "cpu"),
        "exp_avg": state.exp_avg.to(like.device, torch.float32).reshape(like.shape).clone(),
        "exp_avg_sq": state.exp_avg_sq.to(like.device, torch.float32).reshape(like.shape).clone(),
    }


def convert_to_universal(deepspeed_dir: Path, out: Path) -> None:
    """DeepSpeed's own conversion of a ZeRO 1-3 checkpoint (any number of ranks) into its
    universal layout: OUT/zero/NAME/{fp32,exp_avg,exp_avg_sq}.pt, one full tensor per file."""
    import argparse
    import contextlib
    import io

    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=str(deepspeed_dir),
        output_folder=str(out),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # our checkpoints carry no universal-checkpoint info
    )
    with contextlib.redirect_stdout(io.StringIO()):
        ds_to_universal.main(args)
    (out.parent / "latest_universal").unlink(missing_ok=True)  # a pointer we do not use


@dataclass
class StepResult:
    """What one optimizer step did, on the host (after the step's single sync)."""

    stats: list[float]
    grad_norm: float
    applied: bool


class Engine(Protocol):
    """What the trainer and checkpoints ask of an engine (``LocalEngine``, ``DeepSpeedEngine``):
    a step, its state and the layout that state is written in; no caller asks which it is."""

    module: torch.nn.Module  # the loss module (its ``.model``: the Hugging Face model)

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def set_lr(self, lr: float) -> None: ...
    def start_micro_batch(self, last: bool) -> None: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def finish_step(self, stats: torch.Tensor) -> StepResult: ...
    def describe(self) -> str: ...

    @property
    def offloads_optimizer(self) -> bool: ...

    def layout(self) -> dict[str, Any]:
        """What writes (or reads) its checkpoints: ``engine`` (single | deepspeed | fsdp),
        ``zero_stage`` (None for the single engine), ``world_size``."""
        ...

    def save_state(self, folder: Path) -> None:
        """Every rank: write the optimizer state (and masters) into the checkpoint ``folder``,
        beside its model/ (written by rank 0)."""
        ...

    def load_state(self, folder: Path) -> None:
        """Every rank: restore weights and optimizer from a checkpoint of this ``layout``."""
        ...

    def load_param_states(self, read: StateReader) -> None:
        """Weights and AdamW state from a checkpoint of another layout, one parameter at a
        time (``read(name, full_shape) -> ParamState``)."""
        ...

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The model's full weights on rank 0 (None elsewhere under ZeRO-3; every rank calls)."""
        ...


def read_weights(model_folder: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face folder's safetensors weights (every shard), on the host."""
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(model_folder).glob("*.safetensors")):  # large models are sharded
        weights.update(load_file(str(shard), device="cpu"))
    return weights


# The offloaded boundary's buckets (``LocalEngine._step_on_host``): up to 200 MiB of fp32 sums
# each, enough for a copy to run at the link's rate, little against the whole model's AdamW on
# the host (the pipeline's fill and drain: one bucket out and one back, about 6 ms at 7B).
HOST_BUCKET_BYTES = 200 * 2**20


class LocalEngine:
    """Plain PyTorch: AdamW, gradient sum over ranks (if any), clipping, non-finite skip.

    16-bit weights get fp32 masters: each parameter's gradient is added into its master's fp32
    ``.grad`` as soon as the backward has it (and dropped), so a step's micro-batches sum in
    fp32; clipping and AdamW run on the masters, which are then copied into the weights.

    Several ranks (torchrun without DeepSpeed): torch's DistributedDataParallel sums the
    gradients over the ranks in buckets of about one D x D matrix, each launched as soon as its
    gradients are ready in the step's last backward (earlier micro-batches do not reduce).
    Its comm hook (``_sum_bucket``) sums where DDP would average, and for 16-bit weights adds
    the bucket into the fp32 masters and reduces the fp32 sums.

    ``distributed.offload_optimizer`` (one rank only; several are refused): the optimizer on
    the host. The weights stay on the device, and so does each one's fp32 gradient sum
    (``_sums``, summed as above); every weight's fp32 master and AdamW's m and v live in host
    memory (pinned masters and gradients beside a GPU, for the copies), stepped by torch's
    fused CPU AdamW bucket by bucket as the sums arrive (``_finish_on_host``). 2 + 4 bytes a
    parameter on the device, none for states; 16 on the host (master, its gradient, m, v), as
    DeepSpeed's CPU Adam keeps them, and two bucket-sized staging buffers for the way back."""

    def __init__(self, module: torch.nn.Module, run: RunConfig, info: DistInfo) -> None:
        self.module = module
        self.info = info
        self.weights = [p for p in module.parameters() if p.requires_grad]
        self.host_optimizer = wants_host_optimizer(run, info)
        self._ddp = _data_parallel(module) if info.world_size > 1 else None
        self._reduce_now = False  # DDP reduces this micro-batch's backward (the step's last)
        # What the optimizer steps: fp32 masters (on the host when offloaded, for every weight).
        master = _host_master if self.host_optimizer else _fp32_master
        self.params = [master(p) for p in self.weights]
        # id(weight) -> its fp32 master, for 16-bit weights only (every weight when offloaded).
        pairs = zip(self.weights, self.params, strict=True)
        self._masters = {id(w): m for w, m in pairs if w is not m}
        # Offloaded: id(weight) -> the step's fp32 gradient sum, on the device.
        self._sums: dict[int, torch.Tensor] = {}
        if self.host_optimizer:
            self._buckets = _host_buckets(self.weights, self.params, HOST_BUCKET_BYTES)
            largest = max(b.staging_bytes for b in self._buckets)
            pinned = _pinned(self.weights[0])
            # the masters' way back, two in turn: one fills while the other's copy runs
            self._staging = [_Staging(largest, pinned) for _ in range(2)]
            # side streams for the boundary's copies; None: plain blocking copies (the CPU)
            self.copy_streams = _CopyStreams.beside(self.weights[0].device)
        for w in self.weights:
            if id(w) in self._masters:
                w.register_post_accumulate_grad_hook(self._into_master)
        if self._ddp is not None:
            self._ddp.register_comm_hook(self, _sum_bucket)
        self.optimizer = _adamw(self.params, run.optim, fused=True)
        self.grad_clip = run.optim.grad_clip
        self.skip_nonfinite = run.train.skip_nonfinite

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return (self._ddp or self.module)(*args, **kwargs)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def start_micro_batch(self, last: bool) -> None:
        """Gradients accumulate until the step's last micro-batch, whose backward reduces
        them over the ranks (what DDP's ``no_sync`` does for the others)."""
        if self._ddp is not None:
            self._ddp.require_backward_grad_sync = last
            self._reduce_now = last

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _into_master(self, weight: torch.Tensor) -> None:
        """A 16-bit weight's new gradient, added into its master's fp32 ``.grad`` and freed;
        in a reducing backward DDP's bucket has it, and ``_sum_bucket`` adds it there."""
        if self._reduce_now:
            return
        if self.host_optimizer:  # the sum stays on the device, beside the weight
            self._sums[id(weight)] = _add_fp32(self._sums.get(id(weight)), weight.grad)
        else:
            master = self._masters[id(weight)]
            master.grad = _add_fp32(master.grad, weight.grad)
        weight.grad = None

    def finish_step(self, stats: torch.Tensor) -> StepResult:
        """Clip, step, then read (the gradients were summed over ranks during the backward).
        ``stats`` (K,) float: the step's sums; stats[0] = loss. A non-finite loss or gradient
        norm skips the update on the device (the fused AdamW's ``found_inf``: weights, moments
        and step count unchanged), so the step's one host sync comes after the step is
        launched."""
        all_reduce_sum(stats)
        if self.host_optimizer:
            return self._finish_on_host(stats)
        norm = _clip_and_step(
            self.optimizer, self.params, stats, self.grad_clip, self.skip_nonfinite
        )
        if self._masters:
            weights = [w for w in self.weights if id(w) in self._masters]
            for w in weights:  # DDP's bucket views of the last micro-batch's 16-bit gradients
                w.grad = None
            with torch.no_grad():
                torch._foreach_copy_(weights, [self._masters[id(w)] for w in weights])
        return _read_step(stats, norm)  # the update already queued

    def _finish_on_host(self, stats: torch.Tensor) -> StepResult:
        """The offloaded step: clip the device's fp32 sums and read the step's stats and norm
        (the one sync the step has), then, if finite (else nothing changes: weights, moments,
        step count), the pipeline (``_step_on_host``)."""
        sums = [self._sums[id(w)] for w in self.weights if id(w) in self._sums]
        norm = torch.nn.utils.get_total_norm(sums, foreach=True)
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        # as clip_grad_norm_ scales (bitwise the same as the engine without offload)
        torch._foreach_mul_(sums, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        result = _read_step(stats, norm)
        if result.applied or not self.skip_nonfinite:
            with torch.no_grad():
                self._step_on_host()
        # the host has waited for every copy out (its bucket's event), or none was queued:
        # the sums' memory can go back to the compute stream's pool as it is
        self._sums.clear()
        return result

    def _step_on_host(self) -> None:
        """The boundary as a pipeline of buckets (module order, ``HOST_BUCKET_BYTES`` each):
        every bucket's sums are queued out at once on one side stream, so bucket k+1's copy
        runs while the host's AdamW steps bucket k, which starts as soon as its own copy has
        landed (its event); each stepped bucket goes back cast to the weights' dtype on a
        second side stream while the host steps the next. The compute stream waits for the
        last copy back (an event, not the host); the host waits only for the bucket it steps
        next and for a staging buffer's previous copy. On the CPU the same steps run with
        plain copies, one after the other."""
        streams = self.copy_streams
        if streams is not None:
            streams.start()
        buckets = [b for b in self._buckets if any(id(w) in self._sums for w in b.weights)]
        landed = [self._send_out(b) for b in buckets]
        for k, (bucket, sums_here) in enumerate(zip(buckets, landed, strict=True)):
            _wait(sums_here)
            self._step_bucket(bucket)
            self._send_back(bucket, self._staging[k % 2])
        if streams is not None:
            streams.join()

    def _send_out(self, bucket: _HostBucket) -> torch.cuda.Event | None:
        """Queue ``bucket``'s sums into its pinned host gradients; the event of their landing."""
        out = self.copy_streams.out if self.copy_streams is not None else None
        with _on(out):
            for w, grad in zip(bucket.weights, bucket.grads, strict=True):
                if id(w) in self._sums:
                    grad.copy_(self._sums[id(w)], non_blocking=out is not None)
        return _recorded(out)

    def _step_bucket(self, bucket: _HostBucket) -> None:
        """The host's AdamW over ``bucket`` only: the other masters have no gradient (AdamW
        leaves them alone), nor do the bucket's weights that had none this step."""
        for w, master, grad in zip(bucket.weights, bucket.masters, bucket.grads, strict=True):
            master.grad = grad if id(w) in self._sums else None
        self.optimizer.step()
        for master in bucket.masters:
            master.grad = None

    def _send_back(self, bucket: _HostBucket, staging: _Staging) -> None:
        """Cast ``bucket``'s stepped masters into ``staging`` on the host (2 bytes a parameter
        cross the link), once its previous copy has read it, and queue them into the weights."""
        back = self.copy_streams.back if self.copy_streams is not None else None
        _wait(staging.read)
        stepped = [
            (w, m, staging.view(w, off)) for w, m, off in bucket.returns() if id(w) in self._sums
        ]
        for _, master, view in stepped:
            view.copy_(master)  # the cast, on the host
        with _on(back):
            for w, _, view in stepped:
                w.copy_(view, non_blocking=back is not None)
        staging.read = _recorded(back)

    def describe(self) -> str:
        masters = ", fp32 master weights" if self._masters else ""
        if self.host_optimizer:
            masters = ", optimizer on the host (fp32 master weights and AdamW states in CPU memory)"
        ddp = ""
        if self._ddp is not None:
            mib = self._ddp.bucket_bytes_cap / 2**20
            ddp = f", DDP over {self.info.world_size} ranks ({mib:.3g} MiB buckets)"
        return f"single engine, {type(self.optimizer).__name__} (fused){masters}{ddp}"

    @property
    def offloads_optimizer(self) -> bool:
        return self.host_optimizer

    def layout(self) -> dict[str, Any]:
        return {"engine": "single", "zero_stage": None, "world_size": self.info.world_size}

    def save_state(self, folder: Path) -> None:
        """optimizer.pt (rank 0: the state is whole and the same on every rank)."""
        if self.info.is_main:
            torch.save(self.state_dict(), folder / "optimizer.pt")

    def load_state(self, folder: Path) -> None:
        """model/'s weights, then optimizer.pt (with the fp32 masters of 16-bit weights)."""
        model = self.module.model
        missing, unexpected = model.load_state_dict(read_weights(folder / "model"), strict=False)
        # A tied LM head is saved once; anything else missing is a real mismatch.
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if missing or unexpected:
            raise ValueError(
                f"--resume: {folder}/model: missing {missing}, unexpected {unexpected}"
            )
        self.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))

    def state_dict(self) -> dict[str, Any]:
        names = optimizer_param_names(self.module, self.optimizer, self._masters)
        state = {"optimizer": self.optimizer.state_dict(), "names": names}
        if self._masters:
            state["fp32_masters"] = [m.detach() for m in self.params]
            # The masters' names (module order, not the optimizer's): another layout reads them.
            state["master_names"] = [
                n for n, p in self.module.named_parameters() if p.requires_grad
            ]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        saved = state.get("fp32_masters")
        with torch.no_grad():
            for w, m, k in zip(self.weights, self.params, range(len(self.params)), strict=True):
                if w is not m:  # the weights were saved rounded: the masters carry the run on
                    m.copy_(saved[k] if saved is not None else w)
                    w.copy_(m)

    def load_param_states(self, read: StateReader) -> None:
        """Weights and AdamW state from a checkpoint of another layout (``read(name, shape)``)."""
        for name, p in self.module.named_parameters():
            if p.requires_grad:
                state = read(name, p.shape)
                master = self._masters.get(id(p), p)
                with torch.no_grad():
                    master.copy_(state.weight.reshape(p.shape))
                    p.copy_(master)
                self.optimizer.state[master] = _adam_state(master, state, self.optimizer)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's full weights (rank 0 holds them all here)."""
        return _unwrap(self.module.state_dict())


def _add_fp32(total: torch.Tensor | None, grad: torch.Tensor) -> torch.Tensor:
    """``total + grad`` in fp32, in place when there is a total (else ``grad`` as fp32: the
    gradient itself when it is fp32 already)."""
    return grad.float() if total is None else total.add_(grad)


def _clip_and_step(
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    stats: torch.Tensor,
    grad_clip: float,
    skip_nonfinite: bool,
) -> torch.Tensor:
    """Clip ``params``' gradients by their global norm (``grad_clip`` <= 0: not clipped), then
    step the fused AdamW, skipped on the device when the loss (``stats[0]``) or the norm is not
    finite (its ``found_inf``), and drop the gradients; the norm, on the device. FSDP's
    DTensor gradients: the norm over every rank's shards (replicated: no communication)."""
    from torch.distributed.tensor import DTensor

    max_norm = grad_clip if grad_clip > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    if skip_nonfinite:
        finite = torch.isfinite(stats[0]) & torch.isfinite(norm)
        optimizer.found_inf = (~finite).float()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def _read_step(stats: torch.Tensor, norm: torch.Tensor) -> StepResult:
    """The one host sync per optimizer step (logging): the step's stats and gradient norm;
    applied when the loss (stats[0]) and the norm are finite."""
    host = torch.cat([stats, norm.reshape(1).to(stats)]).tolist()
    return StepResult(host[:-1], host[-1], math.isfinite(host[0]) and math.isfinite(host[-1]))


def _fp32_master(weight: torch.nn.Parameter) -> torch.nn.Parameter:
    """``weight`` itself when fp32; else an fp32 copy (``LocalEngine._into_master`` sums its
    gradients)."""
    if weight.dtype == torch.float32:
        return weight
    return torch.nn.Parameter(weight.detach().float().clone())


def _host_master(weight: torch.nn.Parameter) -> torch.nn.Parameter:
    """An fp32 copy of ``weight`` (of any dtype) in host memory, pinned beside a GPU."""
    master = torch.empty(weight.shape, dtype=torch.float32, pin_memory=_pinned(weight))
    master.copy_(weight.detach())
    return torch.nn.Parameter(master)


def _pinned(weight: torch.Tensor) -> bool:
    """Whether ``weight``'s host copies are pinned: beside a GPU, for its copy engines."""
    return weight.device.type == "cuda"


@dataclass
class _HostBucket:
    """Consecutive weights (module order) whose sums go out, step and come back together."""

    weights: list[torch.nn.Parameter]
    masters: list[torch.nn.Parameter]  # their fp32 masters, on the host
    grads: list[torch.Tensor]  # the masters' gradients: views of one pinned fp32 buffer
    offsets: list[int]  # each weight's byte offset in a staging buffer
    staging_bytes: int

    def returns(self) -> Iterator[tuple[torch.nn.Parameter, torch.nn.Parameter, int]]:
        return zip(self.weights, self.masters, self.offsets, strict=True)


def _host_buckets(
    weights: list[torch.nn.Parameter], masters: list[torch.nn.Parameter], limit: int
) -> list[_HostBucket]:
    """``weights`` (module order, the forward's) in buckets of up to ``limit`` bytes of fp32
    sums (a larger weight is a bucket of its own)."""
    groups: list[list[int]] = []
    size = 0
    for i, master in enumerate(masters):
        if not groups or size and size + 4 * master.numel() > limit:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += 4 * master.numel()
    return [_host_bucket([weights[i] for i in g], [masters[i] for i in g]) for g in groups]


def _host_bucket(
    weights: list[torch.nn.Parameter], masters: list[torch.nn.Parameter]
) -> _HostBucket:
    sizes = [m.numel() for m in masters]
    flat = torch.empty(sum(sizes), pin_memory=_pinned(weights[0]))
    grads = [g.view_as(m) for g, m in zip(flat.split(sizes), masters, strict=True)]
    offsets, end = [], 0
    for w in weights:
        offsets.append(end)
        end += -(-w.numel() * w.element_size() // 16) * 16  # aligned for any dtype's view
    return _HostBucket(weights, masters, grads, offsets, end)


class _Staging:
    """A host buffer (pinned beside a GPU) the stepped masters go back through, cast to the
    weights' dtype, and the event of the copy that read it last (None: none pending)."""

    def __init__(self, nbytes: int, pinned: bool) -> None:
        self.buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
        self.read: torch.cuda.Event | None = None

    def view(self, weight: torch.Tensor, offset: int) -> torch.Tensor:
        nbytes = weight.numel() * weight.element_size()
        return self.buffer[offset : offset + nbytes].view(weight.dtype).view(weight.shape)


@dataclass
class _CopyStreams:
    """The offloaded boundary's side streams: ``out`` carries the sums to the host, ``back``
    the new weights to the device (PCIe carries both directions at once)."""

    out: torch.cuda.Stream
    back: torch.cuda.Stream

    @staticmethod
    def beside(device: torch.device) -> _CopyStreams | None:
        """Streams on a CUDA device; None elsewhere (plain copies)."""
        if device.type != "cuda":
            return None
        return _CopyStreams(torch.cuda.Stream(device), torch.cuda.Stream(device))

    def start(self) -> None:
        """Both side streams go on after what the compute stream has queued so far (the
        clipped sums; the backward's last reads of the weights)."""
        compute = torch.cuda.current_stream(self.out.device)
        self.out.wait_stream(compute)
        self.back.wait_stream(compute)

    def join(self) -> None:
        """The compute stream (the next forward) goes on after the last copy back."""
        torch.cuda.current_stream(self.out.device).wait_stream(self.back)


def _on(stream: torch.cuda.Stream | None) -> contextlib.AbstractContextManager:
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _recorded(stream: torch.cuda.Stream | None) -> torch.cuda.Event | None:
    """An event at the end of what ``stream`` has queued (None without a stream)."""
    if stream is None:
        return None
    event = torch.cuda.Event()
    event.record(stream)
    return event


def _wait(event: torch.cuda.Event | None) -> None:
    """The host waits for ``event`` (nothing to wait for without one: plain copies)."""
    if event is not None:
        event.synchronize()


def wants_host_optimizer(run: RunConfig, info: DistInfo) -> bool:
    """Whether the one-process engine puts its optimizer on the host (``offload_optimizer``
    true, or ``auto`` resolved to true by the trainer's plan); one rank only."""
    if run.distributed.offload_optimizer is not True:
        return False
    if info.world_size > 1:
        raise ConfigError(
            f"true needs one rank without DeepSpeed (here {info.world_size}): use "
            "distributed.backend=deepspeed (ZeRO-Offload) or offload_optimizer=false",
            field="distributed.offload_optimizer",
        )
    return True


def _data_parallel(module: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel:
    """``module`` under DDP: buckets of one D x D matrix of its weights' dtype (the ZeRO
    reduce bucket, ``BUCKETS_FROM_HIDDEN``), gradients kept as views of the buckets (no copy),
    buffers never re-broadcast (none changes in training); inputs are already on the device."""
    import inspect

    ddp = torch.nn.parallel.DistributedDataParallel
    hidden = module.model.config.get_text_config().hidden_size
    elements = BUCKETS_FROM_HIDDEN["reduce_bucket_size"](hidden)
    itemsize = next(p for p in module.parameters() if p.requires_grad).element_size()
    # newer torch (2.13 here) names it forward_sync_buffers, and warns on broadcast_buffers
    renamed = "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
    no_sync = {"forward_sync_buffers" if renamed else "broadcast_buffers": False}
    return ddp(
        module, bucket_cap_mb=elements * itemsize / 2**20, gradient_as_bucket_view=True, **no_sync
    )


def _sum_bucket(engine: LocalEngine, bucket):
    """DDP's comm hook, called in the backward as each bucket's gradients are ready: an async
    all-reduce SUM (DDP's own averages; our losses carry the global normalisation). A bucket
    of 16-bit gradients is first cast to fp32 and added to the step's earlier micro-batches in
    the masters' ``.grad``, which become views of the reduced fp32 sums. ``bucket``: a
    ``dist.GradBucket``; returns a ``Future`` of its buffer (unannotated: DDP refuses the
    string annotations ``from __future__ import annotations`` makes)."""
    buffer = bucket.buffer()
    flat = buffer
    if buffer.dtype != torch.float32:
        flat = buffer.float()
        start = buffer.storage_offset()
        for g, p in zip(bucket.gradients(), bucket.parameters(), strict=True):
            master = engine._masters[id(p)]
            piece = flat.narrow(0, g.storage_offset() - start, g.numel()).view_as(master)
            if master.grad is not None:
                piece.add_(master.grad)
            master.grad = piece
    work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
    return work.get_future().then(lambda _: buffer)


class DeepSpeedEngine:
    """DeepSpeed ZeRO 0-3 around our loss module; we set the accumulation boundary ourselves."""

    def __init__(
        self,
        module: torch.nn.Module,
        run: RunConfig,
        info: DistInfo,
        external_params: list[torch.nn.Parameter] = (),
    ) -> None:
        import deepspeed

        self.info = info
        hidden = module.model.config.get_text_config().hidden_size
        self.config = deepspeed_config(run, info, hidden_size=hidden)
        self.asked_stage = _zero_stage(run)
        if self.config["zero_optimization"].get("stage", 0) == 3:
            # The LM head is used by the fused loss outside its own module's forward.
            for p in external_params:
                deepspeed.zero.register_external_parameter(module, p)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = _adamw(params, run.optim, on_cpu=offloads_optimizer(self.config))
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, config=self.config
        )
        check_skipped_sums(self.optimizer, self.config)
        self.optimizer_name = type(optimizer).__name__
        self.module = self.engine.module
        # DeepSpeed averages gradients over ranks; our weights already normalise globally.
        self.loss_factor = float(info.world_size)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.engine(*args, **kwargs)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def describe(self) -> str:
        weights, accum = self.engine.get_data_types()
        offload = " offloaded" if self.offloads_optimizer else ""
        stage = self.config["zero_optimization"]["stage"]
        if stage != self.asked_stage:  # offloaded_stage
            stage = f"{stage} (ZeRO-{self.asked_stage} asked: offloaded, it runs as {stage})"
        return (
            f"deepspeed ZeRO-{stage}, "
            f"{self.optimizer_name}{offload}, weights {weights}, grad accumulation {accum}"
        )

    def start_micro_batch(self, last: bool) -> None:
        """Reduce gradients only after the step's last micro-batch."""
        self.engine.set_gradient_accumulation_boundary(last)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss * self.loss_factor, scale_wrt_gas=False)

    def finish_step(self, stats: torch.Tensor) -> StepResult:
        """Step (DeepSpeed clips, and skips on a non-finite gradient norm), then one sync."""
        all_reduce_sum(stats)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        # The one host sync per optimizer step (logging).
        host = stats.tolist()
        applied = bool(self.engine.was_step_applied())
        if not applied:
            drop_skipped_sums(self.optimizer)
        return StepResult(host, norm, applied)

    @property
    def offloads_optimizer(self) -> bool:
        return offloads_optimizer(self.config)

    def layout(self) -> dict[str, Any]:
        stage = int(self.config["zero_optimization"].get("stage", 0))
        return {"engine": "deepspeed", "zero_stage": stage, "world_size": self.info.world_size}

    def save_state(self, folder: Path) -> None:
        """Every rank writes its partition of the optimizer state (DeepSpeed's own layout)."""
        self.engine.save_checkpoint(str(folder), tag="deepspeed", save_latest=False)

    def load_state(self, folder: Path) -> None:
        """Module weights and optimizer partitions, from DeepSpeed's own files."""
        load_path, _ = self.engine.load_checkpoint(
            str(folder), tag="deepspeed", load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if load_path is None:
            raise ValueError(f"--resume: no DeepSpeed state under {folder}/deepspeed")

    def load_param_states(self, read: StateReader) -> None:
        """Weights, fp32 masters and AdamW state from a checkpoint of another layout (another
        number of ranks or ZeRO stage, or one process): each rank writes its own partition."""
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        _create_adam_state(self.optimizer)
        steps = set()
        for name, p in self.module.named_parameters():
            if not p.requires_grad:
                continue
            zero3 = is_zero3_param(p)
            state = read(name, p.ds_shape if zero3 else p.shape)
            steps.add(state.step)
            with torch.no_grad():
                if zero3:
                    piece, start = zero3_local_piece(p)
                    flat = state.weight.flatten()
                    n = max(0, min(piece.numel(), flat.numel() - start))
                    piece[:n].copy_(flat[start : start + n])
                else:
                    p.copy_(state.weight.reshape(p.shape))
            if zero3 or hasattr(p, "_hp_mapping"):
                safe_set_full_fp32_param(p, state.weight.reshape(p.ds_shape if zero3 else p.shape))
                for key in ("exp_avg", "exp_avg_sq"):
                    value = getattr(state, key).reshape(p.ds_shape if zero3 else p.shape)
                    safe_set_full_optimizer_state(p, value, key)
            else:  # ZeRO-0 in fp32: DeepSpeed steps the client optimizer on the module's own
                self.optimizer.state[p] = _adam_state(p, state, self.optimizer)
        base = getattr(self.optimizer, "optimizer", self.optimizer)  # ZeRO wraps the client's
        for group_state in base.state.values():
            if "step" in group_state:
                group_state["step"] = torch.full_like(
                    torch.as_tensor(group_state["step"]), max(steps)
                )

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full weights on rank 0 (ZeRO-3 gathers: a collective, every rank calls it)."""
        if self.config["zero_optimization"].get("stage", 0) == 3:
            return _unwrap(self.engine._zero3_consolidated_16bit_state_dict())
        return _unwrap(self.engine.module.state_dict())


def drop_skipped_sums(zero_optimizer: Any) -> None:
    """After a skipped (non-finite) step: DeepSpeed 0.19.8's ZeRO-1/2 with an offloaded
    optimizer keeps that step's fp32 gradient partition (stage_1_and_2.py ``step`` resets only
    its host buffers on overflow), so the NaN would be summed into every later step and skip
    it too (tests/test_zero_fp32_sums.py). Drop it, as DeepSpeed does without offload and after
    an applied step. ``check_skipped_sums`` vouches for the attributes at start-up."""
    if getattr(zero_optimizer, "cpu_offload", False) is True:
        sums = zero_optimizer.averaged_gradients
        for key in sums:
            sums[key] = None


def check_skipped_sums(zero_optimizer: Any, config: dict[str, Any]) -> None:
    """An offloaded ZeRO-1/2 optimizer has the private attributes ``drop_skipped_sums`` clears
    (DeepSpeed 0.19.8's ``DeepSpeedZeroOptimizer``); another DeepSpeed without them stops here
    in one line rather than skipping every step after a non-finite one."""
    stage = config["zero_optimization"].get("stage", 0)
    if not offloads_optimizer(config) or stage not in (1, 2):
        return
    sums = getattr(zero_optimizer, "averaged_gradients", None)
    if getattr(zero_optimizer, "cpu_offload", None) is not True or not isinstance(sums, dict):
        import deepspeed

        raise RuntimeError(
            f"deepspeed {deepspeed.__version__}: its offloaded ZeRO-{stage} optimizer "
            f"({type(zero_optimizer).__name__}) has no cpu_offload / averaged_gradients dict, "
            "which reflectioncoder clears after a skipped step (train.distributed."
            "drop_skipped_sums, written against deepspeed 0.19.8): install deepspeed==0.19.8, or "
            "turn the offload off (distributed.offload_optimizer=false, none in the JSON)"
        )


# Where DeepSpeed's ZeRO 1-2, ZeRO-3 and BF16 optimizers keep their flat fp32 partitions.
_FLAT_FP32 = (
    "single_partition_of_fp32_groups",
    "fp32_partitioned_groups_flat",
    "fp32_groups_flat_partition",
)


def _create_adam_state(zero_optimizer: Any) -> None:
    """DeepSpeed's optimizers create AdamW's state at their first step and only then link each
    parameter's fragment of it; a resume writes the state before any step, so it creates the
    (zero) state of every flat partition, as AdamW's first step would, and links it."""
    name = next((a for a in _FLAT_FP32 if hasattr(zero_optimizer, a)), None)
    if name is None:  # ZeRO-0 in fp32: the client optimizer, whose state is set per parameter
        return
    base = zero_optimizer.optimizer
    for flat in getattr(zero_optimizer, name):
        if not base.state.get(flat):
            zeros = torch.zeros_like(flat)
            base.state[flat] = {
                "step": torch.tensor(0.0),
                "exp_avg": zeros,
                "exp_avg_sq": zeros.clone(),
            }
    link = getattr(zero_optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()


def _unwrap(state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """The Hugging Face model's keys: our loss module holds it as ``.model``."""
    if state is None:  # ZeRO-3 consolidates on rank 0 only
        return None
    return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}


def make_engine(
    module: torch.nn.Module,
    run: RunConfig,
    info: DistInfo,
    external_params: list[torch.nn.Parameter] = (),
) -> Engine:
    """The engine this run asks for."""
    if info.deepspeed:
        return DeepSpeedEngine(module, run, info, external_params)
    if run.distributed.backend == "fsdp":
        from reflectioncoder.train.fsdp_engine import FSDPEngine

        return FSDPEngine(module, run, info)
    return LocalEngine(module, run, info)
