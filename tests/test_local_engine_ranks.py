"""The single engine on 2 ranks (torchrun over gloo, no DeepSpeed): torch's DDP sums the
gradients in buckets, each launched inside the step's last backward. A recording comm hook
counts them (from the second step on more than one a step, fewer than the parameters; none
outside the last micro-batch's backward; every parameter once). The losses, gradient norms
and final weights equal one process's within test_distributed's tolerances, with fp32 weights
and with bf16 weights and fp32 masters (whose gradients are summed over micro-batches and
ranks in fp32); and a step syncs with the host at most once, as in one process."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import REPO_ROOT, TOLERANCE, _free_port, _overrides, _rows

from reflectioncoder.config_loader import load_config
from reflectioncoder.config_presets import tiny_preset
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.trainer import Trainer

STEPS = 3
TINY_LR = tiny_preset()["optim"]["lr"]
SINGLE = ["distributed.backend=none", f"train.max_steps={STEPS}", "train.epochs=2"]
# bf16 weights round the fp32 masters after each step: a last-bit difference in a sum's order
# can flip a rounding, so bf16 runs compare to bf16 precision.
BF16_TOLERANCE = [("loss", 1e-2, 0.0), ("ce", 1e-2, 0.0), ("grad_norm", 3e-2, 0.0)]


def same_final_weights(a: dict, b: dict, dtype: str, steps: int) -> None:
    """Two runs' final weights agree: fp32 within test_distributed's tolerance, bf16 as below."""
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].dtype == a[k].dtype, k
        if dtype == "fp32":
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
            continue
        # bf16 weights: AdamW moves a weight by about lr a step whatever its gradient's size, so
        # a weight whose tiny gradient changes sign with the bf16 sum's order moves the other
        # way (2 lr a step at most); a few in a thousand may (TEST_SEED=465421214: 3 of 11232)
        diff = (b[k].float() - a[k].float()).abs()
        off = diff > 1e-3 + 2e-2 * a[k].float().abs()
        assert off.float().mean() <= 5e-3, (k, int(off.sum()), diff.numel())
        assert diff.max() <= 2 * TINY_LR * steps + 1e-3, (k, float(diff.max()))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_two_ranks_reduce_in_buckets_during_backward_and_match_one_process(tmp_path, seed, dtype):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 15, seed=seed, generation_fraction=0.2)
    single, multi = tmp_path / "single", tmp_path / "multi"
    extra = SINGLE + [f"model.dtype={dtype}"]
    trainer = Trainer(
        load_config(base="tiny", overrides=_overrides(data, single, seed, "sample") + extra)
    )
    trainer.train()
    n_params = len(trainer.engine.params)
    trainer.close()

    env = dict(os.environ, OMP_NUM_THREADS="1")
    spec = {"overrides": _overrides(data, multi, seed, "sample") + extra, "record": str(multi)}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    args += [f"--master_port={_free_port()}", __file__, json.dumps(spec)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "DDP over 2 ranks" in proc.stderr

    want, got = _rows(single), _rows(multi)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    tolerance = TOLERANCE if dtype == "fp32" else BF16_TOLERANCE
    for w, g in zip(want, got, strict=True):
        assert (g["samples"], g["tokens"]) == (w["samples"], w["tokens"])
        assert not g["skipped"] and math.isfinite(g["loss"])
        for key, rel, abs_ in tolerance:
            assert g[key] == pytest.approx(w[key], rel=rel, abs=abs_), (g["step"], key)
    a = load_file(str(single / "final" / "model.safetensors"))
    b = load_file(str(multi / "final" / "model.safetensors"))
    same_final_weights(a, b, dtype, STEPS)

    for rank in (0, 1):
        record = json.loads((multi / f"buckets-rank{rank}.json").read_text())
        for step in range(STEPS):
            calls = [c for c in record["calls"] if c["step"] == step]
            # DDP's first backward is one bucket: it then sizes them in the order gradients came
            assert 1 < len(calls) < n_params or (step == 0 and len(calls) == 1), calls
            assert all(c["in_backward"] and c["last_micro_batch"] for c in calls), calls
            assert sum(c["params"] for c in calls) == n_params  # each parameter once
        assert record["micro_batches"] > STEPS  # accumulation really happened
    syncs = json.loads((multi / "buckets-rank0.json").read_text())["syncs"]
    assert syncs and all(len(s) <= 1 for s in syncs), syncs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-masters"])
def test_ddp_path_sums_the_micro_batches_as_one_process(seed, dtype, monkeypatch):
    """Fast, in this process: the engine's DDP path on a gloo group of one rank (its comm hook
    and, for bf16, the masters' fp32 sums) gives the gradients and update of the plain engine
    bit for bit, over a step of 3 micro-batches; only the last backward reduces."""
    import torch.distributed as dist
    from test_packed_rows import _batches

    from reflectioncoder.model import build_tiny_llama, prepare_model
    from reflectioncoder.train import distributed, local_engine
    from reflectioncoder.train.loss_module import ReflectionLossModule

    run = load_config(base="tiny", overrides=["model.arch={hidden_size: 32}"])
    model = build_tiny_llama(300, hidden_size=32, num_layers=2, seed=seed).to(dtype)
    prepare_model(model, liger=False)
    # a step of 3 micro-batches (about 1 seed in 30 packs into 2: the next seed then)
    batches = next(b for s in range(seed, seed + 20) if len(b := _batches(s)[1]) >= 3)[:3]
    real = dist.all_reduce
    calls, last = [], [False]

    def recording(tensor, *args, **kwargs):
        calls.append(last[0])
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", recording)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        engines = []
        for ranks in (1, 2):  # 2: the DDP path (the group itself has one rank)
            info = distributed.DistInfo(0, ranks, 0, torch.device("cpu"), deepspeed=False)
            module = ReflectionLossModule(copy.deepcopy(model))
            engines.append(local_engine.LocalEngine(module, run, info))
        for engine in engines:
            for j, batch in enumerate(batches):
                last[0] = j == len(batches) - 1
                engine.start_micro_batch(last[0])
                engine.backward(engine(batch)[0])
        assert calls and all(calls)  # the DDP engine reduced in the last backward only
        plain, ddp = engines
        for a, b in zip(plain.params, ddp.params, strict=True):
            assert a.grad.dtype == torch.float32 and torch.equal(a.grad, b.grad)
        stats = [torch.ones(1, dtype=torch.float64) for _ in engines]
        norms = [engine.finish_step(s).grad_norm for engine, s in zip(engines, stats, strict=True)]
        assert norms[0] == norms[1]
        for a, b in zip(plain.weights, ddp.weights, strict=True):
            assert torch.equal(a, b)
    finally:
        dist.destroy_process_group()


def _driver(spec: dict) -> None:
    """One rank: train with a comm hook that records each call, and count host syncs."""
    from test_host_syncs import SyncCounter

    from reflectioncoder.train import local_engine

    state = {"step": 0, "last": False, "in_backward": False}
    calls: list[dict] = []
    real = local_engine._sum_bucket

    def recording(engine, bucket):
        calls.append(
            {
                "step": state["step"],
                "params": len(bucket.parameters()),
                "in_backward": state["in_backward"],
                "last_micro_batch": state["last"],
            }
        )
        return real(engine, bucket)

    local_engine._sum_bucket = recording
    trainer = Trainer(load_config(base="tiny", overrides=spec["overrides"]))
    engine = trainer.engine
    start, backward, step = engine.start_micro_batch, engine.backward, trainer.train_step
    micro_batches, syncs = [0], []

    def start_micro_batch(last: bool) -> None:
        state["last"] = last
        micro_batches[0] += 1
        start(last)

    def in_backward(loss):
        state["in_backward"] = True
        try:
            backward(loss)
        finally:
            state["in_backward"] = False

    def train_step(*args):  # Trainer.train passes sigterm_noted
        state["step"] = trainer.step
        if trainer.step == 0:  # the first step builds DDP's buckets (a one-time exchange)
            return step(*args)
        trainer.ahead.pending.result()  # the next step's host work, off this thread (as alone)
        with SyncCounter() as counter:
            row = step(*args)
        syncs.append(counter.syncs)
        return row

    engine.start_micro_batch, engine.backward = start_micro_batch, in_backward
    trainer.train_step = train_step
    trainer.train()
    record = {"calls": calls, "micro_batches": micro_batches[0], "syncs": syncs}
    Path(spec["record"], f"buckets-rank{trainer.info.rank}.json").write_text(json.dumps(record))
    trainer.close()


if __name__ == "__main__":  # one rank under torchrun
    import logging

    logging.basicConfig(level=logging.INFO)
    _driver(json.loads(sys.argv[1]))
