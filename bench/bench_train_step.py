"""End-to-end train step: ours (packed) against the reference recipe, same model, data and mask.

- ``ours``: each optimizer step's samples packed into micro-batches (teacher + student, the
  student only its visible tokens with original positions), varlen attention, the fused loss on
  the loss rows only (no full logits), backward, AdamW.
- ``reference``: the authors' recipe: one sample per micro-batch, doubled (teacher row + a
  full-length student row whose hidden keys are masked in eager attention), original position
  ids, full-vocabulary logits of both passes, SPEC §2 loss (CE + batchmean KL), gradient
  accumulation over the step's samples, AdamW.

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
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
IGNORE = -100


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--provider", choices=["ours", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    p.add_argument("--providers", default="reference,ours", help="comma-separated, in order")
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
    p.add_argument("--mask-rate", type=float, default=0.5, help="fixed r of SPEC §3")
    p.add_argument("--strategy", default="block_mask")
    p.add_argument("--block-order", default="tce")
    p.add_argument("--max-tokens", type=int, default=16384, help="our micro-batch budget")
    p.add_argument("--ref-attn", default="eager", choices=["eager", "sdpa"])
    p.add_argument("--loss-backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument("--out", default=str(REPO / "bench/results/train_step.json"))
    args = p.parse_args(argv)
    if not 0.0 < args.mask_rate <= 1.0:
        p.error(f"--mask-rate: must be in (0, 1], got {args.mask_rate}")
    if args.samples < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--samples and --steps must be >= 1, --warmup >= 0")
    return args


def _rate_step(rate: float) -> tuple[int, int]:
    """(step, total_steps) whose SPEC §3 rate min((step + 1) / total, 1) is ``rate``."""
    total = 1000
    return max(round(rate * total) - 1, 0), total


def setup_train_step(args: argparse.Namespace):
    """The model (seeded), its AdamW, and each optimizer step's samples (same for all)."""
    from reflectioncoder.data.synthetic import synthetic_samples
    from reflectioncoder.model import build_tiny_llama

    model = build_tiny_llama(
        args.vocab,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=8192,
        seed=args.seed,
    )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
    n_steps = args.warmup + args.steps
    samples = synthetic_samples(
        n_steps * args.samples,
        vocab_size=args.vocab,
        seed=args.seed,
        instruction=tuple(args.instruction),
        reflection=tuple(args.reflection),
        answer=tuple(args.answer),
    )
    per_step = [samples[i * args.samples : (i + 1) * args.samples] for i in range(n_steps)]
    return model, opt, per_step


def _mask_cfg(args):
    from reflectioncoder.data.config import MaskConfig

    return MaskConfig(strategies=(args.strategy,), block_order=args.block_order)


def _prepare_ours(args, per_step):
    from reflectioncoder.data.config import PackingConfig
    from reflectioncoder.data.packing import pack_rank, plan_step

    step, total = _rate_step(args.mask_rate)
    packing = PackingConfig(max_tokens=args.max_tokens, normalisation="sample")
    cfg = _mask_cfg(args)
    return [
        pack_rank(plan_step(samples, step, total, cfg, packing, args.seed), 0, cfg, packing)
        for samples in per_step
    ]


def _step_ours(model, opt, batches, args) -> tuple[float, int]:
    from reflectioncoder.loss import reflection_loss
    from reflectioncoder.model import forward_hidden, lm_head_weight

    opt.zero_grad(set_to_none=True)
    total = torch.zeros(())
    for batch in batches:
        hidden = forward_hidden(model, batch)
        loss, _ = reflection_loss(hidden, batch, lm_head_weight(model), backend=args.loss_backend)
        loss.backward()
        total += loss.detach()
    opt.step()
    return float(total), sum(b.num_tokens for b in batches)  # host read after the step: bench only


def _prepare_reference(args, per_step):
    """Each sample's doubled row pair: ids (2, L), positions (2, L), and the reference's
    padding-style key mask (2, L) (teacher: all ones; student: its visibility), from which
    transformers builds the causal masked attention inside the forward, as the reference does."""
    from reflectioncoder.data.masking import draw_masks, visibility_host

    step, total = _rate_step(args.mask_rate)
    plans = [draw_masks(samples, step, total, _mask_cfg(args), args.seed) for samples in per_step]
    out = []
    for samples, plan in zip(per_step, plans, strict=True):
        vis = visibility_host(plan)
        items = []
        for k, s in enumerate(samples):
            length = len(s)
            v = vis[int(plan.offsets[k]) : int(plan.offsets[k + 1])]
            keys = torch.stack([torch.ones(length, dtype=torch.long), v.long()])
            items.append(
                (
                    s.ids.expand(2, length).contiguous(),
                    torch.arange(length).expand(2, length).contiguous(),
                    keys,
                    s.labels,
                    s.student_labels,
                )
            )
        out.append(items)
    return out


def _step_reference(model, opt, items, args) -> tuple[float, int]:
    opt.zero_grad(set_to_none=True)
    n = len(items)
    total = 0.0
    tokens = 0
    for ids, pos, mask, labels, student_labels in items:
        logits = model(input_ids=ids, position_ids=pos, attention_mask=mask).logits  # (2, L, V)
        t, s = logits[0], logits[1]
        ce_t = F.cross_entropy(t[:-1], labels[1:], ignore_index=IGNORE, reduction="sum")
        ce_s = F.cross_entropy(s[:-1], student_labels[1:], ignore_index=IGNORE, reduction="sum")
        n_ce = (labels[1:] != IGNORE).sum() + (student_labels[1:] != IGNORE).sum()
        rows = student_labels != IGNORE
        kl = F.kl_div(
            F.log_softmax(s[rows], dim=-1),
            F.softmax(t[rows].detach(), dim=-1),
            reduction="batchmean",
        )
        loss = ((ce_t + ce_s) / n_ce + kl) / n
        loss.backward()
        total += float(loss.detach())  # host read after backward: bench bookkeeping
        tokens += ids.numel()
    opt.step()
    return total, tokens


def run_provider(args: argparse.Namespace) -> dict:
    """One provider in this process: warm-up, timed steps, memory high-water."""
    torch.manual_seed(args.seed)
    model, opt, per_step = setup_train_step(args)
    if args.provider == "ours":
        data = _prepare_ours(args, per_step)
        step_fn = _step_ours
    else:
        model.set_attn_implementation(args.ref_attn)
        data = _prepare_reference(args, per_step)
        step_fn = _step_reference
    rss_setup_kb = _rss_now_kb()
    times, cpu_times, losses, run_tokens = [], [], [], []
    for k, d in enumerate(data):
        t0, c0 = time.perf_counter(), time.process_time()
        loss, tokens = step_fn(model, opt, d, args)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        losses.append(loss)
        if k >= args.warmup:
            times.append(dt)
            cpu_times.append(dc)
            run_tokens.append(tokens)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sample_tokens = [sum(len(s) for s in samples) for samples in per_step[args.warmup :]]
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
        "sample_tokens_per_s": sum(sample_tokens) / sum(times),
        "model_tokens_per_step": statistics.mean(run_tokens),
        "sample_tokens_per_step": statistics.mean(sample_tokens),
        "peak_rss_mib": peak_kb / 1024,
        "step_peak_mib": (peak_kb - rss_setup_kb) / 1024,
        "first_step_loss": losses[0],
        "params": sum(p.numel() for p in model.parameters()),
    }


def _rss_now_kb() -> int:
    """Current resident set (Linux /proc); the high-water mark only grows from here."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _device() -> str:
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"CPU, {os.cpu_count()} cores, {model}"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
    except OSError:
        return "unknown"


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
        "steps": args.steps,
        "mask_rate": args.mask_rate,
        "strategy": f"{args.strategy}:{args.block_order}",
        "ref_attn": args.ref_attn,
        "lengths": {
            "instruction": args.instruction,
            "reflection": args.reflection,
            "answer": args.answer,
        },
    }
    device, commit = _device(), _commit()
    rows = []
    metrics = [
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
                    "commit": commit,
                }
            )
    print(f"\n{device}, commit {commit}, {size['params'] / 1e6:.1f}M parameters")
    print(f"{'metric':24s}" + "".join(f"{p:>14s}" for p in results))
    for metric, unit in metrics:
        vals = "".join(f"{results[p][metric]:14.4g}" for p in results)
        print(f"{metric + ' (' + unit + ')':24s}{vals}")
    if "ours" in results and "reference" in results:
        o, r = results["ours"], results["reference"]
        speed = o["steps_per_s"] / r["steps_per_s"]
        cpu_speed = o["steps_per_cpu_s"] / r["steps_per_cpu_s"]
        mem = o["step_peak_mib"] / max(r["step_peak_mib"], 1e-9)
        print(
            f"speed-up per original sample: {speed:.2f}x wall, {cpu_speed:.2f}x CPU time; "
            f"step memory ours/ref: {mem:.2f}"
        )
        for metric, value in (
            ("speedup_wall", speed),
            ("speedup_cpu_time", cpu_speed),
            ("step_memory_ratio", mem),
        ):
            rows.append(
                {
                    "kernel": "train_step",
                    "provider": "ours/reference",
                    "mode": "full",
                    "metric": metric,
                    "value": value,
                    "unit": "x",
                    "size": size,
                    "device": device,
                    "commit": commit,
                }
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
