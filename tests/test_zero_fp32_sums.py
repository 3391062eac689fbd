"""In what precision DeepSpeed sums a step's gradients, measured: 2 gloo ranks, bf16 weights,
the DeepSpeed config ``deepspeed_config`` builds, 17 micro-batches and one SGD step (lr 1, from
zero weights, no clipping), so the fp32 master weight after the step is minus the summed
gradient. Each element's per-rank, per-micro-batch gradients are powers of two (exact in bf16):

- ``accumulate`` elements: 1 on both ranks in the first micro-batch, then 2^-10 on both ranks
  in 16 more (sum 2 + 2^-5). Each micro-batch's cross-rank sum is exact in bf16; a bf16 running
  sum stays at 2 (2 + 2^-9 rounds back to 2), an fp32 one is exact;
- ``reduce`` elements: 1 on rank 0 and 2^-10 on rank 1 in the first micro-batch, then 0 (sum
  1 + 2^-10): the cross-rank sum is exact in fp32 and rounds to 1 in bf16.

So the accumulate error says the dtype of the sums over micro-batches, the reduce error that of
the cross-rank reduction (DeepSpeed's ``communication_data_type``). With an offloaded optimizer,
a step with a NaN gradient is skipped and the next one applies with its own gradient, norm and
clipping, also from a checkpoint saved right after the skipped one (``drop_skipped_sums``;
without it DeepSpeed 0.19.8 skips the next step too).

Also recorded: the gradient storage a rank holds after a micro-batch's backward (the bucket is
ELEMENTS elements, 1/2 of them a rank's partition): ZeRO-1 the BF16 optimizer's full fp32
gradient (4 bytes an element); ZeRO-2 an fp32 partition (4 / 2); ZeRO-3 an fp32 partition and
its reduce bucket, which is fp32 when the reduction is (4 / 2 + 4). DeepSpeed's own ZeRO-1 with
an offloaded optimizer would hold a full fp32 ``grad_accum`` per parameter, an fp32 partition
and an fp32 bucket (4 + 4 / 2 + 4, measured before ``deepspeed_config.offloaded_stage``); it runs as
ZeRO-2, so its case records ZeRO-2's. bench/step_model.py's memory
(``memory_plan.resident_bytes``) counts these."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_distributed import REPO_ROOT, _free_port

MICRO_BATCHES = 17
SMALL = 2.0**-10
ELEMENTS = 64  # even indices: accumulate; odd: reduce
HIDDEN = 8  # ZeRO's reduce bucket: HIDDEN^2 = ELEMENTS (BUCKETS_FROM_HIDDEN)
# (name, overrides, extra DeepSpeed config): what the shipped config does at each stage, and
# the same with bf16 sums or a bf16 reduction asked for, to show the test sees them
CASES = [
    ("zero1", ["distributed.zero_stage=1"], {}),
    ("zero2", ["distributed.zero_stage=2"], {}),
    ("zero3", ["distributed.zero_stage=3"], {}),
    ("zero2_offload", ["distributed.zero_stage=2", "distributed.offload_optimizer=true"], {}),
    ("zero1_offload", ["distributed.zero_stage=1", "distributed.offload_optimizer=true"], {}),
    ("zero2_bf16_sums", ["distributed.zero_stage=2", "distributed.fp32_grad_accum=false"], {}),
    ("zero3_bf16_sums", ["distributed.zero_stage=3", "distributed.fp32_grad_accum=false"], {}),
    ("zero2_bf16_reduce", ["distributed.zero_stage=2"], {"communication_data_type": "bf16"}),
    ("zero1_bf16_reduce", ["distributed.zero_stage=1"], {"communication_data_type": "bf16"}),
]


def gradients(rank: int, micro_batch: int) -> torch.Tensor:
    """This rank's gradient in ``micro_batch`` (the module docstring's pattern)."""
    g = torch.zeros(ELEMENTS, dtype=torch.float64)
    g[0::2] = 1.0 if micro_batch == 0 else SMALL
    if micro_batch == 0:
        g[1::2] = 1.0 if rank == 0 else SMALL
    return g


def exact_sum(world: int = 2) -> torch.Tensor:
    return sum(gradients(r, m) for r in range(world) for m in range(MICRO_BATCHES))


class Probe(torch.nn.Module):
    """``sum(w * x)``: its gradient is ``x``, computed exactly in bf16."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(ELEMENTS, dtype=torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.w * x).sum()


def probe_engine(overrides: list[str], extra: dict | None = None):
    """(engine, run config, DeepSpeed config): ``Probe`` under DeepSpeed with SGD (lr 1) on this
    rank, configured as the trainer configures it from the tiny preset in bf16 and
    ``overrides``; ``extra``: more of DeepSpeed's keys."""
    import deepspeed

    from reflectioncoder.config_loader import load_config
    from reflectioncoder.train.deepspeed_config import deepspeed_config
    from reflectioncoder.train.distributed import DistInfo

    run = load_config(
        base="tiny",
        overrides=[
            "data.files=[x.jsonl]",
            "distributed.backend=deepspeed",
            "model.dtype=bf16",
            *overrides,
        ],
    )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    info = DistInfo(rank, world, rank, torch.device("cpu"), deepspeed=True)
    config = {
        **deepspeed_config(run, info, hidden_size=HIDDEN),
        **(extra or {}),
        "zero_force_ds_cpu_optimizer": False,
    }
    module = Probe()
    sgd = torch.optim.SGD(module.parameters(), lr=1.0)
    engine, *_ = deepspeed.initialize(model=module, optimizer=sgd, config=config)
    return engine, run, config


def run_case(overrides: list[str], extra: dict) -> tuple[torch.Tensor, dict]:
    """The summed gradient one SGD step applied (every rank), and the config it ran with."""
    from deepspeed.utils import safe_get_full_fp32_param

    engine, _, _ = probe_engine(["optim.grad_clip=0", *overrides], extra)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    described = {}
    for m in range(MICRO_BATCHES):
        engine.set_gradient_accumulation_boundary(m == MICRO_BATCHES - 1)
        loss = engine(gradients(rank, m).to(torch.bfloat16))
        engine.backward(loss * world, scale_wrt_gas=False)  # as DeepSpeedEngine: sums, not means
        if m in (0, MICRO_BATCHES - 1):
            described["gradient_bytes_" + ("last" if m else "between")] = gradient_bytes(engine)
    engine.step()
    summed = -safe_get_full_fp32_param(engine.module.w).double()
    described["types"] = [str(t) for t in engine.get_data_types()]
    described["optimizer"] = type(engine.optimizer).__name__
    described["communication_data_type"] = str(engine.communication_data_type)
    engine.destroy()
    return summed, described


def skipped_step_then_clean(overrides: list[str], folder: str) -> dict:
    """Two steps with an offloaded optimizer (clipping at 1), the first with a NaN gradient on
    rank 1, ``drop_skipped_sums`` run after a skipped one as ``DeepSpeedEngine`` runs it:
    whether each was applied; the second's gradient norm and update against the clean step's
    exact sum (nothing of the skipped step left in it); and the second step run again from a
    checkpoint saved right after the skipped one."""
    from deepspeed.utils import safe_get_full_fp32_param

    from reflectioncoder.train.deepspeed_engine import check_skipped_sums, drop_skipped_sums

    engine, run, config = probe_engine(overrides)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    check_skipped_sums(engine.optimizer, config)

    def step(poison: bool) -> bool:
        for m in range(3):
            engine.set_gradient_accumulation_boundary(m == 2)
            x = gradients(rank, m).to(torch.bfloat16)
            if poison and m == 1 and rank == 1:
                x[3] = float("nan")
            engine.backward(engine(x) * world, scale_wrt_gas=False)
        engine.step()
        if not engine.was_step_applied():
            drop_skipped_sums(engine.optimizer)
        return bool(engine.was_step_applied())

    applied = [step(poison=True)]
    engine.save_checkpoint(folder, tag="skipped")
    applied.append(step(poison=False))
    clean = sum(gradients(r, m) for r in range(world) for m in range(3))
    norm = clean.norm().item()
    weights = safe_get_full_fp32_param(engine.module.w).double()
    # DeepSpeed's clipping: the gradient divided by (norm + 1e-6) / gradient_clipping
    update_error = (weights + clean / ((norm + 1e-6) / run.optim.grad_clip)).abs().max().item()
    engine.load_checkpoint(folder, tag="skipped")
    again = [step(poison=False)]
    again_equal = torch.equal(safe_get_full_fp32_param(engine.module.w).double(), weights)
    result = {
        "applied": applied,
        "finite": bool(torch.isfinite(weights).all()),
        "norm": [float(engine.get_global_grad_norm()), norm],
        "update_error": update_error,
        "resumed_after_skip": again + [again_equal],
    }
    engine.destroy()
    return result


def gradient_bytes(engine) -> dict[str, int]:
    """Bytes of gradient storage a rank holds after a step's last backward, by dtype: the
    parameter's ``.grad`` / ``.grad_accum`` and every tensor the ZeRO optimizer keeps in an
    attribute named for gradients or reduce buckets (lists and dicts of them too)."""
    seen, held = set(), {}

    def add(obj) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.numel() and obj.untyped_storage().data_ptr() not in seen:
                seen.add(obj.untyped_storage().data_ptr())
                key = str(obj.dtype)
                held[key] = held.get(key, 0) + obj.untyped_storage().nbytes()
        elif isinstance(obj, dict):
            for v in obj.values():
                add(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                add(v)
        elif hasattr(obj, "buffer"):  # an IPG bucket
            add(obj.buffer)
        elif hasattr(obj, "flat_partition"):
            add(obj.flat_partition)

    w = engine.module.w
    add([w.grad, getattr(w, "grad_accum", None)])
    for name, value in vars(engine.optimizer).items():
        if "grad" in name or "ipg" in name:
            add(value)
    return held


def errors(summed: torch.Tensor) -> dict:
    """The largest absolute error of each kind of element against the float64 sum."""
    err = (summed - exact_sum()).abs()
    return {"accumulate": err[0::2].max().item(), "reduce": err[1::2].max().item()}


@pytest.mark.slow
def test_zero_stages_sum_micro_batches_and_ranks_in_fp32(tmp_path):
    out = tmp_path / "sums.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    args += [f"--master_port={_free_port()}", __file__, str(out)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    got = json.loads(out.read_text())
    for name in (
        "zero1",
        "zero2",
        "zero3",
        "zero2_offload",
        "zero1_offload",
    ):  # as shipped: fp32 throughout
        assert got[name]["errors"] == {"accumulate": 0.0, "reduce": 0.0}, (name, got[name])
        assert got[name]["types"] == ["torch.bfloat16", "torch.float32"], got[name]
    # fp32 gradient bytes a rank holds between micro-batches (module docstring)
    e = ELEMENTS
    held = {"zero1": 4 * e, "zero2": 2 * e, "zero3": 2 * e + 4 * e}
    for name, want in held.items():
        assert got[name]["gradient_bytes_between"]["torch.float32"] == want, (name, got[name])
    # ZeRO-1 offloaded would keep a whole fp32 gradient beside its partition (10 e here): it runs
    # as ZeRO-2 offloaded (deepspeed_config.offloaded_stage)
    offloaded = got["zero2_offload"]["gradient_bytes_between"]["torch.float32"]
    assert got["zero1_offload"]["gradient_bytes_between"]["torch.float32"] == offloaded < 10 * e
    # bf16 sums lose the 16 small gradients; a bf16 reduction the small rank's
    for name in ("zero2_bf16_sums", "zero3_bf16_sums"):
        assert got[name]["errors"]["accumulate"] == 2 * (MICRO_BATCHES - 1) * SMALL, got[name]
    for name in ("zero2_bf16_reduce", "zero1_bf16_reduce"):
        assert got[name]["errors"] == {"accumulate": 0.0, "reduce": SMALL}, got[name]
    # offloaded: a NaN step is skipped, and the next one applies (DeepSpeed alone skips it too)
    # with the clean step's own norm and clipped update; saved right after the skipped step, the
    # checkpoint runs the clean step again to the same weights (ZeRO-3 drops the partition itself)
    for name in ("zero1_offload", "zero2_offload", "zero3_offload"):
        case = got["skipped_then_clean"][name]
        assert case["applied"] == [False, True] and case["finite"], (name, case)
        assert case["norm"][0] == pytest.approx(case["norm"][1], rel=1e-6), (name, case)
        assert case["update_error"] < 1e-6, (name, case)
        assert case["resumed_after_skip"] == [True, True], (name, case)


if __name__ == "__main__":  # one process per rank under torchrun
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    results = {}
    for name, overrides, extra in CASES:
        summed, described = run_case(overrides, extra)
        results[name] = {"errors": errors(summed), **described}
    folder = os.path.join(os.path.dirname(sys.argv[1]), "checkpoint")
    offloaded = {name: overrides for name, overrides, _ in CASES if name.endswith("_offload")}
    offloaded["zero3_offload"] = ["distributed.zero_stage=3", "distributed.offload_optimizer=true"]
    results["skipped_then_clean"] = {
        name: skipped_step_then_clean(overrides, os.path.join(folder, name))
        for name, overrides in offloaded.items()
    }
    if int(os.environ["RANK"]) == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f, indent=1)
        print(json.dumps(results, indent=1))
