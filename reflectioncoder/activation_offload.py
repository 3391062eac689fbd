"""Activation offload (the ``offload`` layer policy): a decoder layer keeps what ``save_gemms``
keeps, its GEMM and attention outputs that a backward reads (``KeptOutputs``), but in host
memory.

Forward: the layer runs under torch's non-reentrant checkpoint with our own pair of dispatch
modes (``context_fn``) in place of torch's selective-checkpoint pair: each GEMM / attention
output is copied to pinned host memory on a side CUDA stream as soon as it is made (the side
stream waits on an event of the compute stream, never the other way round), and the device
copy is released to the allocator once the copy is done (``record_stream``). Backward: when the
gradient of an offloaded layer's output arrives (a tensor hook: that layer's backward is next),
the saved outputs of the next offloaded layer below it are copied back on the side stream (the
planner spaces offloaded layers so that the layers between cover the copy); a hook on the
decoder stack's output (after its final norm) does the same for the last offloaded layer, ahead
of the whole decoder backward. The recompute (torch's checkpoint) reruns the element-wise ops
and takes each GEMM / attention output from the host copy: the compute stream waits on the
prefetch's event, which costs time only when the prefetch is late. Nothing here reads a tensor
on the host, so no host sync is added (the pinned buffers come from torch's caching host
allocator).

Ahead of a backward, at most two offloaded layers' outputs are on the device (the one in use,
the one arriving); ``memory_plan.activation_bytes`` counts two (one still leaving
at the forward's end). The planner offloads the first layers (their backward comes last, so
their copies have the whole forward to leave and most of the backward to come back).

Memory: an output freed in the forward returns to the allocator once its copy's event has
completed (``record_stream``; torchtune's OffloadActivations keeps a stash of recent outputs
and waits on their events instead: the same bound, held here by the planner's rule that the
copies keep up); the copies back are allocated on the side stream, whose pool holds the
offloaded layers in flight beside the compute stream's (counted as ``OFFLOAD_IN_FLIGHT``).

On the CPU host and device are the same memory: each output is copied into a fresh tensor and
the original dropped, so the same path (store, restore, recompute) runs and is tested.

Compile: offloaded layers are left out of ``model.compile_layers`` (eager: the dispatch modes
and the hooks run in Python); the other layers compile as before.
"""

from __future__ import annotations

import functools
import weakref

import torch
from torch.utils._pytree import tree_leaves, tree_map

from reflectioncoder.activation_checkpointing import KeptOutputs


class _Saved:
    """One saved output: a pinned host copy (CUDA) or a copy (CPU), and its way back."""

    def __init__(self, tensor: torch.Tensor, stream: torch.cuda.Stream | None) -> None:
        self.device = tensor.device
        self.stream = stream
        self.back: torch.Tensor | None = None
        if stream is None:  # host == device: a copy stands for the host's
            self.host = tensor.detach().clone()
            return
        self.host = torch.empty_strided(  # the same strides: the recompute gets the same tensor
            tensor.size(), tensor.stride(), dtype=tensor.dtype, device="cpu", pin_memory=True
        )
        stream.wait_stream(torch.cuda.current_stream(self.device))  # the output is written
        with torch.cuda.stream(stream):
            self.host.copy_(tensor.detach(), non_blocking=True)
        tensor.record_stream(stream)  # its memory is reused only once the copy is done

    def prefetch(self) -> None:
        stream = self.stream
        if self.back is not None:
            return
        if stream is None:
            self.back = self.host
            return
        with torch.cuda.stream(stream):  # after the copy out on the same stream
            self.back = self.host.to(self.device, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record(stream)

    def take(self) -> torch.Tensor:
        self.prefetch()  # a late prefetch starts here
        if self.stream is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(self.ready)  # the compute stream waits only on a late copy
            self.back.record_stream(compute)
        return self.back


class LayerStore(KeptOutputs):
    """The saved outputs of one offloaded layer's forward, those a backward reads
    (``KeptOutputs``), in host memory. An output that the same layer's last forward found
    unread (``OffloadSchedule.unread``) waits on the device for the forward's end instead of
    leaving at once: it is dropped there, or, if read after all, sent then."""

    def __init__(self, schedule: OffloadSchedule, index: int | None = None) -> None:
        super().__init__(schedule.keep)
        self.schedule = schedule
        self.index = index
        self.unread = schedule.unread.get(index, frozenset())
        self.bytes = 0  # what the host holds once the forward is done

    def _send(self, out):
        def one(x):
            if not isinstance(x, torch.Tensor):
                return x  # sizes: kept as they are
            return _Saved(x, self.schedule.stream_for(x.device))

        return tree_map(one, out)

    def hold(self, key, out) -> None:
        if key in self.unread:
            self.saved[key] = _Waiting(out.detach() if isinstance(out, torch.Tensor) else out)
        else:
            self.saved[key] = self._send(out)

    def forward_done(self) -> frozenset:
        unread = super().forward_done()
        for key, out in self.saved.items():
            if isinstance(out, _Waiting):
                self.saved[key] = self._send(out.out)
        held = [s.host for s in tree_leaves(list(self.saved.values())) if isinstance(s, _Saved)]
        self.bytes = sum(h.numel() * h.element_size() for h in held)
        if self.index is not None:
            self.schedule.unread[self.index] = unread
        return unread

    def prefetch(self) -> None:
        for out in self.saved.values():
            tree_map(lambda s: s.prefetch() if isinstance(s, _Saved) else s, out)

    def restore(self, key):
        out = self.saved.get(key)
        return (
            None
            if out is None
            else tree_map(lambda s: s.take() if isinstance(s, _Saved) else s, out)
        )


class _Waiting:
    """An output held on the device until the forward's end (``LayerStore.hold``)."""

    def __init__(self, out) -> None:
        self.out = out


class OffloadSchedule:
    """A model's offloaded layers: one side stream, and the stores of the last forward (weakly:
    the autograd graph owns them, so they go with it)."""

    def __init__(self, keep: frozenset) -> None:
        self.keep = keep
        self.stores: dict[int, weakref.ref] = {}
        self.unread: dict[int, frozenset] = {}  # per layer, what its last forward dropped
        self.streams: dict[torch.device, torch.cuda.Stream] = {}

    def stream_for(self, device: torch.device) -> torch.cuda.Stream | None:
        """The side stream of a CUDA device (made on first use, so a model moved after its
        plan was applied still offloads); None for the CPU (and its tensors, e.g. seeds)."""
        if device.type != "cuda":
            return None
        if device not in self.streams:
            self.streams[device] = torch.cuda.Stream(device)
        return self.streams[device]

    def run_layer(self, index: int, fn, *args):
        """``_gradient_checkpointing_func`` of offloaded layer ``index``."""
        from torch.utils.checkpoint import checkpoint

        store = LayerStore(self, index)
        self.stores[index] = weakref.ref(store)
        out = checkpoint(fn, *args, use_reentrant=False, context_fn=store.contexts)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(functools.partial(self._backward_reaches, index))
        return out

    def prefetch(self, index: int) -> None:
        store = self.stores[index]() if index in self.stores else None
        if store is not None:
            store.prefetch()

    def _backward_reaches(self, index: int, grad: torch.Tensor) -> None:
        below = [i for i in self.stores if i < index]
        if below:  # the next offloaded layer down comes back while the layers above it run
            self.prefetch(max(below))

    def backward_starts(self, grad: torch.Tensor) -> None:
        if self.stores:
            self.prefetch(max(self.stores))

    def offloaded_bytes(self) -> int:
        """Bytes the last forward sent to the host (the CPU bench reads it)."""
        return sum(s.bytes for ref in self.stores.values() if (s := ref()) is not None)


def _hook_norm_output(schedule: OffloadSchedule, module, args, out) -> None:
    out = getattr(out, "last_hidden_state", out)  # the decoder stack's output
    if isinstance(out, torch.Tensor) and out.requires_grad:
        out.register_hook(schedule.backward_starts)


def attach(model: torch.nn.Module, layers: list[int], keep: frozenset) -> OffloadSchedule | None:
    """Offload decoder ``layers`` (indices) of ``model``; detach any earlier schedule first.
    Returns the schedule (also ``model.rc_offload``), None when ``layers`` is empty."""
    handle = getattr(model, "rc_offload_norm_hook", None)
    if handle is not None:
        handle.remove()
    model.rc_offload_norm_hook = None
    model.rc_offload = None
    if not layers:
        return None
    from reflectioncoder.decoder_layout import decoder_stack, require_layers

    schedule = OffloadSchedule(keep)
    decoder = require_layers(model)
    for index in layers:
        decoder[index]._gradient_checkpointing_func = functools.partial(schedule.run_layer, index)
    # the last offloaded layer comes back during the layers above it: from when the backward
    # reaches the stack's output (after its final norm: Llama's norm, GPT-2's ln_f, ...)
    model.rc_offload_norm_hook = decoder_stack(model).register_forward_hook(
        functools.partial(_hook_norm_output, schedule)
    )
    model.rc_offload = schedule
    return schedule
