"""Issue 19's prepared GPU call: the training step at CodeLlama-7B layer shapes, each lever on
and off, against the authors' faithful recipe on the same layers. Run it when a GPU is lent:

    python -m bench.gpu_step_call --out bench/results/gpu/step_call.json     # < 8 minutes
    python -m bench.gpu_step_call --dry-run                                   # CPU, toy sizes (CI)

Shapes: D = 4096, I = 11008, 32 heads (no GQA), V = 32016 (CodeLlama's vocabulary with the
special tokens), at 2 and at 4 layers; 8 samples a step (half generation samples, the length
mix of bench/providers/train_step.py) packed into 16K-token micro-batches; bf16. Cases:
``Trainer.train_step`` with the shipped defaults (bf16 weights + fp32 masters, checkpointing
``auto``: at 2 and 4 layers every layer fits uncheckpointed, so it plans ``none``; the 32-layer
plan is bench/step_model.py's; layers compiled on CUDA), then one lever changed at a time
(checkpointing full, checkpointing off, save_gemms, mlp_rerun, alternate, eager layers, the old
autocast engine, the attention kernel named: ``flash_attn_4`` and ``torch_varlen``; a kernel that
cannot run on the device skips its case, with the reason in the JSON and the table), and the
recipe (one sample per micro-batch, 2-D mask through flash_attention_2 when installed, else
SDPA; checkpointing; fp32 masters; full logits).

Per case and depth: the median step time after a warm-up step, the CUDA allocator's peak, the
step's model / hardware FLOPs (reflectioncoder.train.flops), samples/s, a profiler split of one
step's device time by kernel category, and the host syncs CUDA reports in a step
(``torch.cuda.set_sync_debug_mode("warn")``). The 32-layer figures are extrapolated from the
difference between the depths (per layer = (t4 - t2) / 2; t32 = t2 + 30 x per layer), and so are
MFU and HFU. JSON rows and a markdown table; ``--dry-run`` takes the same path on the CPU at toy
sizes (where no case compiles: inductor's CPU build takes minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from bench import RESULTS
from bench.providers.train_step import (
    TrainStepConfig,
    reference_attention,
    setup_provider,
    setup_train_step,
    setup_trainer,
    step_flops,
)

CODELLAMA_7B = dict(vocab=32016, hidden=4096, layers=2, heads=32, kv_heads=32, intermediate=11008)
TOY = dict(vocab=512, hidden=64, layers=2, heads=4, kv_heads=4, intermediate=176)
CASES = {
    "trainer (defaults)": [],
    "checkpointing full": ["model.checkpointing_policy=full"],
    "checkpointing off": ["model.gradient_checkpointing=false"],
    "save_gemms": ["model.checkpointing_policy=save_gemms"],
    "mlp_rerun": ["model.checkpointing_policy=mlp_rerun"],
    "alternate": ["model.checkpointing_policy=alternate"],
    "offload": ["model.checkpointing_policy=offload"],
    "eager layers": ["model.compile=false"],
    "autocast (fp32 weights)": ["model.mixed_precision=autocast"],
    # The attention kernel: FA4 where its wheel is carried (`auto` then picks it too), and
    # torch's FA2-class kernel; a case whose kernel cannot run here is skipped, saying why.
    "attention flash_attn_4": ["model.attention=flash_attn_4"],
    "attention torch_varlen": ["model.attention=torch_varlen"],
    "recipe": None,
}
CATEGORIES = (
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("loss", ("reflection_rows", "sum_slots")),
    ("optimizer", ("adam",)),
    ("gemm", ("gemm", "cutlass", "xmma", "cublas", "addmm", "aten::mm", "aten::bmm")),
    ("copy", ("memcpy", "copy", "cat")),
)


def category(kernel: str) -> str:
    name = kernel.lower()
    return next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "elementwise/other")


def skip_reason(name: str, cfg: TrainStepConfig) -> str | None:
    """Why case ``name`` cannot run on ``cfg.device`` (a named attention kernel), or None."""
    from reflectioncoder.kernels.varlen_attention import unavailable_reason

    named = [s.split("=", 1)[1] for s in CASES[name] or () if s.startswith("model.attention=")]
    if not named:
        return None
    head_dim = cfg.hidden // cfg.heads
    return unavailable_reason(named[0], torch.device(cfg.device), head_dim=head_dim)


def _step_fn(name: str, cfg: TrainStepConfig):
    """(a step callable returning (loss, tokens), the FLOPs of one step, samples a step)."""
    if CASES[name] is None:
        model, opt, data, step = setup_provider("reference", cfg)
        return (lambda k: step(model, opt, data[k], cfg)), step_flops(
            "reference", model, data[0], cfg
        )
    _, _, per_step = setup_train_step(cfg)
    trainer = setup_trainer(cfg, per_step, extra=CASES[name])
    flops = {}

    def run(_k):
        row = trainer.train_step()
        flops["model"], flops["hardware"] = row["model_flops"], row["hardware_flops"]
        return torch.tensor(row["loss"]), row["tokens"]

    return run, flops


def _profile_split(run, device: str) -> dict[str, float]:
    """Seconds of one step's kernels (device time on CUDA, CPU self time else) by category."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=acts) as prof:
        run(0)
    split: dict[str, float] = {}
    for e in prof.key_averages():
        us = e.self_device_time_total if device == "cuda" else e.self_cpu_time_total
        if us > 0:
            split[category(e.key)] = split.get(category(e.key), 0.0) + us * 1e-6
    return split


def measure(name: str, cfg: TrainStepConfig, steps: int) -> dict:
    """One case at one depth, in this process (memory freed before the next)."""
    cuda = cfg.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    run, flops = _step_fn(name, cfg)
    run(0)  # warm-up (and compilation)
    times = []
    for k in range(steps):
        sync()
        t0 = time.perf_counter()
        run(k)
        sync()
        times.append(time.perf_counter() - t0)
    syncs = 0
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run(0)
            sync()
        torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
    row = {
        "case": name,
        "layers": cfg.layers,
        "step_s": statistics.median(times),
        "samples_per_s": cfg.samples / statistics.median(times),
        "model_flops": float(getattr(flops, "model", None) or flops["model"]),
        "hardware_flops": float(getattr(flops, "hardware", None) or flops["hardware"]),
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "syncs_in_a_step": syncs if cuda else None,
        "profile_s": _profile_split(run, cfg.device),
    }
    del run, flops
    gc.collect()
    return row


def extrapolate(rows: list[dict], peak_flops: float | None) -> list[dict]:
    """Each case's 32-layer step from its 2- and 4-layer rows (linear in the layers). A case
    whose 4 layers were not slower than its 2 (noise above two layers' time: a toy dry run)
    has nothing to extrapolate: its row says so, with no time, MFU or ratio."""
    out = []
    for name in dict.fromkeys(r["case"] for r in rows):
        two, four = (_row(rows, name, n) for n in (2, 4))
        if four["step_s"] <= two["step_s"]:
            out.append({"case": name, "layers": 32, "step_s": None,
                        "note": "not extrapolated: 4 layers not slower than 2"})  # fmt: skip
            continue
        at32 = {k: two[k] + 15 * (four[k] - two[k]) for k in EXTRAPOLATED}
        row = {"case": name, "layers": 32, **at32}
        # Samples a step stay; only the step's time grows with the layers.
        row["samples_per_s"] = four["samples_per_s"] * four["step_s"] / at32["step_s"]
        if peak_flops:
            row["mfu"] = at32["model_flops"] / (at32["step_s"] * peak_flops)
            row["hfu"] = at32["hardware_flops"] / (at32["step_s"] * peak_flops)
        out.append(row)
    recipe = next((r for r in out if r["case"] == "recipe" and r["step_s"]), None)
    for row in out:
        if recipe and row["step_s"]:
            row["samples_per_s_vs_recipe"] = row["samples_per_s"] / recipe["samples_per_s"]
    return out


EXTRAPOLATED = ("step_s", "model_flops", "hardware_flops")


def _row(rows: list[dict], name: str, layers: int) -> dict:
    return next(r for r in rows if r["case"] == name and r["layers"] == layers)


def _pct(row: dict, key: str) -> str:
    return f"{100 * row[key]:.1f}%" if key in row else "-"


def markdown(rows: list[dict], at32: list[dict], device: str, skipped: dict[str, str]) -> str:
    lines = [
        f"# Issue 19's step call: {device}",
        "",
        *[f"- skipped {name}: {why}" for name, why in skipped.items()],
        "",
        "| case | layers | step s | samples/s | peak MiB | syncs | GEMM / attn / loss / rest s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        p = r["profile_s"]
        rest = sum(v for k, v in p.items() if k not in ("gemm", "attention", "loss"))
        split = " / ".join(f"{p.get(k, 0.0):.3f}" for k in ("gemm", "attention", "loss"))
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(
            f"| {r['case']} | {r['layers']} | {r['step_s']:.3f} | {r['samples_per_s']:.2f} "
            f"| {peak} | {r['syncs_in_a_step']} | {split} / {rest:.3f} |"
        )
    lines += [
        "",
        "32 layers, extrapolated from the difference of the depths:",
        "",
        "| case | step s | MFU | HFU | samples/s vs the recipe |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in at32:
        vs = r.get("samples_per_s_vs_recipe")
        vs = "-" if vs is None else f"{vs:.2f}x"
        step = r.get("note") if r["step_s"] is None else f"{r['step_s']:.3f}"
        lines.append(f"| {r['case']} | {step} | {_pct(r, 'mfu')} | {_pct(r, 'hfu')} | {vs} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (CI)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per case and depth")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_step_call: no CUDA device here; use --dry-run on a CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    shape = TOY if args.dry_run else CODELLAMA_7B
    lengths = dict(instruction=(10, 40), reflection=(30, 120), answer=(10, 40))
    base = TrainStepConfig(
        **shape, samples=8, steps=1 + args.steps, max_tokens=512 if args.dry_run else 16384,
        device=device, dtype="fp32" if args.dry_run else "bf16",
        **(lengths if args.dry_run else {}),
    )  # fmt: skip
    cases = args.cases.split(",")  # on the CPU `model.compile: auto` is off: no inductor build
    rows, skipped = [], {}
    for name in cases:
        why = skip_reason(name, base)
        if why is not None:
            skipped[name] = why
            print(f"skipped {name}: {why}", flush=True)
            continue
        for layers in (2, 4):
            rows.append(measure(name, dataclasses.replace(base, layers=layers), args.steps))
            print(json.dumps(rows[-1]), flush=True)
    peak = None
    if device == "cuda":
        from reflectioncoder.train.metrics import guess_peak_tflops

        tflops = guess_peak_tflops(torch.cuda.get_device_name())
        peak = tflops * 1e12 if tflops else None
    at32 = extrapolate(rows, peak)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
    text = markdown(rows, at32, f"{name}, recipe attention {reference_attention(base)}", skipped)
    out = args.out or RESULTS / (
        "gpu_step_call_dry_run.json" if args.dry_run else "gpu/step_call.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "at_32_layers": at32, "skipped": skipped}
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
