"""``LocalEngine``: plain PyTorch AdamW in one process, or on every rank under torchrun (torch's
DDP), and its optimizer on the host (``distributed.offload_optimizer``: the bucket pipeline of
``host_optimizer.py``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from reflectioncoder.config import RunConfig
from reflectioncoder.train.deepspeed_config import BUCKETS_FROM_HIDDEN
from reflectioncoder.train.distributed import DistInfo, all_reduce_sum, resolve_dtype
from reflectioncoder.train.engine import (
    LossScale,
    StateReader,
    StepResult,
    clip_and_step,
    hf_state_dict,
    load_whole_states,
    make_adamw,
    optimizer_param_names,
    read_step,
    read_weights,
)
from reflectioncoder.train.host_optimizer import HostPipeline, host_master, wants_host_optimizer


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
        master = host_master if self.host_optimizer else _fp32_master
        self.params = [master(p) for p in self.weights]
        # id(weight) -> its fp32 master, for 16-bit weights only (every weight when offloaded).
        pairs = zip(self.weights, self.params, strict=True)
        self._masters = {id(w): m for w, m in pairs if w is not m}
        # Offloaded: id(weight) -> the step's fp32 gradient sum, on the device.
        self._sums: dict[int, torch.Tensor] = {}
        # Offloaded: the boundary's buckets, staging buffers and side streams.
        self.host = HostPipeline(self.weights, self.params) if self.host_optimizer else None
        for w in self.weights:
            if id(w) in self._masters:
                w.register_post_accumulate_grad_hook(self._into_master)
        if self._ddp is not None:
            self._ddp.register_comm_hook(self, _sum_bucket)
        self.optimizer = make_adamw(self.params, run.optim, fused=True)
        self.grad_clip = run.optim.grad_clip
        self.skip_nonfinite = run.train.skip_nonfinite
        # fp16 (under autocast): without a loss scale its gradients flush to zero
        fp16 = resolve_dtype(run.model.dtype, info.device) == torch.float16
        self.loss_scale = LossScale(info.device) if fp16 else None
        if self.loss_scale is not None:  # in the fused loss's weights: it writes d z in fp16
            module.loss_scale = self.loss_scale.scale

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
        if self.loss_scale is not None:
            loss = loss * self.loss_scale.scale
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
        norm = clip_and_step(
            self.optimizer, self.params, stats, self.grad_clip, self.skip_nonfinite,
            self.loss_scale,
        )  # fmt: skip
        if self._masters:
            weights = [w for w in self.weights if id(w) in self._masters]
            for w in weights:  # DDP's bucket views of the last micro-batch's 16-bit gradients
                w.grad = None
            with torch.no_grad():
                torch._foreach_copy_(weights, [self._masters[id(w)] for w in weights])
        return read_step(stats, norm)  # the update already queued

    def _finish_on_host(self, stats: torch.Tensor) -> StepResult:
        """The offloaded step: clip the device's fp32 sums and read the step's stats and norm
        (the one sync the step has), then, if finite (else nothing changes: weights, moments,
        step count), the pipeline (``HostPipeline.step``)."""
        sums = [self._sums[id(w)] for w in self.weights if id(w) in self._sums]
        if self.loss_scale is not None:
            self.loss_scale.unscale_(sums)
        norm = torch.nn.utils.get_total_norm(sums, foreach=True)
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        # as clip_grad_norm_ scales (bitwise the same as the engine without offload)
        torch._foreach_mul_(sums, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        result = read_step(stats, norm)
        overflow = self.loss_scale is not None and not math.isfinite(result.grad_norm)
        if self.loss_scale is not None:  # an overflow at the scale is never stepped
            self.loss_scale.update(torch.full((), float(overflow), device=norm.device))
        if result.applied or not (self.skip_nonfinite or overflow):
            with torch.no_grad():
                self.host.step(self.optimizer, self._sums)
        # the host has waited for every copy out (its bucket's event), or none was queued:
        # the sums' memory can go back to the compute stream's pool as it is
        self._sums.clear()
        return result

    def describe(self) -> str:
        masters = ", fp32 master weights" if self._masters else ""
        if self.host_optimizer:
            masters = ", optimizer on the host (fp32 master weights and AdamW states in CPU memory)"
        if self.loss_scale is not None:
            masters += ", dynamic fp16 loss scale"
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
        if self.loss_scale is not None:
            state["loss_scale"] = self.loss_scale.state_dict()
        if self._masters:
            state["fp32_masters"] = [m.detach() for m in self.params]
            # The masters' names (module order, not the optimizer's): another layout reads them.
            state["master_names"] = [
                n for n, p in self.module.named_parameters() if p.requires_grad
            ]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.loss_scale is not None and "loss_scale" in state:
            self.loss_scale.load_state_dict(state["loss_scale"])
        saved = state.get("fp32_masters")
        with torch.no_grad():
            for w, m, k in zip(self.weights, self.params, range(len(self.params)), strict=True):
                if w is not m:  # the weights were saved rounded: the masters carry the run on
                    m.copy_(saved[k] if saved is not None else w)
                    w.copy_(m)

    def load_param_states(self, read: StateReader) -> None:
        """Weights and AdamW state from a checkpoint of another layout (``read(name, shape)``)."""
        load_whole_states(self.module, self.optimizer, self._masters, read)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's full weights (rank 0 holds them all here)."""
        return hf_state_dict(self.module.state_dict())


def _add_fp32(total: torch.Tensor | None, grad: torch.Tensor) -> torch.Tensor:
    """``total + grad`` in fp32, in place when there is a total (else ``grad`` as fp32: the
    gradient itself when it is fp32 already)."""
    return grad.float() if total is None else total.add_(grad)


def _fp32_master(weight: torch.nn.Parameter) -> torch.nn.Parameter:
    """``weight`` itself when fp32; else an fp32 copy (``LocalEngine._into_master`` sums its
    gradients)."""
    if weight.dtype == torch.float32:
        return weight
    return torch.nn.Parameter(weight.detach().float().clone())


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
