"""torch's FSDP2 as an engine (``distributed.backend: fsdp``), over gloo on the CPU.

On 2 ranks (torchrun) it logs the single engine's losses and gradient norms and ends with its
weights (fp32: test_distributed's tolerances; bf16 weights with fp32 masters: the bf16 rule),
a NaN step skipped alike, at most one host sync a step; its export loads into a fresh model.
A relaunch resumes its sharded checkpoint (on the same ranks, on one, and from the single
engine's) and continues as the uninterrupted run. In one process (a gloo group of one): one
step of 3 micro-batches gives the single engine's gradients, norm and update; what it does not
support is refused in one line before the model loads."""

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
import torch.distributed as dist
from safetensors.torch import load_file
from test_distributed import REPO_ROOT, TOLERANCE, _overrides, _rows, poison_step
from test_local_engine_ranks import BF16_TOLERANCE, same_final_weights

from reflectioncoder.config_loader import load_config
from reflectioncoder.memory_plan import FSDP_GATHERED_BYTES
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.trainer import Trainer

STEPS, STOP, POISON = 4, 2, 1
# torchrun's own rendezvous on a port it binds (localhost:0): a port picked here, closed and
# handed over (_free_port) could be taken meanwhile by another test's launch on a busy machine
STANDALONE = ["--standalone"]
FSDP = ["distributed.backend=fsdp"]
SINGLE = ["distributed.backend=none"]
COMMON = [f"train.max_steps={STEPS}", "train.epochs=2"]


def _train(overrides: list[str], poison: int | None = None) -> Trainer:
    trainer = Trainer(load_config(base="tiny", overrides=overrides))
    if poison is not None:
        poison_step(trainer, poison)
    trainer.train()
    trainer.close()
    return trainer


def _torchrun(spec: dict, ranks: int = 2) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}"]
    args += [*STANDALONE, __file__, json.dumps(spec)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stderr


def _same_rows(want: list[dict], got: list[dict], tolerance) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for w, g in zip(want, got, strict=True):
        assert (g["samples"], g["tokens"]) == (w["samples"], w["tokens"]), g["step"]
        assert g["skipped"] == w["skipped"], g["step"]
        if g["skipped"]:
            assert not math.isfinite(g["loss"]) and not math.isfinite(w["loss"])
            continue
        for key, rel, abs_ in tolerance:
            assert g[key] == pytest.approx(w[key], rel=rel, abs=abs_), (g["step"], key)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_two_ranks_match_the_single_engine_and_export(tmp_path, seed, dtype):
    from transformers import AutoModelForCausalLM

    data = write_toy_jsonl(tmp_path / "toy.jsonl", 15, seed=seed, generation_fraction=0.2)
    single, multi = tmp_path / "single", tmp_path / "multi"
    extra = COMMON + [f"model.dtype={dtype}"]
    if dtype == "bf16":  # FSDP's gathers under selective checkpointing's recompute too
        extra += ["model.gradient_checkpointing=true", "model.checkpointing_policy=save_gemms"]
    _train(_overrides(data, single, seed, "sample") + extra + SINGLE, POISON)
    overrides = _overrides(data, multi, seed, "sample") + extra + FSDP
    spec = {"overrides": overrides, "poison": POISON, "record": str(multi)}
    log = _torchrun(spec)
    assert "fsdp2 (fully_shard per layer, 2 ranks)" in log

    want, got = _rows(single), _rows(multi)
    assert [r["skipped"] for r in got] == [k == POISON for k in range(STEPS)]
    _same_rows(want, got, TOLERANCE if dtype == "fp32" else BF16_TOLERANCE)
    assert got[-1]["loss"] != got[0]["loss"]  # it really trained
    records = [json.loads((multi / f"rank{r}.json").read_text()) for r in (0, 1)]
    syncs = records[0]["syncs"]
    assert syncs and all(len(s) <= 1 for s in syncs), syncs
    # masters, m and v sharded: 12 bytes a parameter over the 2 ranks (rows split unevenly)
    assert sum(r["held"] for r in records) == 12 * records[0]["params"]
    assert all(r["held"] < 0.55 * 12 * r["params"] for r in records), records
    a = load_file(str(single / "final" / "model.safetensors"))
    b = load_file(str(multi / "final" / "model.safetensors"))
    same_final_weights(a, b, dtype, STEPS)
    fresh = AutoModelForCausalLM.from_pretrained(multi / "final")  # the export loads as it is
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, b[name].to(value.dtype), rtol=0, atol=0, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize(
    "before, after",
    [
        ((2, FSDP), (2, FSDP)),
        ((2, FSDP), (1, FSDP)),
        ((1, SINGLE), (2, FSDP)),
        ((2, FSDP), (1, SINGLE)),
    ],
    ids=["2-ranks-relaunched", "2-ranks-to-1", "single-engine-to-2-ranks", "2-ranks-to-single"],
)
def test_relaunch_resumes_as_the_uninterrupted_run(tmp_path, seed, before, after):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 15, seed=seed, generation_fraction=0.2)
    reference, moved = tmp_path / "reference", tmp_path / "moved"
    _train(_overrides(data, reference, seed, "sample") + COMMON + SINGLE)
    for (ranks, layout), resume, stop in ((before, False, STOP), (after, True, None)):
        overrides = _overrides(data, moved, seed, "sample") + COMMON + layout
        spec = {"overrides": overrides, "resume": resume, "stop": stop}
        if ranks == 1:
            _part(spec)
        else:
            log = _torchrun(spec)
            if resume:
                assert f"at step {STOP}" in log
    _same_rows(_rows(reference), _rows(moved), TOLERANCE)
    a = load_file(str(reference / "final" / "model.safetensors"))
    same_final_weights(a, load_file(str(moved / "final" / "model.safetensors")), "fp32", STEPS)


@pytest.mark.parametrize(
    "dtype, compiled",
    [
        (torch.float32, False),
        (torch.bfloat16, False),
        # compiling the layers takes 40-120 s on 2 cores
        pytest.param(torch.bfloat16, True, marks=pytest.mark.slow),
    ],
    ids=["fp32", "bf16", "bf16-compiled-checkpointed"],
)
def test_one_step_gives_the_single_engines_update(tmp_path, seed, dtype, compiled):
    """In this process, a gloo group of one: 3 micro-batches, then a step; the same step with
    a NaN loss changes nothing. Compiled: regional compile of the layers (aot_eager) under full
    activation checkpointing, on both engines (FSDP's hooks run outside the compiled graph)."""
    from test_packed_rows import _batches

    from reflectioncoder.model import build_tiny_llama, prepare_model
    from reflectioncoder.train import distributed
    from reflectioncoder.train.fsdp_engine import FSDPEngine
    from reflectioncoder.train.local_engine import LocalEngine
    from reflectioncoder.train.loss_module import ReflectionLossModule

    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    arch = "model.arch={hidden_size: 32}"
    run = load_config(base="tiny", overrides=[arch, f"model.dtype={name}"])
    model = build_tiny_llama(300, hidden_size=32, num_layers=2, seed=seed).to(dtype)
    prepare_model(model, liger=False)

    def loss_module() -> ReflectionLossModule:
        copied = copy.deepcopy(model)
        if compiled:
            from reflectioncoder.activation_checkpointing import set_checkpointing
            from reflectioncoder.model import compile_layers

            set_checkpointing(copied, True, "full")
            compile_layers(copied, backend="aot_eager")
        return ReflectionLossModule(copied)

    from torch._dynamo.utils import counters

    # this test's graphs only: a test before it that compiled the same layers leaves them cached,
    # and none would then be counted here (as every test that counts graphs does)
    torch._dynamo.reset()
    counters.clear()
    batches = next(b for s in range(seed, seed + 20) if len(b := _batches(s)[1]) >= 3)[:3]
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        info = distributed.DistInfo(0, 1, 0, torch.device("cpu"), deepspeed=False)
        local = LocalEngine(loss_module(), run, info)
        fsdp = FSDPEngine(loss_module(), run, info)
        for engine in (local, fsdp):
            for j, batch in enumerate(batches):
                engine.start_micro_batch(j == len(batches) - 1)
                engine.backward(engine(batch)[0])
        assert (counters["stats"]["unique_graphs"] > 0) == compiled
        # fp32 sums of every micro-batch, as the fp32 masters' in one process
        for a, b in zip(local.params, fsdp.params, strict=True):
            assert b.grad.dtype == torch.float32
            torch.testing.assert_close(b.grad.full_tensor(), a.grad, rtol=1e-5, atol=1e-8)
        results = [e.finish_step(torch.ones(1, dtype=torch.float64)) for e in (local, fsdp)]
        # what resident_bytes(fsdp=True) counts: 16 bytes a parameter (master, gradient, m, v),
        # all fp32 (the gradient's 4 counted above), over the ranks (here one)
        n_params = sum(p.numel() for p in model.parameters())
        states = [t for p in fsdp.params for t in (p, *fsdp.optimizer.state[p].values())]
        held = sum(t.to_local().nbytes for t in states if t.ndim)
        assert held == 12 * n_params
        assert results[1].applied and results[1].grad_norm == pytest.approx(
            results[0].grad_norm, rel=1e-5
        )
        want = local.full_state_dict()
        got = fsdp.full_state_dict()
        for k in want:
            assert got[k].dtype == dtype, k
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
        masters = [p.full_tensor().clone() for p in fsdp.params]
        fsdp.backward(fsdp(batches[0])[0] * float("nan"))
        skipped = fsdp.finish_step(torch.full((1,), float("nan"), dtype=torch.float64))
        assert not skipped.applied
        for before, p in zip(masters, fsdp.params, strict=True):
            assert torch.equal(before, p.full_tensor())
        _another_engine_reads_its_checkpoint(fsdp, tmp_path)
    finally:
        dist.destroy_process_group()


def _another_engine_reads_its_checkpoint(fsdp, folder: Path) -> None:
    """What another engine's resume reads from FSDP's shards: each parameter's fp32 master and
    AdamW state whole, read one at a time (nothing converted, nothing else written)."""
    from reflectioncoder.train.restore import _state_reader

    fsdp.save_state(folder)
    read = _state_reader(folder, fsdp.layout(), fsdp.info)
    for name, p in fsdp.module.named_parameters():
        state = read(name, p.shape)
        adam = fsdp.optimizer.state[p]
        assert torch.equal(state.weight, p.full_tensor()), name
        assert torch.equal(state.exp_avg, adam["exp_avg"].full_tensor()), name
        assert torch.equal(state.exp_avg_sq, adam["exp_avg_sq"].full_tensor()), name
        assert state.step == float(adam["step"]) == 1.0
    assert [f.name for f in folder.iterdir()] == ["fsdp"]


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["distributed.offload_optimizer=true"], "distributed.offload_optimizer"),
        (["model.dtype=fp16"], "model.dtype"),
        (["model.dtype=bf16", "model.mixed_precision=autocast"], "model.mixed_precision"),
        (["model.fused_projections=true"], "model.fused_projections"),
        (["distributed.fp32_grad_accum=false"], "distributed.fp32_grad_accum"),
    ],
)
def test_what_it_does_not_support_is_refused_before_the_model_loads(tmp_path, overrides, field):
    from reflectioncoder.errors import ConfigError

    out = tmp_path / "run"
    with pytest.raises((ConfigError, ValueError), match=field):
        cfg = load_config(base="tiny", overrides=FSDP + overrides + [f"checkpoint.out_dir={out}"])
        Trainer(cfg)
    assert not out.exists()
    # the group of one it started is gone: a caller that catches the error can start another
    assert not dist.is_initialized()


def test_a_failed_start_leaves_a_group_it_did_not_start(tmp_path):
    from reflectioncoder.errors import ConfigError

    overrides = FSDP + ["model.dtype=fp16", f"checkpoint.out_dir={tmp_path / 'run'}"]
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(ConfigError, match="model.dtype"):
            Trainer(load_config(base="tiny", overrides=overrides))
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_the_step_model_has_fsdp_rows_as_the_trainer_plans_them():
    """8-GPU rows of every model and card, never offloaded, its levers as ZeRO-3's (overlap)
    less those the engine does not have (fp32 sums off, the optimizer's offload)."""
    # imported here: torchrun's ranks run this file, and bench/ is not on their path
    import step_rows

    from bench import step_model as sm

    rows = [r for r in step_rows.model_rows() if r["engine"] == "fsdp"]
    assert {(r["model"], r["card"], r["gpus"]) for r in rows} == {
        (m, c, 8) for m in sm.ARCHS for c in ("H100", "H200")
    }
    assert not any(r["offload"] or r["default"] for r in rows)
    levers = {r["lever"] for r in rows}
    assert "overlap=off" in levers and not {"fp32_sums=off", "offload=on"} & levers
    arch = sm.ARCHS["CodeLlama-7B"]
    work = sm.reflection_workload()
    levers = sm.default_levers(arch, "H100", 8, "fsdp", work)
    resident = sm._resident(arch, 8, "fsdp", levers)
    assert resident == 16 * sm._params(arch) / 8 + FSDP_GATHERED_BYTES


def _part(spec: dict) -> None:
    """Train (resuming when asked) up to ``stop`` and save there, or to the end."""
    trainer = Trainer(load_config(base="tiny", overrides=spec["overrides"]), resume=spec["resume"])
    try:
        if spec["stop"] is None:
            trainer.train()
        else:
            while trainer.step < spec["stop"]:
                trainer.train_step()
            trainer.save()
    finally:
        trainer.close()


def _driver(spec: dict) -> None:
    """One rank: train (a step poisoned), counting each step's host syncs and the bytes of
    its shards."""
    from test_host_syncs import SyncCounter

    trainer = Trainer(load_config(base="tiny", overrides=spec["overrides"]))
    poison_step(trainer, spec["poison"])
    step, syncs = trainer.train_step, []

    def train_step(*args):  # Trainer.train passes sigterm_noted
        if trainer.step == 0:
            return step(*args)
        trainer.ahead.pending.result()  # the next step's host work, off this thread
        with SyncCounter() as counter:
            row = step(*args)
        syncs.append(counter.syncs)
        return row

    trainer.train_step = train_step
    trainer.train()
    engine = trainer.engine  # this rank's fp32 masters, m and v: its shards only
    states = [t for p in engine.params for t in (p, *engine.optimizer.state[p].values())]
    held = sum(t.to_local().nbytes for t in states if t.ndim)
    record = {"syncs": syncs, "held": held, "params": trainer.n_params}
    Path(spec["record"], f"rank{trainer.info.rank}.json").write_text(json.dumps(record))
    trainer.close()


def leave(code: int = 0) -> None:
    """End a rank whose work is done, its trainer closed (process group destroyed) and its
    output flushed, skipping the interpreter's teardown: there gloo's threads can abort the
    process (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#190489,
    1 run in 17 of test_fsdp_load's driver before it did this) after every result is written."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # one rank under torchrun
    import logging

    logging.basicConfig(level=logging.INFO)
    spec = json.loads(sys.argv[1])
    _part(spec) if "resume" in spec else _driver(spec)
    leave()
