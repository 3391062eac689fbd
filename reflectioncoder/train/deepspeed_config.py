"""DeepSpeed's JSON config, the reference's format with its "auto" values filled from ours
(``deepspeed_config``, ``optim_with_deepspeed_section``; the user's file read and checked by
``deepspeed_json.py``), and the ZeRO-3 helpers that build and
load a model into partitions (``zero3_partitioning``, ``zero3_local_piece``,
``zero3_transformers_config``)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from reflectioncoder.config import OptimConfig, RunConfig
from reflectioncoder.errors import ConfigError
from reflectioncoder.train.deepspeed_json import read_deepspeed_json
from reflectioncoder.train.deepspeed_reads import BATCH_FROM_WORLD, OWNED_BATCH_KEYS
from reflectioncoder.train.deepspeed_sections import (
    OPTIM_PARAMS,
)
from reflectioncoder.train.distributed import DistInfo, resolve_dtype


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
    return info.deepspeed and zero_stage_of(run) == 3


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


def _user_json(run: RunConfig) -> dict[str, Any]:
    path = run.distributed.deepspeed_config
    return read_deepspeed_json(path) if path else {}


def zero_stage_of(run: RunConfig) -> int:
    stage = _user_json(run).get("zero_optimization", {}).get("stage", "auto")
    return run.distributed.zero_stage if stage == "auto" else int(stage)


def optim_with_deepspeed_section(run: RunConfig) -> OptimConfig:
    """``run.optim`` with the DeepSpeed JSON's optimizer section applied: an Adam/AdamW section's
    explicit params (lr, betas, eps, weight_decay) win over the config's, "auto" keeps ours. The
    JSON's reader refused anything else (``optimizer_problem``), naming its line."""
    section = _user_json(run).get("optimizer")
    if not section:
        return run.optim
    params = section.get("params", {})
    chosen = {OPTIM_PARAMS[k]: v for k, v in params.items() if k in OPTIM_PARAMS and v != "auto"}
    try:
        return dataclasses.replace(run.optim, **chosen)
    except ValueError as err:
        where = f"{run.distributed.deepspeed_config}: optimizer"
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


def overridden_batch_keys(run: RunConfig, info: DistInfo) -> list[str]:
    """The user's JSON's batch keys given a number we do not use, as ``key=value`` (for the
    start-up warning: the step's size comes from ``train.samples_per_step`` and packing)."""
    raw, ours = _user_json(run), deepspeed_config_batch(info)
    unused = [k for k in OWNED_BATCH_KEYS if raw.get(k, "auto") not in ("auto", ours[k])]
    return [f"{k}={raw[k]}" for k in unused]


def deepspeed_config_batch(info: DistInfo) -> dict[str, int]:
    return {key: size(info.world_size) for key, size in BATCH_FROM_WORLD.items()}


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
        **deepspeed_config_batch(info),
        "gradient_clipping": run.optim.grad_clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    cfg = {k: v for k, v in raw.items() if k not in ("optimizer", "scheduler")}
    for key, value in fill.items():
        if cfg.get(key, "auto") == "auto" or key in OWNED_BATCH_KEYS:
            cfg[key] = value
    zero = _zero_section(run, dict(cfg.get("zero_optimization", {})), hidden_size)
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
    _drop_unfilled_dtype_autos(cfg)
    cfg["zero_allow_untested_optimizer"] = True
    leftover = [k for k, v in cfg.items() if v == "auto"]
    if leftover:
        raise ValueError(f"distributed.deepspeed_config: cannot fill 'auto' for {leftover}")
    return cfg


def _drop_unfilled_dtype_autos(cfg: dict[str, Any]) -> None:
    """The dtype keys left "auto" (no fp32 sums to fill them with) take DeepSpeed's default."""
    if cfg.get("communication_data_type") == "auto":
        del cfg["communication_data_type"]
    data_types = cfg.get("data_types")
    if isinstance(data_types, dict) and data_types.get("grad_accum_dtype") == "auto":
        cfg["data_types"] = {k: v for k, v in data_types.items() if k != "grad_accum_dtype"}


def _zero_section(run: RunConfig, zero: dict[str, Any], hidden_size: int | None) -> dict[str, Any]:
    """The user's ``zero_optimization`` with its stage, offload and bucket sizes filled."""
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
    return zero


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
        # bytes a parameter less at the peak (memory_plan.resident_bytes)
        bf16.setdefault("immediate_grad_update", True)
