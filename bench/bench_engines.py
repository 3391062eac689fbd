"""``reflectioncoder train`` on one device through each engine: plain PyTorch, DeepSpeed ZeRO-3,
ZeRO-3 with the optimizer offloaded to CPU Adam. Per case: the device's peak memory (CUDA
allocator, or the resident set on a CPU), the host's peak resident set, the median step time
after the first; tokens/s, samples/s, MFU and HFU (reflectioncoder.train.flops) over those same
steps, where the card is known; and the losses.

    python -m bench.bench_engines --device cuda --out bench/results/engines_cuda.json

A model is saved to disk first (the path users take: loaded by the trainer, checkpointing on)
at the size of ``--shape``: ``1b`` (24 x 2048, the per-GPU share of a large run's layers) on
CUDA, ``tiny`` on a CPU. One process, no launcher (DeepSpeed gets a group of one), so ZeRO-3
partitions nothing here: the figures show each engine's own cost on one device, not the 1/N
of a real run. Each case is a fresh process, one after the other in one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_checkpointing import prepare_model_and_data
from bench.providers.common import commit, device_name, versions, write_rows
from reflectioncoder.train.metrics import step_rows

SHAPES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4},
    "1b": {"hidden_size": 2048, "intermediate_size": 5504, "num_layers": 24, "num_heads": 16},
}
CASES = {
    "plain": ["distributed.backend=none"],
    "zero3": ["distributed.backend=deepspeed", "distributed.zero_stage=3"],
    "zero3_offload": [
        "distributed.backend=deepspeed",
        "distributed.zero_stage=3",
        "distributed.offload_optimizer=true",
    ],
}


def _child(argv: list[str]) -> None:
    """Run ``reflectioncoder train`` here; print its peak memories as JSON (last line)."""
    import torch

    from reflectioncoder.cli import main

    t0 = time.perf_counter()
    rc = main(["train", *argv])
    on_cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    device_peak = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None
    host_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    # the trainer set the thread count (``train.threads``, None: its default for this machine)
    threads = torch.get_num_threads()
    print(json.dumps({"rc": rc, "device_peak": device_peak, "host_peak": host_peak,
                      "wall": time.perf_counter() - t0, "threads": threads}))  # fmt: skip


def run_case(name: str, folder: Path, data: Path, args) -> dict:
    out = folder / f"run-{name}"
    argv = ["--preset", "tiny"]
    for o in (
        f"model.name_or_path={folder / 'model'}",
        "model.gradient_checkpointing=true",
        f"data.files=[{data}]",
        f"checkpoint.out_dir={out}",
        "checkpoint.save_every=0",
        "checkpoint.save_final=false",
        f"train.samples_per_step={args.samples_per_step}",
        f"train.max_steps={args.steps}",
        f"train.device={args.device}",
        # bf16 on a GPU (the tiny preset's fp32 would time fp32 GEMMs), an lr a 1B model takes
        f"model.dtype={'bf16' if args.device == 'cuda' else 'fp32'}",
        "optim.lr=1e-4",
        "packing.max_tokens=16384",
        "logging.progress=false",
        "logging.tensorboard=false",
        "logging.plot=false",
        *CASES[name],
    ):
        argv += ["--set", o]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_engines", "--child", json.dumps(argv)],
        capture_output=True, text=True, timeout=args.case_timeout,
    )  # fmt: skip
    got = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    if got.get("rc") != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        return {"case": name, "error": "\n".join(tail)}
    metrics = step_rows(out / "metrics.jsonl")
    # the code path and its settings: ``reflectioncoder train`` with exactly these arguments
    return {"case": name, "train_args": argv, **got, **summarise(metrics)}


def summarise(metrics: list[dict]) -> dict:
    """A case's figures from its metrics rows: every one over the same steps, all after the
    first (its warm-up), or the first alone when it is the only one."""
    timed = metrics[1:] or metrics[:1]
    seconds = sum(m["time"] for m in timed)
    return {
        "timed_steps": [m["step"] for m in timed],
        "step_s": statistics.median(m["time"] for m in timed),
        "tokens": sum(m["tokens"] for m in timed) / len(timed),  # a timed step's, on average
        "tokens_per_s": sum(m["tokens"] for m in timed) / seconds,
        "samples_per_s": sum(m["samples"] for m in timed) / seconds,
        # Each row's MFU is its FLOPs over its own seconds: weighted by time, the steps' total.
        "mfu": _over_time(timed, "mfu"),
        "hfu": _over_time(timed, "hfu"),
        "losses": [m["loss"] for m in metrics],
        "host_wait": max(m["host_wait"] for m in metrics[1:]) if len(metrics) > 1 else None,
    }


def _over_time(rows: list[dict], key: str) -> float | None:
    """sum(FLOPs) / (sum(seconds) x peak) of ``rows``, from each row's share of the peak."""
    if any(r.get(key) is None for r in rows):
        return None
    return sum(r[key] * r["time"] for r in rows) / sum(r["time"] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--shape", choices=tuple(SHAPES), default=None, help="cuda: 1b, cpu: tiny")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--samples-per-step", type=int, default=48)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--case-timeout", type=int, default=300)
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    shape = args.shape or ("1b" if args.device == "cuda" else "tiny")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(tempfile.gettempdir()) / "rc_ds_ops"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        arch = SHAPES[shape]
        data = prepare_model_and_data(
            folder, args.samples_per_step * args.steps, arch, num_kv_heads=arch["num_heads"] // 4
        )
        for name in args.cases.split(","):
            row = run_case(name, folder, data, args)
            row.update(shape=shape, arch=SHAPES[shape], device=device_name(args.device))
            row["commit"] = commit()
            row["versions"] = versions("torch", "transformers", "deepspeed", "liger-kernel")
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:  # kept after each case: a later one that overruns loses only itself
                write_rows(rows, args.out)
    print("\n| case | device peak MiB | host peak MiB | step s | tokens/s | MFU / HFU | losses |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | failed: {r['error'].splitlines()[-1][:120]} | | | | | |")
            continue
        dev = "-" if r["device_peak"] is None else f"{r['device_peak']:.0f}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}% / {100 * r['hfu']:.1f}%"
        losses = ", ".join(f"{x:.4f}" for x in r["losses"])
        print(f"| {r['case']} | {dev} | {r['host_peak']:.0f} | {r['step_s']:.3f} | "
              f"{r['tokens_per_s']:.0f} | {mfu} | {losses} |")  # fmt: skip


if __name__ == "__main__":
    main()
