"""The one-way flow of a step (issue 19, item 3): each optimizer step is planned and packed
once, on the host (the next one ahead, on the background thread), and ``Trainer.train_step``
runs the prepared micro-batches as they are: no step is planned or packed again."""

from __future__ import annotations

import threading
from collections import Counter

from reflectioncoder.data import packing
from reflectioncoder.train import trainer as trainer_module


def test_each_step_is_planned_and_packed_once(tmp_path, seed, monkeypatch):
    from test_trainer import tiny_config

    calls: Counter = Counter()
    lock = threading.Lock()

    def counted(name, real):
        def call(*args, **kwargs):
            out = real(*args, **kwargs)
            with lock:  # the background thread prepares the next step
                calls[name, out.step if name == "plan" else id(out)] += 1
            return out

        return call

    monkeypatch.setattr(trainer_module, "plan_step", counted("plan", packing.plan_step))
    monkeypatch.setattr(trainer_module, "pack_rank", counted("pack", packing.pack_rank))
    extra = ("packing.max_tokens=160",)
    trainer = trainer_module.Trainer(tiny_config(tmp_path, seed, n=12, extra=extra))
    try:
        steps = trainer.total_steps
        assert steps >= 3
        seen = []
        for _ in range(steps):
            seen.append(trainer.train_step()["step"])
    finally:
        trainer.close()
    assert seen == list(range(1, steps + 1))
    plans = {key[1]: n for key, n in calls.items() if key[0] == "plan"}
    assert plans == dict.fromkeys(range(steps), 1), plans  # every step planned exactly once
    assert sum(n for key, n in calls.items() if key[0] == "pack") == steps
