"""``LocalEngine``: plain PyTorch AdamW in one process, or on every rank under torchrun (torch's
DDP), and its optimizer on the host (``distributed.offload_optimizer``: the bucket pipeline of
``_step_on_host``)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from reflectioncoder.config import RunConfig
from reflectioncoder.errors import ConfigError
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
        step count), the pipeline (``_step_on_host``)."""
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
