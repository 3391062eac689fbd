"""Host syncs of ``Trainer.train_step`` on the CPU: none inside a micro-batch, at most one per
optimizer step. Counted with a TorchDispatchMode (data-dependent shapes: nonzero and the ops
built on it; scalar reads) and a TorchFunctionMode (Python reads of a tensor: tolist, item,
bool/int/float, numpy, cpu), each of which waits for the device on CUDA."""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = str(Path(__file__).resolve().parents[1] / "")  # the repository's code: where a sync is
aten = torch.ops.aten
SYNC_OPS = {
    aten.nonzero.default,
    aten.nonzero_static.default,
    aten._local_scalar_dense.default,
    aten.masked_select.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
    aten.equal.default,
    aten.is_nonzero.default,
}
HOST_READS = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu"}


class SyncCounter:
    """Records every host sync (what and where) while active, on this thread."""

    def __init__(self) -> None:
        self.syncs: list[str] = []
        self._reading = 0
        counter = self

        class Functions(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", "")
                read = name in HOST_READS
                if read:
                    counter._record(f"Tensor.{name}")
                    counter._reading += 1
                try:
                    return func(*args, **(kwargs or {}))
                finally:
                    counter._reading -= read

        class Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                bool_index = func is aten.index.Tensor and any(
                    i is not None and i.dtype == torch.bool for i in args[1]
                )
                if (func in SYNC_OPS or bool_index) and not counter._reading:
                    counter._record(str(func))
                return func(*args, **(kwargs or {}))

        self._modes = (Functions(), Ops())

    def _record(self, what: str) -> None:
        stack = traceback.extract_stack()[:-2]
        frames = [f for f in stack if f.filename.startswith(ROOT) and "/.venv/" not in f.filename]
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        self.syncs.append(f"{what} at {where}")

    def __enter__(self) -> SyncCounter:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


def test_the_counter_sees_each_kind_of_sync():
    x = torch.arange(6.0)
    with SyncCounter() as counter:
        x.nonzero()
        x[x > 2]
        float(x.sum())
        x.tolist()
        bool(x.any())
        y = x * 2  # no sync
    assert len(counter.syncs) == 5, counter.syncs
    assert y.shape == x.shape


def test_train_step_syncs_at_most_once_and_never_in_a_micro_batch(tmp_path, seed):
    from test_trainer import tiny_config

    from reflectioncoder.train.trainer import Trainer

    extra = ("packing.max_tokens=160", "logging.split_ce=true", "logging.log_every=1")
    trainer = Trainer(tiny_config(tmp_path, seed, n=12, extra=extra))
    try:
        trainer.train_step()  # the first step prepares itself; later ones on the host thread
        optimizer = trainer.engine.optimizer
        launch = optimizer.step
        for _ in range(2):
            trainer.ahead.pending.result()  # host work of the next step done, off this thread
            micro_batches = len(trainer.ahead.pending.result().batches)
            with SyncCounter() as counter:
                before_step = []  # the syncs counted when the optimizer step was launched

                def step(*a, seen=before_step, counter=counter, **k):
                    seen.append(len(counter.syncs))
                    return launch(*a, **k)

                optimizer.step = step
                trainer.train_step()
            assert micro_batches >= 2
            summary = "\n".join(f"{n} x {s}" for s, n in Counter(counter.syncs).most_common())
            assert len(counter.syncs) == 1, summary  # the stats read after the optimizer step
            assert before_step == [0], (before_step, summary)  # none before it was launched
    finally:
        trainer.close()
