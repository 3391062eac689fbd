"""End-to-end train step: ours (packed) against the reference recipe, same model, data and mask.

- ``trainer``: ``Trainer.train_step`` itself on the same model and samples (as shipped: the
  paper preset's checkpointing, the teacher/student CE logging pass, fused AdamW, clipping).
- ``ours``: each optimizer step's samples packed into micro-batches (teacher + student, the
  student only its visible tokens with original positions), varlen attention, the fused loss on
  the loss rows only (no full logits), backward, AdamW.
- ``reference``: the authors' recipe as faithfully as the machine runs it
  (bench/providers/train_step.py): one sample per micro-batch, a reflection sample doubled
  (teacher row + a full-length student row, original positions) with the student's visibility
  as a 2-D attention mask through the model's own attention (on a CPU: SDPA with that mask,
  the closest runnable to the authors' flash_attention_2), gradient checkpointing on,
  full-vocabulary logits of every row, SPEC §2 loss, gradient accumulation, AdamW.
  Half of the samples are generation samples (one row; ``--generation-fraction``).

Both compute the same loss (``sample`` normalisation), printed as a cross-check. Each provider
runs in its own subprocess so its peak memory is its own: the resident-set high-water mark
(``ru_maxrss``) of the whole process, and the step's share of it (high-water minus the resident
set after setup, before the first step). Data preparation (packing, padding) is done before the
timer starts for both.

    python -m bench.bench_train_step                      # default sizes, a few minutes on CPU
    python -m bench.bench_train_step --steps 1 --samples 1 --reflection 20 60   # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.providers.common import REPO, commit, device_name, versions, write_rows
from bench.providers.train_step import (
    ALL_PROVIDERS,
    TrainStepConfig,
    reference_attention,
    setup_provider,
)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--provider", choices=ALL_PROVIDERS, help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    p.add_argument(
        "--providers", default="reference,trainer,ours", help="comma-separated, in order"
    )
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--samples", type=int, default=2, help="samples per optimizer step")
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    p.add_argument("--instruction", type=int, nargs=2, default=(100, 400))
    p.add_argument("--reflection", type=int, nargs=2, default=(300, 2500))
    p.add_argument("--answer", type=int, nargs=2, default=(100, 600))
    p.add_argument("--generation-fraction", type=float, default=0.5)
    p.add_argument("--mask-rate", type=float, default=0.5, help="fixed r of SPEC §3")
    p.add_argument("--strategy", default="block_mask")
    p.add_argument("--block-order", default="tce")
    p.add_argument("--max-tokens", type=int, default=16384, help="our micro-batch budget")
    p.add_argument(
        "--ref-attn", default="auto", choices=["auto", "sdpa", "flash_attention_2", "eager"]
    )
    p.add_argument("--ref-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--loss-backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads of every provider (recorded)"
    )
    p.add_argument("--out", default=str(REPO / "bench/results/train_step.json"))
    args = p.parse_args(argv)
    if not 0.0 < args.mask_rate <= 1.0:
        p.error(f"--mask-rate: must be in (0, 1], got {args.mask_rate}")
    if args.samples < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--samples and --steps must be >= 1, --warmup >= 0")
    return args


def config_of(args: argparse.Namespace) -> TrainStepConfig:
    """The provider's config from the command line (every field has an option of its name)."""
    names = {f.name for f in dataclasses.fields(TrainStepConfig)} - {"steps", "device", "dtype"}
    values = {n: tuple(v) if isinstance(v := getattr(args, n), list) else v for n in names}
    return TrainStepConfig(**values, steps=args.warmup + args.steps)


def run_provider(args: argparse.Namespace) -> dict:
    """One provider in this process: warm-up, timed steps, memory high-water."""
    # torch's default (every core) can make a step on shared cores many times slower: every
    # provider runs the same, stated number of threads
    torch.set_num_threads(args.threads)
    cfg = config_of(args)
    model, opt, data, step_fn = setup_provider(args.provider, cfg)
    rss_setup_kb = _rss_now_kb()
    times, cpu_times, losses, run_tokens = [], [], [], []
    for k, d in enumerate(data):
        t0, c0 = time.perf_counter(), time.process_time()
        loss, tokens = step_fn(model, opt, d, cfg)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        losses.append(float(loss))  # host read after the step: bench bookkeeping
        if k >= args.warmup:
            times.append(dt)
            cpu_times.append(dc)
            run_tokens.append(tokens)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sample_tokens = _samples_per_step(cfg)[args.warmup :]
    step_s = statistics.median(times)
    return {
        "provider": args.provider,
        "step_s_median": step_s,
        "step_s_all": times,
        "steps_per_s": 1.0 / step_s,
        # CPU seconds of all this process's threads: robust to other jobs sharing the cores.
        "step_cpu_s_median": statistics.median(cpu_times),
        "steps_per_cpu_s": 1.0 / statistics.median(cpu_times),
        "samples_per_s": args.samples / step_s,
        "samples_per_cpu_s": args.samples / statistics.median(cpu_times),
        "sample_tokens_per_s": sum(sample_tokens) / sum(times),
        "model_tokens_per_step": statistics.mean(run_tokens),
        "sample_tokens_per_step": statistics.mean(sample_tokens),
        "peak_rss_mib": peak_kb / 1024,
        "step_peak_mib": (peak_kb - rss_setup_kb) / 1024,
        "first_step_loss": losses[0],
        "params": sum(p.numel() for p in model.parameters()),
    }


def _samples_per_step(cfg: TrainStepConfig) -> list[int]:
    """Tokens of each optimizer step's samples (one teacher copy each)."""
    return [sum(len(s) for s in step) for step in cfg.step_samples()]


def _rss_now_kb() -> int:
    """Current resident set (Linux /proc); the high-water mark only grows from here."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run each provider in a subprocess, print a table, write JSON rows to ``--out``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _args(argv)
    if args.provider:  # child process
        result = run_provider(args)
        Path(args.result_file).write_text(json.dumps(result))
        return 0
    results = {}
    for provider in args.providers.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, "-m", "bench.bench_train_step", *argv]
            cmd += ["--provider", provider, "--result-file", str(out)]
            print(f"running {provider} ...", flush=True)
            subprocess.run(cmd, check=True, cwd=REPO)
            results[provider] = json.loads(out.read_text())
    size = {
        "vocab": args.vocab,
        "hidden": args.hidden,
        "layers": args.layers,
        "heads": args.heads,
        "kv_heads": args.kv_heads,
        "params": next(iter(results.values()))["params"],
        "samples_per_step": args.samples,
        "generation_fraction": args.generation_fraction,
        "ref_checkpointing": args.ref_checkpointing,
        "steps": args.steps,
        "mask_rate": args.mask_rate,
        "strategy": f"{args.strategy}:{args.block_order}",
        "ref_attn": reference_attention(config_of(args)),
        "dtype": config_of(args).dtype,
        "threads": args.threads,
        "versions": versions("torch", "transformers", "liger-kernel", "flash-attn"),
        "lengths": {
            "instruction": args.instruction,
            "reflection": args.reflection,
            "answer": args.answer,
        },
    }
    device, rev = device_name("cpu"), commit()
    rows = []
    metrics = [
        ("samples_per_s", "1/s"),
        ("samples_per_cpu_s", "1/CPU-s"),
        ("steps_per_s", "1/s"),
        ("steps_per_cpu_s", "1/CPU-s"),
        ("sample_tokens_per_s", "tokens/s"),
        ("model_tokens_per_step", "tokens"),
        ("peak_rss_mib", "MiB"),
        ("step_peak_mib", "MiB"),
        ("first_step_loss", "nats"),
    ]
    for provider, r in results.items():
        for metric, unit in metrics:
            rows.append(
                {
                    "kernel": "train_step",
                    "provider": provider,
                    "mode": "full",
                    "metric": metric,
                    "value": r[metric],
                    "unit": unit,
                    "size": size,
                    "device": device,
                    "commit": rev,
                }
            )
    print(f"\n{device}, commit {rev}, {size['params'] / 1e6:.1f}M parameters")
    print(f"{'metric':24s}" + "".join(f"{p:>14s}" for p in results))
    for metric, unit in metrics:
        vals = "".join(f"{results[p][metric]:14.4g}" for p in results)
        print(f"{metric + ' (' + unit + ')':24s}{vals}")
    for name in [p for p in results if p != "reference" and "reference" in results]:
        o, r = results[name], results["reference"]
        speed = o["samples_per_s"] / r["samples_per_s"]
        cpu_speed = o["samples_per_cpu_s"] / r["samples_per_cpu_s"]
        mem = o["step_peak_mib"] / max(r["step_peak_mib"], 1e-9)
        print(
            f"samples/s, {name} / the authors' recipe: {speed:.2f}x wall, {cpu_speed:.2f}x CPU "
            f"time; step memory {name}/recipe: {mem:.2f}"
        )
        for metric, value in (
            ("speedup_wall", speed),
            ("speedup_cpu_time", cpu_speed),
            ("step_memory_ratio", mem),
        ):
            rows.append(
                {
                    "kernel": "train_step",
                    "provider": f"{name}/reference",
                    "mode": "full",
                    "metric": metric,
                    "value": value,
                    "unit": "x",
                    "size": size,
                    "device": device,
                    "commit": rev,
                }
            )
    write_rows(rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
