"""The fused loss's forward alone (issue 20, item 3), through the public entry point on fresh
random inputs, each way of asking for it (``torch.no_grad()``, inputs that do not require
grad, ``need_grad=False``): the full path's loss, no graph, no d h / d W workspace, live memory
bounded by the chunk (not growing with N as the logits would), and on the CPU no slower than
the reference's forward in the same run (slow)."""

from __future__ import annotations

import time
import weakref

import pytest
import torch
from reflectioncoder.kernels import fused_linear_reflection_loss
from reflectioncoder.kernels.fused_loss_schedule import CPU_BUDGET
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """The peak bytes of CPU storages allocated while active and still alive, and the shapes
    of every tensor an op made in new storage; ``known`` tensors' storages (the inputs, and
    views of them) are not counted."""

    def __init__(self, known=()) -> None:
        super().__init__()
        self._keys = {t.untyped_storage()._cdata for t in known}
        self.live = self.peak = 0
        self.shapes: list[tuple[int, ...]] = []

    def _free(self, key: int, nbytes: int) -> None:
        self._keys.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if storage._cdata not in self._keys:
                self.shapes.append(tuple(t.shape))
                self._keys.add(storage._cdata)
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, storage._cdata, storage.nbytes())
        return out


def _inputs(n: int, d: int, v: int, seed: int, grad: bool = True):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen).requires_grad_(grad)
    weight = (torch.randn(v, d, generator=gen) * d**-0.5).requires_grad_(grad)
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[torch.rand(n, generator=gen) < 0.1] = -100
    pairs = torch.stack([torch.arange(n // 4), torch.arange(n // 4) + n // 2], 1)
    labelled = (targets != -100).float()
    ce_weight = labelled / labelled.sum()
    kl_weight = torch.full((n // 4,), 4.0 / n)
    return hidden, weight, targets, ce_weight, pairs, kl_weight


def _no_grad(args):
    with torch.no_grad():
        return fused_linear_reflection_loss(*args)


def _detached(args):
    return fused_linear_reflection_loss(*(a.detach() for a in args))


def _flag(args):
    return fused_linear_reflection_loss(*args, need_grad=False)


WAYS = {"torch.no_grad()": _no_grad, "inputs without grad": _detached, "need_grad=False": _flag}


@pytest.mark.parametrize("way", sorted(WAYS))
def test_forward_only_is_the_full_paths_loss_without_gradient_work(seed, way):
    n, d, v = 3000, 96, 6000  # several chunks (CPU chunk: 2048 rows at most)
    args = _inputs(n, d, v, seed)
    full, full_parts = fused_linear_reflection_loss(*args)
    full.backward()
    hidden, weight = args[:2]
    with LiveBytes(known=args) as forward:
        loss, parts = WAYS[way](args)
    assert torch.equal(loss, full.detach()) and loss.grad_fn is None
    assert torch.equal(parts["ce"], full_parts["ce"])
    assert torch.equal(parts["kl"], full_parts["kl"])
    # no gradient buffer: nothing shaped like d h (N, D) or d W (V, D)
    assert (n, d) not in forward.shapes and (v, d) not in forward.shapes
    hidden.grad = weight.grad = None
    with LiveBytes(known=args) as both:
        fused_linear_reflection_loss(*args)[0].backward()
    assert (n, d) in both.shapes and (v, d) in both.shapes  # what the check above would see
    assert forward.peak < both.peak


def test_forward_only_memory_is_bounded_by_a_chunk(seed):
    """Live memory of the loss alone: at most the chunk's logits budget and a few row-sized
    vectors; four times the rows add no logits (the full (N, V) logits would add 3 x 94 MiB)."""
    d, v = 64, 6000
    peaks = {}
    for n in (4096, 16384):
        args = _inputs(n, d, v, seed, grad=False)
        with LiveBytes(known=args) as live:
            fused_linear_reflection_loss(*args)
        peaks[n] = live.peak
    chunk = CPU_BUDGET.logits_bytes
    assert peaks[4096] <= 1.5 * chunk, peaks
    growth = peaks[16384] - peaks[4096]
    assert growth < 0.1 * (16384 - 4096) * v * 4, peaks  # < a tenth of the logits' growth
    assert growth <= 0.1 * chunk, peaks


@pytest.mark.slow
def test_forward_only_is_no_slower_than_the_reference_forward_on_cpu(seed):
    """The same run, the same inputs, one thread: the loss alone against the full-logit
    recipe's forward under no_grad (tests/reference), each the best of 5 in CPU time."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from reference.loss import recipe_loss

    hidden, weight, targets, ce_weight, pairs, kl_weight = _inputs(1024, 256, 8192, seed)
    args = (hidden, weight, targets, ce_weight, pairs, kl_weight)

    def best(fn) -> float:
        times = []
        for _ in range(5):
            t0 = time.thread_time()
            with torch.no_grad():
                fn()
            times.append(time.thread_time() - t0)
        return min(times)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = best(lambda: fused_linear_reflection_loss(*args))
        reference = best(lambda: recipe_loss(hidden, weight, targets, pairs))
    finally:
        torch.set_num_threads(threads)
    assert ours <= 1.0 * reference, (ours, reference)
