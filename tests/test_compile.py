"""Regional torch.compile of the decoder layers (``model.compile_layers``): zero graph breaks
and no recompiles across micro-batches of different lengths and segment counts, counted by
torch._dynamo, and the eager model's loss and gradients. ``aot_eager`` traces what inductor
would be given (dynamo and AOTAutograd, the custom op's forward and backward) without
building C++ kernels (inductor on this CPU: the same counts, gradients within 1e-7)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from test_packed_rows import _batches
from torch._dynamo.utils import counters

from reflectioncoder.model import build_tiny_llama, compile_layers, prepare_model
from reflectioncoder.train.loss_module import ReflectionLossModule


@pytest.mark.parametrize(
    "checkpointing, fused",
    [(False, False), pytest.param(True, False, marks=pytest.mark.slow),
     pytest.param(False, True, marks=pytest.mark.slow)],
    ids=["plain", "checkpointing", "fused-projections"],
)  # fmt: skip
def test_compiled_layers_never_break_nor_recompile(seed, checkpointing, fused):
    torch._dynamo.reset()
    counters.clear()
    model = build_tiny_llama(300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             seed=seed)  # fmt: skip
    prepare_model(model, liger=False, gradient_checkpointing=checkpointing, fused_projections=fused)
    eager = copy.deepcopy(model)
    compile_layers(model, backend="aot_eager")
    matches_eager_without_breaks(model, eager, seed)
    assert counters["stats"]["unique_graphs"] == 1  # one graph for every layer and batch
    assert counters["frames"]["total"] == 1  # compiled once: no recompile


def matches_eager_without_breaks(model, eager, seed: int) -> None:
    """Three micro-batches of different lengths through the compiled ``model`` and its eager
    copy: the same losses and gradients, and no graph break."""
    for batch in _varied_batches(seed):
        loss = ReflectionLossModule(model)(batch)[0]
        loss.backward()
        want = ReflectionLossModule(eager)(batch)[0]
        want.backward()
        torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    assert dict(counters["graph_break"]) == {}
    for (name, p), q in zip(model.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def _varied_batches(seed: int) -> list:
    """Three micro-batches of different lengths: the first data seed from ``seed`` with them."""
    for k in range(50):
        batches = _batches(seed + k)[1][:3]
        if len({b.num_tokens for b in batches}) >= 3:
            return batches
    raise AssertionError(f"no seed in {seed}..{seed + 49} gives three micro-batch lengths")


@pytest.mark.slow
def test_compiled_save_gemms_keeps_the_attention_output(seed, monkeypatch):
    """``save_gemms`` keeps the attention's output: compiled (the custom op; SDPA on the CPU,
    whose backward reruns the forward), a micro-batch runs the attention forward twice (the
    forward, and the custom backward's rerun) as with no checkpointing, not a third time in
    the layer's recompute as ``full`` does."""
    runs = attention_forwards_per_policy(seed, counted_attention_forwards(monkeypatch))
    assert runs == {"none": 2, "save_gemms": 2, "full": 3}


def counted_attention_forwards(monkeypatch) -> list:
    """A list that gets an entry each time the custom op's attention runs its forward."""
    from reflectioncoder.kernels import varlen_attention_op

    calls = []
    attention = varlen_attention_op.varlen_attention
    monkeypatch.setattr(
        varlen_attention_op,
        "varlen_attention",
        lambda *a, **k: calls.append(1) or attention(*a, **k),
    )
    return calls


def attention_forwards_per_policy(
    seed: int,
    calls: list,
    attention: str = "auto",
    policies: tuple[str, ...] = ("none", "save_gemms", "full"),
    backward_ops: dict | None = None,
) -> dict:
    """``len(calls)`` (the attention forwards counted there) for one micro-batch's forward and
    backward through a compiled one-layer model, per checkpointing policy; ``backward_ops``:
    filled with the aten ops each policy's backward runs (op name -> calls)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    from reflectioncoder import activation_checkpointing as ac

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = Counter()

        @classmethod
        def ignore_compile_internals(cls) -> bool:
            # Without this, dynamo (torch 2.11) runs the compiled layer's recompute eager
            # under the mode, its saved tensors differ from the compiled forward's, and
            # ``full`` raises CheckpointError in backward (torch 2.13 runs it compiled).
            return True

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    batch = _varied_batches(seed)[0]
    runs = {}
    for policy in policies:
        torch._dynamo.reset()
        model = build_tiny_llama(300, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                                 seed=seed)  # fmt: skip
        prepare_model(model, liger=False, attention=attention)
        ac.apply_plan(model, (policy,))
        compile_layers(model, backend="aot_eager")
        calls.clear()
        loss = ReflectionLossModule(model)(batch)[0]
        with Count() as count:
            loss.backward()
        runs[policy] = len(calls)
        if backward_ops is not None:
            backward_ops[policy] = count.ops
    return runs
