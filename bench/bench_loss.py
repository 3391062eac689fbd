"""Peak memory and time of the reflection loss (CE + KL from hidden states), per provider,
each row in a fresh process (its own memory high-water mark).

    python -m bench.bench_loss               # CPU points -> bench/results/loss_cpu.json
    python -m bench.bench_loss --gpu-suite   # on a GPU: the issue's grid and target point

Providers (bench/providers/loss.py): ``ours:torch``, ``ours:triton`` (GPU only here),
``reference``, ``liger`` (GPU only here). Modes: ``fwd`` and ``full`` (forward + backward).
The pytest-benchmark suite ``bench/test_loss.py`` times the same callables in one process;
this report is the one to read for memory on the CPU.

Method. Memory is the EXTRA peak over the inputs (bench/providers/common.py): on CUDA
max_memory_allocated after a reset minus what is allocated before the call; on CPU the
resident-set high-water mark above the resident set before the call (the inputs are made in
place, so they leave no freed temporaries). It counts the gradients of hidden and weight, for
every provider. Time: median of ``--reps`` runs after one warm-up (the memory run); on CUDA
with events; on CPU both wall time and process CPU time (all threads), the latter being the
stable figure on a machine whose cores other jobs share. GPU rows also carry TFLOP/s (6 N D V
for full, 2 N D V for fwd) and the share of the card's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.providers.common import REPO, commit, device_name, extra_peak_bytes, rates, write_rows
from bench.providers.loss import DTYPES, make_step, setup_loss, useful_flops

PROVIDERS = ("reference", "ours:torch", "ours:triton", "liger")
GPU_ONLY = {"ours:triton", "liger"}
MODES = ("fwd", "full")
CPU_SIZES = [(1024, 1024, 32768), (4096, 1024, 32768)]
GPU_TARGET = (16384, 4096, 131072)


def measure_one(
    provider: str, mode: str, n: int, d: int, v: int, dtype: str, device: str, reps: int
) -> dict:
    """One row, measured in this process (run it in a fresh one)."""
    x = setup_loss(n, d, v, DTYPES[dtype], device)
    step = make_step(provider, mode, x, device)
    cuda = device == "cuda"
    peak = extra_peak_bytes(step, device)
    times, cpu_times = [], []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
            cpu_times.append((time.process_time() - c0) * 1e3)
    row = dict(
        kernel="fused_linear_reflection_loss",
        provider=provider,
        mode=mode,
        N=n,
        D=d,
        V=v,
        dtype=dtype,
        device=device_name(device),
        commit=commit(),
        median_ms=round(statistics.median(times), 3),
        peak_bytes=int(peak or 0),
        reps=reps,
    )
    if not cuda:  # CPU time of all threads: stable where other jobs share the cores
        row["cpu_ms"] = round(statistics.median(cpu_times), 3)
        row["threads"] = torch.get_num_threads()
    else:
        row |= rates(row["median_ms"] * 1e-3, device, flops=useful_flops(mode, n, d, v))
    return row


def run_isolated(provider, mode, n, d, v, dtype, device, reps, timeout) -> dict:
    """measure_one in a fresh interpreter: a clean memory high-water mark per row."""
    cmd = [sys.executable, "-m", "bench.bench_loss", "--one"]
    cmd += [f"{provider}/{mode}/{n}/{d}/{v}/{dtype}/{device}/{reps}"]
    base = dict(provider=provider, mode=mode, N=n, D=d, V=v, dtype=dtype)
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return base | {"error": f"timeout after {timeout} s"}
    if out.returncode != 0:
        return base | {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict]) -> str:
    """Markdown table with memory and time ratios against the reference of the same point."""
    ref = {
        (r["mode"], r["N"], r["D"], r["V"], r["dtype"]): r
        for r in rows
        if r["provider"] == "reference" and "error" not in r
    }
    lines = [
        "| provider | mode | N | D | V | dtype | median ms | extra peak MiB | time/ref | mem/ref |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['provider']} | {r['mode']} | {r['N']} | {r['D']} | {r['V']} | "
                f"{r['dtype']} | {r['error']} | | | |"
            )
            continue
        b = ref.get((r["mode"], r["N"], r["D"], r["V"], r["dtype"]))
        t = f"{r['median_ms'] / b['median_ms']:.2f}" if b else "-"
        if b and "cpu_ms" in r and "cpu_ms" in b:
            t += f" (cpu {r['cpu_ms'] / b['cpu_ms']:.2f})"
        m = f"{r['peak_bytes'] / b['peak_bytes']:.3f}" if b and b["peak_bytes"] > 0 else "-"
        lines.append(
            f"| {r['provider']} | {r['mode']} | {r['N']} | {r['D']} | {r['V']} | {r['dtype']} | "
            f"{r['median_ms']:.1f} | {r['peak_bytes'] / 2**20:.0f} | {t} | {m} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-suite", action="store_true", help="the GPU grid (bf16, CUDA)")
    parser.add_argument("--providers", default=None, help="comma list; default: all that apply")
    parser.add_argument("--modes", default="fwd,full")
    parser.add_argument("--sizes", default=None, help="N:D:V,... (default: CPU points)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per row")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.one:
        p, mode, n, d, v, dtype, device, reps = args.one.split("/")
        row = measure_one(p, mode, int(n), int(d), int(v), dtype, device, int(reps))
        print(json.dumps(row))
        return 0
    gpu = args.gpu_suite
    if gpu and not torch.cuda.is_available():
        print("bench_loss: --gpu-suite needs CUDA", file=sys.stderr)
        return 1
    device = "cuda" if gpu else "cpu"
    dtype = args.dtype or ("bf16" if gpu else "fp32")
    reps = args.reps or (20 if gpu else 3)
    if args.sizes:
        sizes = [tuple(int(x) for x in s.split(":")) for s in args.sizes.split(",")]
    elif gpu:
        sizes = [
            (n, d, v) for n in (1024, 4096, 16384) for d in (1024, 4096) for v in (32768, 131072)
        ]
    else:
        sizes = CPU_SIZES
    providers = (
        args.providers.split(",")
        if args.providers
        else [p for p in PROVIDERS if gpu or p not in GPU_ONLY]
    )
    out = args.out or REPO / "bench" / "results" / f"loss_{'gpu' if gpu else 'cpu'}.json"
    rows = []
    for n, d, v in sizes:
        for mode in args.modes.split(","):
            for p in providers:
                row = run_isolated(p, mode, n, d, v, dtype, device, reps, args.timeout)
                rows.append(row)
                print(json.dumps(row), flush=True)
                write_rows(rows, out)  # partial results survive
    print(summarise(rows))
    if gpu:
        target = [r for r in rows if (r.get("N"), r.get("D"), r.get("V")) == GPU_TARGET]
        print("\nGPU target (N=16K, D=4K, V=128K, bf16):")
        print(summarise(target) if target else "not run")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
