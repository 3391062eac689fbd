"""The one-process engine's optimizer on the host (``distributed.offload_optimizer``, one rank):
every weight's fp32 master and AdamW's m and v in host memory, stepped by torch's fused CPU
AdamW bucket by bucket as the device's fp32 gradient sums arrive (``HostPipeline``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from reflectioncoder.config import RunConfig
from reflectioncoder.errors import ConfigError
from reflectioncoder.train.distributed import DistInfo

# The offloaded boundary's buckets (``HostPipeline.step``): up to 200 MiB of fp32 sums
# each, enough for a copy to run at the link's rate, little against the whole model's AdamW on
# the host (the pipeline's fill and drain: one bucket out and one back, about 6 ms at 7B).
HOST_BUCKET_BYTES = 200 * 2**20


class HostPipeline:
    """The boundary between the device's sums and the host's AdamW: the weights in buckets
    (module order, ``HOST_BUCKET_BYTES`` of fp32 sums each), two staging buffers for the way
    back, and side CUDA streams for the copies (None on the CPU: plain blocking copies)."""

    def __init__(self, weights: list[torch.nn.Parameter], masters: list[torch.nn.Parameter]):
        self.buckets = _host_buckets(weights, masters, HOST_BUCKET_BYTES)
        largest = max(b.staging_bytes for b in self.buckets)
        pinned = _pinned(weights[0])
        # the masters' way back, two in turn: one fills while the other's copy runs
        self._staging = [_Staging(largest, pinned) for _ in range(2)]
        # side streams for the boundary's copies; None: plain blocking copies (the CPU)
        self.copy_streams = _CopyStreams.beside(weights[0].device)

    def step(self, optimizer: torch.optim.Optimizer, sums: dict[int, torch.Tensor]) -> None:
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
        buckets = [b for b in self.buckets if any(id(w) in sums for w in b.weights)]
        landed = [self._send_out(b, sums) for b in buckets]
        for k, (bucket, sums_here) in enumerate(zip(buckets, landed, strict=True)):
            _wait(sums_here)
            self._step_bucket(bucket, optimizer, sums)
            self._send_back(bucket, self._staging[k % 2], sums)
        if streams is not None:
            streams.join()

    def _send_out(
        self, bucket: _HostBucket, sums: dict[int, torch.Tensor]
    ) -> torch.cuda.Event | None:
        """Queue ``bucket``'s sums into its pinned host gradients; the event of their landing."""
        out = self.copy_streams.out if self.copy_streams is not None else None
        with _on(out):
            for w, grad in zip(bucket.weights, bucket.grads, strict=True):
                if id(w) in sums:
                    grad.copy_(sums[id(w)], non_blocking=out is not None)
        return _recorded(out)

    def _step_bucket(
        self, bucket: _HostBucket, optimizer: torch.optim.Optimizer, sums: dict[int, torch.Tensor]
    ) -> None:
        """The host's AdamW over ``bucket`` only: the other masters have no gradient (AdamW
        leaves them alone), nor do the bucket's weights that had none this step."""
        for w, master, grad in zip(bucket.weights, bucket.masters, bucket.grads, strict=True):
            master.grad = grad if id(w) in sums else None
        optimizer.step()
        for master in bucket.masters:
            master.grad = None

    def _send_back(
        self, bucket: _HostBucket, staging: _Staging, sums: dict[int, torch.Tensor]
    ) -> None:
        """Cast ``bucket``'s stepped masters into ``staging`` on the host (2 bytes a parameter
        cross the link), once its previous copy has read it, and queue them into the weights."""
        back = self.copy_streams.back if self.copy_streams is not None else None
        _wait(staging.read)
        stepped = [(w, m, staging.view(w, off)) for w, m, off in bucket.returns() if id(w) in sums]
        for _, master, view in stepped:
            view.copy_(master)  # the cast, on the host
        with _on(back):
            for w, _, view in stepped:
                w.copy_(view, non_blocking=back is not None)
        staging.read = _recorded(back)


def host_master(weight: torch.nn.Parameter) -> torch.nn.Parameter:
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
