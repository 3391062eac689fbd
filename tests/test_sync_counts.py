"""Host syncs through ``Trainer.train_step`` on the CPU, counted as the issue words it (issue 19,
item 3): one ``TorchDispatchMode`` that counts the ops that wait for the device (``nonzero``
and the ops built on it, ``item`` / scalar reads, boolean indexing) and every copy to the host
(``_to_copy`` to the CPU of a tensor elsewhere, ``copy_`` into a CPU tensor from another
device), plus the Python reads no op dispatch shows on a CPU (``tolist``, ``numpy``, ``cpu``,
``item``, ``bool``/``int``/``float`` of a tensor, through a ``TorchFunctionMode``), from the very
first step (which prepares its own batches on this thread); none inside any micro-batch, at
most one a step, after the optimizer step was launched. (A ``_to_copy`` to the CPU of a CPU
tensor is no host copy: autograd casts every gradient back with its device named.)"""

from __future__ import annotations

import traceback

import pytest
import torch
from test_trainer import tiny_config
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from reflectioncoder.train.trainer import Trainer

aten = torch.ops.aten
WAITS = {
    aten.nonzero.default,
    aten.nonzero_static.default,
    aten._local_scalar_dense.default,
    aten.masked_select.default,
    aten.is_nonzero.default,
    aten.equal.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
}


READS = {"tolist", "numpy", "cpu", "item", "__bool__", "__int__", "__float__", "__index__"}


def _to_host(func, args, kwargs) -> bool:
    if func is aten._to_copy.default:
        device = kwargs.get("device")
        to_cpu = device is not None and torch.device(device).type == "cpu"
        return to_cpu and args[0].device.type != "cpu"
    if func is aten.copy_.default:
        return args[0].device.type == "cpu" and args[1].device.type != "cpu"
    return False


def _where() -> str:
    ours = [f for f in traceback.extract_stack() if "/reflectioncoder/" in f.filename]
    return f"{ours[-1].filename}:{ours[-1].lineno}" if ours else "?"


class Syncs(TorchDispatchMode):
    """Every op that would make the host wait for a GPU, with where our code called it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.reading = 0  # inside a Python read: its own ops are that one sync
        syncs = self

        class Reads(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                read = getattr(func, "__name__", "") in READS
                if read and not syncs.reading:
                    syncs.seen.append(f"Tensor.{func.__name__} at {_where()}")
                syncs.reading += read
                try:
                    return func(*args, **(kwargs or {}))
                finally:
                    syncs.reading -= read

        self._reads = Reads()

    def __enter__(self):
        self._reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self._reads.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bool_index = func is aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1]
        )
        waits = func in WAITS or bool_index or _to_host(func, args, kwargs)
        if waits and not self.reading:
            self.seen.append(f"{func} at {_where()}")
        return func(*args, **kwargs)


def test_the_mode_sees_each_kind():
    x = torch.arange(6.0)
    with Syncs() as syncs:
        x.nonzero()
        x[x > 2]
        x.sum().item()
        x.tolist()
        bool(x.any())
        x.to("cpu", torch.float64)  # none: already on the host
        x * 2  # none
    assert len(syncs.seen) == 5, syncs.seen


CASES = {
    "tiny": (),
    "logging, checkpointing, bf16 masters": (
        "logging.split_ce=true",
        "logging.log_every=1",
        "model.gradient_checkpointing=true",
        "model.dtype=bf16",
        "model.mixed_precision=masters",
    ),
}


def _marked_step(trainer) -> tuple[list[tuple[str, int]], list[str]]:
    """One train_step under ``Syncs``: (each micro-batch's start and the optimizer step's
    launch, with the syncs counted by then), every sync."""
    engine = trainer.engine
    start, launch = engine.start_micro_batch, engine.optimizer.step
    marks: list[tuple[str, int]] = []
    with Syncs() as syncs:

        def mark_start(*a, **k):
            marks.append(("micro-batch", len(syncs.seen)))
            return start(*a, **k)

        def mark_step(*a, **k):
            marks.append(("optimizer step", len(syncs.seen)))
            return launch(*a, **k)

        engine.start_micro_batch, engine.optimizer.step = mark_start, mark_step
        try:
            trainer.train_step()
        finally:
            engine.start_micro_batch, engine.optimizer.step = start, launch
    return marks, syncs.seen


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_sync_in_a_micro_batch_and_at_most_one_a_step(tmp_path, seed, case):
    extra = ("packing.max_tokens=160", *CASES[case])
    trainer = Trainer(tiny_config(tmp_path, seed, n=12, extra=extra))
    try:
        for step in range(3):  # the first step too
            marks, seen = _marked_step(trainer)
            kinds = [kind for kind, _ in marks]
            assert kinds.count("micro-batch") >= 2 and kinds[-1] == "optimizer step", kinds
            # nothing from the first micro-batch's start to the optimizer step's launch
            assert {n for _, n in marks} == {0}, (step, marks, seen)
            assert len(seen) <= 1, (step, seen)
    finally:
        trainer.close()
