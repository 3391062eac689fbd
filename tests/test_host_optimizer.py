"""The one-process engine with its optimizer on the host (``distributed.offload_optimizer``,
what ``auto`` picks for a 7B on one GPU): bf16 weights and the fp32 gradient sums on the device,
fp32 masters and AdamW's m and v in host memory. On the CPU the "device" is the CPU, so the
copies are trivial, but the path runs: the same losses, weights, masters and moments as the
engine without offload (bitwise), a non-finite step changes nothing, and its checkpoints are
the same state as the engine's without offload (resumes across offload on and off)."""

from __future__ import annotations

import copy

import pytest
import torch
from test_trainer import tiny_config

from reflectioncoder.train.trainer import Trainer

# bf16 weights, several micro-batches a step (gradient accumulation), clipping active
BF16 = ("model.dtype=bf16", "packing.max_tokens=200", "optim.lr=1e-3", "optim.grad_clip=0.5")
HOST = ("distributed.offload_optimizer=true",)
DEVICE = ("distributed.offload_optimizer=false",)


def _run(cfg, steps: int, resume: bool = False, save: bool = False) -> tuple[list[dict], Trainer]:
    """``steps`` rows (each with the step's ``backwards``: its micro-batches) and the trainer
    (``save``: a checkpoint after the last step)."""
    trainer = Trainer(cfg, resume=resume)
    engine, backward, calls = trainer.engine, trainer.engine.backward, []
    engine.backward = lambda loss: (calls.append(1), backward(loss))[-1]
    try:
        rows = []
        for _ in range(steps):
            calls.clear()
            rows.append(dict(trainer.train_step(), backwards=len(calls)))
        if save:
            trainer.save()
        return rows, trainer
    finally:
        trainer.close()


def _state(trainer: Trainer) -> tuple[list[torch.Tensor], list[torch.Tensor], list]:
    """Weights, masters and AdamW states (module order)."""
    engine = trainer.engine
    states = [engine.optimizer.state[m] for m in engine.params]
    moments = [(s["exp_avg"], s["exp_avg_sq"], float(s["step"])) for s in states]
    return [w.detach() for w in engine.weights], [m.detach() for m in engine.params], moments


def _assert_equal(x: tuple, y: tuple) -> None:
    """Two ``_state``s are bitwise equal."""
    for xs, ys in zip(x, y, strict=True):
        for u, v in zip(xs, ys, strict=True):
            if isinstance(u, tuple):
                assert torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) and u[2] == v[2]
            else:
                assert torch.equal(u, v)


def _assert_same(a: Trainer, b: Trainer) -> None:
    _assert_equal(_state(a), _state(b))


# HOST_BUCKET_BYTES (the tiny model's weights hold 128 to 45,184 bytes of fp32): one bucket a
# weight, several weights in most buckets (the largest alone), one bucket for all
BUCKETS = {"per_weight": 1, "several": 8192, "one": 2**40}


def _bucket_count(engine, kind: str) -> int:
    """How many buckets ``kind`` gives the engine's weights (checked against what it made)."""
    n = len(engine.host.buckets)
    if kind == "per_weight":
        assert n == len(engine.weights)
    elif kind == "one":
        assert n == 1
    else:
        assert 1 < n < len(engine.weights) and max(len(b.weights) for b in engine.host.buckets) > 1
    assert [w for b in engine.host.buckets for w in b.weights] == engine.weights  # module order
    return n


@pytest.mark.parametrize("buckets", list(BUCKETS))
def test_host_optimizer_gives_the_device_engines_steps_bitwise(
    tmp_path, seed, monkeypatch, buckets
):
    from reflectioncoder.train import host_optimizer

    monkeypatch.setattr(host_optimizer, "HOST_BUCKET_BYTES", BUCKETS[buckets])
    steps = 4
    device, on_device = _run(tiny_config(tmp_path / "d", seed, extra=(*BF16, *DEVICE)), steps)
    host, on_host = _run(tiny_config(tmp_path / "h", seed, extra=(*BF16, *HOST)), steps)
    assert "optimizer on the host" in on_host.engine.describe()
    assert "on the host" not in on_device.engine.describe()
    assert on_host.engine.offloads_optimizer and not on_device.engine.offloads_optimizer
    assert all(m.device.type == "cpu" and m.dtype == torch.float32 for m in on_host.engine.params)
    assert all(w.dtype == torch.bfloat16 for w in on_host.engine.weights)
    assert max(r["backwards"] for r in host) > 1  # the sums accumulate over micro-batches
    assert any(r["grad_norm"] > 0.5 for r in host)  # clipping scaled some step
    for d, h in zip(device, host, strict=True):
        assert (h["loss"], h["grad_norm"], h["tokens"]) == (d["loss"], d["grad_norm"], d["tokens"])
    _assert_same(on_device, on_host)
    assert not on_host.engine._sums  # the step's sums dropped once stepped
    _bucket_count(on_host.engine, buckets)
    assert all(m.grad is None for m in on_host.engine.params)  # set for its bucket's step only


@pytest.mark.parametrize("buckets", ["per_weight", "several"])
def test_a_nonfinite_step_changes_nothing_on_the_host(tmp_path, seed, monkeypatch, buckets):
    from reflectioncoder.train import host_optimizer

    monkeypatch.setattr(host_optimizer, "HOST_BUCKET_BYTES", BUCKETS[buckets])
    trainer = Trainer(tiny_config(tmp_path, seed, extra=(*BF16, *HOST)))
    _bucket_count(trainer.engine, buckets)
    backward = trainer.engine.backward
    try:
        assert not trainer.train_step()["skipped"]
        before = copy.deepcopy(_state(trainer))
        # a NaN gradient (the loss's stats stay finite): the norm on the device says skip
        trainer.engine.backward = lambda loss: backward(loss * float("nan"))
        row = trainer.train_step()
        assert row["skipped"] and row["loss"] == row["loss"]  # finite loss, NaN norm
        _assert_equal(before, _state(trainer))
        trainer.engine.backward = backward
        assert not trainer.engine._sums  # the NaN sums are not carried into the next step
        assert not trainer.train_step()["skipped"]
    finally:
        trainer.close()


@pytest.mark.parametrize("first", [HOST, DEVICE], ids=["from_host", "from_device"])
def test_resume_onto_the_host_optimizer_equals_the_uninterrupted_run(tmp_path, seed, first):
    """Saved at step 2 by an offloaded (or not) engine, resumed offloaded: steps 3-4 and the
    final state equal the uninterrupted offloaded run's."""
    want, straight = _run(tiny_config(tmp_path / "s", seed, extra=(*BF16, *HOST)), 4)
    _run(tiny_config(tmp_path / "r", seed, extra=(*BF16, *first)), 2, save=True)
    got, resumed = _run(tiny_config(tmp_path / "r", seed, extra=(*BF16, *HOST)), 2, resume=True)
    assert resumed.step == 4 and resumed.engine.offloads_optimizer
    assert [r["loss"] for r in got] == [r["loss"] for r in want[2:]]
    _assert_same(straight, resumed)


def test_the_device_engine_resumes_an_offloaded_checkpoint(tmp_path, seed):
    _, straight = _run(tiny_config(tmp_path / "s", seed, extra=(*BF16, *DEVICE)), 3)
    _run(tiny_config(tmp_path / "r", seed, extra=(*BF16, *HOST)), 2, save=True)
    _, resumed = _run(tiny_config(tmp_path / "r", seed, extra=(*BF16, *DEVICE)), 1, resume=True)
    assert resumed.step == 3 and not resumed.engine.offloads_optimizer
    _assert_same(straight, resumed)


def test_several_ranks_without_deepspeed_are_refused_naming_the_field(tmp_path, seed):
    from reflectioncoder.errors import ConfigError, one_line
    from reflectioncoder.train.distributed import DistInfo
    from reflectioncoder.train.local_engine import LocalEngine

    cfg = tiny_config(tmp_path, seed, extra=HOST)
    two = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), deepspeed=False)
    with pytest.raises(ConfigError) as err:
        LocalEngine(torch.nn.Linear(2, 2), cfg, two)  # refused before any process group is used
    line, _ = one_line(err.value)
    assert line.startswith("distributed.offload_optimizer: true needs one rank"), line


def test_several_ranks_are_refused_before_the_model_loads(tmp_path, seed, monkeypatch):
    """A 7B takes minutes to load: the refusal comes right after the launcher's ranks are read."""
    from reflectioncoder.errors import ConfigError
    from reflectioncoder.train import distributed, trainer

    two = distributed.DistInfo(0, 2, 0, torch.device("cpu"), deepspeed=False)
    monkeypatch.setattr(distributed, "setup", lambda *args, **kwargs: two)
    monkeypatch.setattr(trainer, "build_model", lambda *args: pytest.fail("model built"))
    with pytest.raises(ConfigError, match="true needs one rank"):
        Trainer(tiny_config(tmp_path, seed, extra=HOST))


@pytest.mark.parametrize(
    "deepspeed, stage, planned",
    [(True, 0, False), (True, 1, "auto"), (False, 0, "auto")],
    ids=["deepspeed-zero0", "deepspeed-zero1", "one-process"],
)
def test_auto_offload_is_planned_only_where_the_engine_can(
    tmp_path, seed, monkeypatch, deepspeed, stage, planned
):
    """``offload_optimizer: auto`` reaches the planner (which may turn it on, on a GPU) on an
    engine that can offload; DeepSpeed's ZeRO-0 cannot: ``can_offload``'s stage 0 is the
    one-process engine, so the trainer plans it off there."""
    from reflectioncoder import memory_plan as mp
    from reflectioncoder.model import build_tiny_llama
    from reflectioncoder.train import distributed, placement

    seen, plan_run = [], mp.plan_run
    monkeypatch.setattr(
        mp, "plan_run", lambda *a, **k: (seen.append(k["offload"]), plan_run(*a, **k))[1]
    )
    info = distributed.DistInfo(0, 1, 0, torch.device("cpu"), deepspeed=deepspeed)
    backend = "deepspeed" if deepspeed else "none"
    extra = (f"distributed.backend={backend}", f"distributed.zero_stage={stage}")
    cfg = tiny_config(tmp_path, seed, extra=extra)
    model = build_tiny_llama(300, hidden_size=32, num_layers=2, seed=seed)
    placement.plan_memory(cfg, model, info, torch.float32)
    assert seen == [planned]
