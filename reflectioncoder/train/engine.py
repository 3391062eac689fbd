"""The engine interface: ``Engine`` (the step: ``backward``, ``finish_step``, ``set_lr``; the
state and its layout: ``save_state``, ``load_state``, ``layout``, ...), ``StepResult``, what the
engines share (AdamW, clipping, the step's one host read, a parameter's state across layouts)
and ``make_engine``, which picks one of three:
- ``LocalEngine`` (local_engine.py): plain PyTorch AdamW, one process (or several under
  torchrun, wrapped in torch's DDP: gradients summed in buckets during the backward),
  global-norm clipping, non-finite updates skipped;
- ``DeepSpeedEngine`` (deepspeed_engine.py): DeepSpeed ZeRO 0-3, launched by ``deepspeed`` or
  ``torchrun`` (both set RANK / WORLD_SIZE / LOCAL_RANK), multi-node; gloo on CPU, NCCL on GPU;
- ``FSDPEngine`` (fsdp_engine.py): torch's FSDP2, fp32 shards of masters, gradients and
  AdamW states, bf16 weights gathered per layer.

All expect the loss of a micro-batch to be a SUM whose weights already carry the step's global
normalisation (the data room computes them across all ranks' micro-batches), so gradients are
summed over ranks, never averaged: DeepSpeed averages, so its losses are scaled by the world size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from reflectioncoder.config import OptimConfig, RunConfig
from reflectioncoder.train.distributed import DistInfo


def make_adamw(
    params: list[torch.nn.Parameter],
    optim: OptimConfig,
    on_cpu: bool = False,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """AdamW over ``params``; ``on_cpu``: DeepSpeed's CPU Adam (ZeRO-Offload runs the step on
    the host, and DeepSpeed accepts no other client optimizer there); ``fused``: torch's fused
    kernel (one launch per dtype and device, no host reads, and it honours ``found_inf``)."""
    # No weight decay on biases and norm weights (1-D), as usual for transformers. A ZeRO-3
    # partitioned parameter (a model loaded from disk into partitions) is an empty 1-D tensor:
    # its shape is its ``ds_shape``.
    decay = [p for p in params if _full_ndim(p) >= 2]
    no_decay = [p for p in params if _full_ndim(p) < 2]
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


def _full_ndim(param: torch.Tensor) -> int:
    """A parameter's number of dimensions, whole (ZeRO-3's partitioned ones: ``ds_shape``)."""
    return len(getattr(param, "ds_shape", param.shape))


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


def load_whole_states(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    masters: dict[int, torch.Tensor],
    read: StateReader,
) -> None:
    """Weights and AdamW state from a checkpoint of another layout (``read(name, shape)``) into
    an engine that holds every parameter whole: each weight, its fp32 master (``masters``:
    id(weight) -> the master the optimizer steps, when it is not the weight) and its state."""
    for name, p in module.named_parameters():
        if p.requires_grad:
            state = read(name, p.shape)
            master = masters.get(id(p), p)
            with torch.no_grad():
                master.copy_(state.weight.reshape(p.shape))
                p.copy_(master)
            optimizer.state[master] = _adam_state(master, state, optimizer)


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


class LossScale:
    """fp16's dynamic loss scale, with torch.amp.GradScaler's rule and defaults: the loss is
    multiplied by ``scale`` before the backward, so that fp16 gradients (the fused loss's d z,
    the activations') do not flush to zero at a real step's loss weights; the fp32 gradients
    are divided by it (exact: a power of two) before clipping; a non-finite step is skipped and
    halves it, 2000 finite steps in a row double it. Device tensors: no host sync."""

    GROWTH, BACKOFF, INTERVAL = 2.0, 0.5, 2000

    def __init__(self, device: torch.device, init_scale: float = 2.0**16) -> None:
        self.scale = torch.full((), init_scale, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, device=device)

    def unscale_(self, grads: list[torch.Tensor]) -> None:
        if grads:
            torch._foreach_mul_(grads, self.scale.reciprocal())

    def update(self, found_inf: torch.Tensor) -> None:
        """``found_inf``: 1.0 when the step was skipped, else 0.0 (fp32, on the device)."""
        torch._amp_update_scale_(
            self.scale, self.growth_tracker, found_inf, self.GROWTH, self.BACKOFF, self.INTERVAL
        )

    def state_dict(self) -> dict[str, float]:
        return {"scale": float(self.scale), "growth_tracker": int(self.growth_tracker)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale.fill_(state["scale"])
        self.growth_tracker.fill_(state["growth_tracker"])


def clip_and_step(
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    stats: torch.Tensor,
    grad_clip: float,
    skip_nonfinite: bool,
    loss_scale: LossScale | None = None,
) -> torch.Tensor:
    """Clip ``params``' gradients by their global norm (``grad_clip`` <= 0: not clipped), then
    step the fused AdamW, skipped on the device when the loss (``stats[0]``) or the norm is not
    finite (its ``found_inf``), and drop the gradients; the norm, on the device. FSDP's
    DTensor gradients: the norm over every rank's shards (replicated: no communication).
    ``loss_scale`` (fp16): the gradients are unscaled first, and a non-finite norm always skips
    the step (an overflow at the scale) and lowers the scale."""
    from torch.distributed.tensor import DTensor

    if loss_scale is not None:
        loss_scale.unscale_([p.grad for p in params if p.grad is not None])
    max_norm = grad_clip if grad_clip > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    if skip_nonfinite or loss_scale is not None:
        finite = torch.isfinite(norm)
        if skip_nonfinite:
            finite &= torch.isfinite(stats[0])
        optimizer.found_inf = (~finite).float()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if loss_scale is not None:
        loss_scale.update(optimizer.found_inf)
    return norm


def read_step(stats: torch.Tensor, norm: torch.Tensor) -> StepResult:
    """The one host sync per optimizer step (logging): the step's stats and gradient norm;
    applied when the loss (stats[0]) and the norm are finite."""
    host = torch.cat([stats, norm.reshape(1).to(stats)]).tolist()
    return StepResult(host[:-1], host[-1], math.isfinite(host[0]) and math.isfinite(host[-1]))


def hf_state_dict(state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
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
    """The engine this run asks for (imported here: each engine's module imports this one)."""
    if info.deepspeed:
        from reflectioncoder.train.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(module, run, info, external_params)
    if run.distributed.backend == "fsdp":
        from reflectioncoder.train.fsdp_engine import FSDPEngine

        return FSDPEngine(module, run, info)
    from reflectioncoder.train.local_engine import LocalEngine

    return LocalEngine(module, run, info)
