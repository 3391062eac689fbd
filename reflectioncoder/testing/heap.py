"""What a packed forward + loss leaves held on the CPU's heap (glibc's in-use bytes,
``mallinfo2``: every tensor the autograd graph or a checkpoint keeps): the measure that
bench/bench_activation_memory.py's rows and the memory plan's tests (dense, MLA, MoE) check
``reflectioncoder.memory_plan`` against."""

from __future__ import annotations

import ctypes
import gc
from typing import Any


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def heap_in_use() -> int:
    """Bytes malloc has handed out and not had back (small chunks + mmapped blocks)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def prepare_for(model: Any, policy: str) -> Any:
    """``model`` in training mode with checkpointing ``policy`` (``none``: off), no Liger."""
    from reflectioncoder.model import prepare_model

    on = policy != "none"
    return prepare_model(model, liger=False, gradient_checkpointing=on,
                         checkpointing_policy=policy if on else "full")  # fmt: skip


def synthetic_batch(samples: int, vocab_size: int, seed: int = 0) -> Any:
    """One packed micro-batch of ``samples`` realistic-length reflection samples (step 500 of
    1000: about half the reflection hidden from the student)."""
    from reflectioncoder.data.config import MaskConfig, PackingConfig
    from reflectioncoder.data.packing import pack_rank, plan_step
    from reflectioncoder.testing.synthetic import synthetic_samples

    data = synthetic_samples(samples, vocab_size=vocab_size, seed=seed, instruction=(50, 100),
                             reflection=(200, 400), answer=(50, 100))  # fmt: skip
    mask, packing = MaskConfig(), PackingConfig(max_tokens=10**6)
    (batch,) = pack_rank(plan_step(data, 500, 1000, mask, packing, seed), 0, mask, packing)
    return batch


def held_by_loss(module: Any, batch: Any) -> tuple[int, Any]:
    """(heap bytes ``module(batch)`` leaves held, the loss module's outputs)."""
    gc.collect()
    before = heap_in_use()
    out = module(batch)
    gc.collect()
    return heap_in_use() - before, out


def held_by_forward(model: Any, policy: str, samples: int, vocab_size: int = 512) -> tuple:
    """(heap bytes held after a forward + fused loss, tokens, ``ModelShape``) of ``model``
    (fp32, CPU) under checkpointing ``policy``, over ``samples`` synthetic samples."""
    from reflectioncoder.train.flops import ModelShape
    from reflectioncoder.train.loss_module import ReflectionLossModule

    prepare_for(model, policy)
    batch = synthetic_batch(samples, vocab_size)
    held, out = held_by_loss(ReflectionLossModule(model), batch)
    del out
    return held, batch.num_tokens, ModelShape.from_model(model)
