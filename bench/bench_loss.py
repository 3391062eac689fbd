"""Peak memory and time of the reflection loss (CE + KL from hidden states), per provider.

    python -m bench.bench_loss               # CPU points -> bench/results/loss_cpu.json
    python -m bench.bench_loss --gpu-suite   # on a GPU: the issue's grid and target point

Providers: ``reference`` (the recipe: full logits, F.cross_entropy mean, kl_div batchmean on
log_softmax / softmax), ``torch`` (ours, chunked PyTorch), ``triton`` (ours, GPU only),
``liger`` (LigerFusedLinearCrossEntropyLoss + a separate KL on full logits of the pair rows,
GPU only). Modes: ``fwd`` (the forward of a training step: inputs require grad) and ``full``
(forward + backward). Ours gets ce_weight = 1 / (CE rows) and kl_weight = 1 / P, so all
providers compute the same number.

Batch (``setup_loss``): N loss rows, D, V; rows [0, N/2) play teachers, [N/2, N) students,
P = N/4 pairs (teacher i, student N/2 + i), 10% of targets ignored.

Method. Each (provider, mode, size) runs in a fresh subprocess. Memory is the EXTRA peak over
the inputs: on CUDA torch.cuda.max_memory_allocated() after reset, minus what is allocated
before the call; on CPU the process's resident-set high-water mark (VmHWM in /proc/self/status,
reset through /proc/self/clear_refs once the inputs exist; inputs are made in place so they
leave no freed temporaries) minus the resident set before the call. torch's CPU allocator keeps
no statistics and tracemalloc does not see it, so the RSS high-water is the honest measure; it
counts every page touched, the gradients of hidden and weight included (for every provider).
Time: median of ``--reps`` runs after one warm-up (the memory run); on CUDA with events; on
CPU both wall time and process CPU time (all threads), the latter being the stable figure on a
machine whose cores other jobs share.
GPU rows also carry TFLOP/s (6 N D V for full, 2 N D V for fwd) and the share of the card's
dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # reference.loss: the recipe, one place for tests too

from reference.loss import recipe_loss  # noqa: E402
from reflectioncoder.kernels import fused_linear_reflection_loss  # noqa: E402

PROVIDERS = ("reference", "torch", "triton", "liger")
GPU_ONLY = {"triton", "liger"}
MODES = ("fwd", "full")
CPU_SIZES = [(1024, 1024, 32768), (4096, 1024, 32768)]
GPU_TARGET = (16384, 4096, 131072)
# Dense bf16 tensor-core peak, TFLOP/s (vendor figures, no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def setup_loss(n: int, d: int, v: int, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """Inputs of one benchmark point, made in place (no freed temporaries to skew RSS)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.empty(n, d, dtype=dtype, device=device).normal_(generator=gen)
    weight = torch.empty(v, d, dtype=dtype, device=device).normal_(0, d**-0.5, generator=gen)
    targets = torch.randint(0, v, (n,), generator=gen, device=device)
    targets[torch.rand(n, generator=gen, device=device) < 0.1] = -100
    p = n // 4
    teacher = torch.arange(p, device=device)
    kl_pairs = torch.stack([teacher, teacher + n // 2], 1)
    n_ce = (targets != -100).sum()  # on the device: the weights carry the normalisation
    ce_weight = (targets != -100).float() / n_ce.clamp(min=1)
    kl_weight = torch.full((p,), 1.0 / max(p, 1), device=device)
    hidden.requires_grad_()
    weight.requires_grad_()
    return dict(
        hidden=hidden,
        weight=weight,
        targets=targets,
        ce_weight=ce_weight,
        kl_pairs=kl_pairs,
        kl_weight=kl_weight,
    )


def make_loss_fn(provider: str, x: dict):
    """A callable returning the 0-dim loss of ``provider`` on inputs ``x``."""
    args = (x["hidden"], x["weight"], x["targets"], x["ce_weight"], x["kl_pairs"], x["kl_weight"])
    if provider == "reference":
        return lambda: recipe_loss(x["hidden"], x["weight"], x["targets"], x["kl_pairs"])
    if provider in ("torch", "triton"):
        return lambda: fused_linear_reflection_loss(*args, backend=provider)[0]
    if provider == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        flce = LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="mean")

        def liger():
            ce = flce(x["weight"], x["hidden"], x["targets"])
            pairs = x["kl_pairs"]
            logits = torch.cat([x["hidden"][pairs[:, 0]], x["hidden"][pairs[:, 1]]]) @ x["weight"].T
            t, s = logits.float().chunk(2)
            kl = torch.nn.functional.kl_div(
                torch.log_softmax(s, -1), torch.softmax(t.detach(), -1), reduction="batchmean"
            )
            return ce + kl

        return liger
    raise ValueError(f"provider: expected one of {PROVIDERS}, got {provider!r}")


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_rss_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)


def measure_one(
    provider: str, mode: str, n: int, d: int, v: int, dtype: str, device: str, reps: int
) -> dict:
    """One row, measured in this process (run it in a fresh one)."""
    x = setup_loss(n, d, v, DTYPES[dtype], device)
    fn = make_loss_fn(provider, x)
    cuda = device == "cuda"

    def step():
        x["hidden"].grad = x["weight"].grad = None
        loss = fn()
        if mode == "full":
            loss.backward()
        return loss

    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_bytes("VmRSS")
        _reset_rss_peak()
    step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_bytes("VmHWM") - base
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
        peak_bytes=int(peak),
        reps=reps,
    )
    if not cuda:  # CPU time of all threads: stable where other jobs share the cores
        row["cpu_ms"] = round(statistics.median(cpu_times), 3)
        row["threads"] = torch.get_num_threads()
    if cuda:
        flops = (6 if mode == "full" else 2) * n * d * v
        row["tflops"] = round(flops / (row["median_ms"] * 1e-3) / 1e12, 1)
        peak_tf = next((p for k, p in PEAK_TFLOPS.items() if k in row["device"]), None)
        if peak_tf:
            row["pct_of_peak"] = round(100 * row["tflops"] / peak_tf, 1)
    return row


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"CPU, {os.cpu_count()} cores, {model}"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def run_isolated(provider, mode, n, d, v, dtype, device, reps, timeout) -> dict:
    """measure_one in a fresh interpreter: a clean memory high-water mark per row."""
    cmd = [sys.executable, "-m", "bench.bench_loss", "--one"]
    cmd += [f"{provider},{mode},{n},{d},{v},{dtype},{device},{reps}"]
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
        p, mode, n, d, v, dtype, device, reps = args.one.split(",")
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
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(rows, indent=1) + "\n")  # partial results survive
    print(summarise(rows))
    if gpu:
        target = [r for r in rows if (r.get("N"), r.get("D"), r.get("V")) == GPU_TARGET]
        print("\nGPU target (N=16K, D=4K, V=128K, bf16):")
        print(summarise(target) if target else "not run")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
