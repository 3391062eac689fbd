"""Issue 19's prepared GPU call: the training step at CodeLlama-7B layer shapes, each lever on
and off, against the authors' faithful recipe on the same layers. Run it when a GPU is lent:

    python -m bench.gpu_step_call --out bench/results/gpu/step_call.json --budget-s 240
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

Each case runs in a process of its own (``--child``: both depths; its GPU memory, compiled
graphs and any CUDA error die with it), in the order of ``CASES`` (the recipe and the shipped
default first: what issue 19 needs most), each under ``--case-limit-s`` and all under
``--budget-s`` (a case that does not fit what is left is not started, and the table says so).
The JSON and the table are rewritten after every case and every row, so a call cut short
keeps what it measured. The children share each depth's saved model (``--work``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from bench import RESULTS
from bench.providers.common import commit
from bench.providers.train_step import (
    TrainStepConfig,
    reference_attention,
    setup_provider,
    setup_trainer,
    step_flops,
)

CODELLAMA_7B = dict(vocab=32016, hidden=4096, layers=2, heads=32, kv_heads=32, intermediate=11008)
TOY = dict(vocab=512, hidden=64, layers=2, heads=4, kv_heads=4, intermediate=176)
# In the order they run: what issue 19 needs most first (the recipe, our default with its
# layers eager, then compiled as shipped: the first compile may take a minute, so the ratio to
# the recipe is measured before it; then the levers by their predicted weight), so a budget cut
# short loses the least.
CASES = {
    "recipe": None,
    "eager layers": ["model.compile=false"],
    "trainer (defaults)": [],
    "autocast (fp32 weights)": ["model.mixed_precision=autocast"],
    "save_gemms": ["model.checkpointing_policy=save_gemms"],
    # after the default's levers: the most valuable cases first (bench/README.md)
    "checkpointing full": ["model.checkpointing_policy=full"],
    "offload": ["model.checkpointing_policy=offload"],
    "mlp_rerun": ["model.checkpointing_policy=mlp_rerun"],
    "alternate": ["model.checkpointing_policy=alternate"],
    "checkpointing off": ["model.gradient_checkpointing=false"],
    # The attention kernel: torch's FA2-class kernel, and FA4 where its wheel is carried
    # (`auto` then picks it too); a case whose kernel cannot run here is skipped, saying why.
    "attention torch_varlen": ["model.attention=torch_varlen"],
    "attention flash_attn_4": ["model.attention=flash_attn_4"],
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
    trainer = setup_trainer(cfg, cfg.step_samples(), extra=CASES[name])
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
        if two is None or four is None:  # a case cut short: one depth measured
            out.append({"case": name, "layers": 32, "step_s": None,
                        "note": "not extrapolated: one depth measured"})  # fmt: skip
            continue
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


def _row(rows: list[dict], name: str, layers: int) -> dict | None:
    return next((r for r in rows if r["case"] == name and r["layers"] == layers), None)


def _pct(row: dict, key: str) -> str:
    return f"{100 * row[key]:.1f}%" if key in row else "-"


def markdown(
    rows: list[dict],
    at32: list[dict],
    device: str,
    skipped: dict[str, str],
    stopped: dict[str, str] | None = None,
) -> str:
    lines = [
        f"# Issue 19's step call: {device}",
        "",
        *[f"- skipped {name}: {why}" for name, why in skipped.items()],
        *[f"- cut short, {name}: {why}" for name, why in (stopped or {}).items()],
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


def _base(dry_run: bool, steps: int) -> TrainStepConfig:
    shape = TOY if dry_run else CODELLAMA_7B
    lengths = dict(instruction=(10, 40), reflection=(30, 120), answer=(10, 40))
    return TrainStepConfig(
        **shape, samples=8, steps=1 + steps, max_tokens=512 if dry_run else 16384,
        device="cpu" if dry_run else "cuda", dtype="fp32" if dry_run else "bf16",
        **(lengths if dry_run else {}),
    )  # fmt: skip


def _share_saved_models(work: Path) -> None:
    """The trainer cases' saved model (train_step._saved_model: built and saved once a process)
    kept in ``work``, one folder a depth, for every child of the call: at 7B widths building
    and writing it costs seconds a depth."""
    import functools
    import tempfile
    import types

    from bench.bench_checkpointing import prepare_model_and_data
    from bench.providers import train_step

    @functools.cache
    def saved(cfg: TrainStepConfig):
        folder = work / f"model_{cfg.layers}_layers"
        if not folder.is_dir():  # written aside, then renamed: a child stopped midway leaves none
            partial = Path(tempfile.mkdtemp(dir=work))
            prepare_model_and_data(partial, 8, cfg.arch(), cfg.kv_heads, vocab=cfg.vocab)
            partial.rename(folder)
        return types.SimpleNamespace(name=str(folder)), folder / "toy.jsonl"

    train_step._saved_model = saved


def child(names: list[str], base: TrainStepConfig, steps: int, out: Path, work: Path) -> int:
    """Cases ``names`` at both depths in this process; ``out`` rewritten after each row."""
    _share_saved_models(work)
    result = {"rows": [], "skipped": {}, "device": _device_name(base.device)}
    for name in names:
        why = skip_reason(name, base)
        if why is not None:
            result["skipped"][name] = why
            print(f"skipped {name}: {why}", flush=True)
        for layers in () if why else (2, 4):
            cfg = dataclasses.replace(base, layers=layers)
            result["rows"].append(measure(name, cfg, steps))
            print(json.dumps(result["rows"][-1]), flush=True)
            out.write_text(json.dumps(result) + "\n")
    out.write_text(json.dumps(result) + "\n")
    return 0


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"


def _run_child(names: list[str], args, timeout: float, part: Path, work: Path):
    """Cases ``names`` in a fresh process: (what it wrote, why it stopped early or "")."""
    cmd = [sys.executable, "-m", "bench.gpu_step_call", "--child", ",".join(names),
           "--out", str(part),
           "--steps", str(args.steps), "--work", str(work)]  # fmt: skip
    cmd += ["--dry-run"] if args.dry_run else []
    part.unlink(missing_ok=True)
    try:
        proc = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
        stop = "" if proc.returncode == 0 else f"exit {proc.returncode}: " + _last(proc.stderr)
    except subprocess.TimeoutExpired:
        stop = f"stopped at its limit, {timeout:.0f} s"
    found = json.loads(part.read_text()) if part.is_file() else {}
    return found, stop


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-300:] if lines else ""


def write(out: Path, result: dict, base: TrainStepConfig) -> str:
    """The JSON and markdown of what is measured so far (after every case)."""
    peak = None
    if base.device == "cuda" and result["device"]:
        from reflectioncoder.train.metrics import guess_peak_tflops

        tflops = guess_peak_tflops(result["device"])
        peak = tflops * 1e12 if tflops else None
    result["at_32_layers"] = extrapolate(result["rows"], peak)
    header = f"{result['device']}, recipe attention {reference_attention(base)}"
    at32 = result["at_32_layers"]
    text = markdown(result["rows"], at32, header, result["skipped"], result["stopped"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(text)
    return text


def run_cases(args, base: TrainStepConfig, out: Path) -> int:
    """Every case of ``args.cases`` in its own process, in order, inside ``args.budget_s``."""
    import tempfile

    start = time.monotonic()
    result = {"device": "", "rows": [], "skipped": {}, "stopped": {}, "commit": commit()}
    cases = args.cases.split(",")
    # On a GPU a process a case (its memory, compiled graphs and CUDA errors die with it); the
    # dry run takes the same path with every case in one process (imports cost the CPU more).
    groups = [cases] if args.dry_run else [[name] for name in cases]
    with tempfile.TemporaryDirectory(prefix="rc-step-call-") as tmp:
        work = Path(tmp)
        for names in groups:
            label = ", ".join(names)
            left = args.budget_s - (time.monotonic() - start) if args.budget_s else None
            if left is not None and left < MIN_CASE_S:
                result["stopped"][label] = f"not started: {left:.0f} s of the budget left"
                continue
            limit = args.case_limit_s * len(names)
            found, stop = _run_child(
                names, args, min(limit, left or limit), work / "part.json", work
            )
            result["device"] = result["device"] or found.get("device", "")
            result["rows"] += found.get("rows", [])
            result["skipped"] |= found.get("skipped", {})
            if stop:
                result["stopped"][label] = stop
            print(f"{label}: {len(found.get('rows', []))} rows {stop}".rstrip(), flush=True)
            write(out, result, base)
    print(write(out, result, base))
    return 0 if not result["stopped"] else 1


MIN_CASE_S = 20  # a case started with less than this left cannot finish one depth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (CI)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per case and depth")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--budget-s", type=float, default=None, help="all cases (default: no limit)"
    )
    parser.add_argument("--case-limit-s", type=float, default=150, help="one case, both depths")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        parser.error(f"--cases: {', '.join(unknown)} not among {', '.join(CASES)}")
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_step_call: no CUDA device here; use --dry-run on a CPU", file=sys.stderr)
        return 2
    base = _base(args.dry_run, args.steps)
    if args.child:
        return child(args.child.split(","), base, args.steps, args.out, args.work)
    out = args.out or RESULTS / (
        "gpu_step_call_dry_run.json" if args.dry_run else "gpu/step_call.json"
    )
    return run_cases(args, base, out)


if __name__ == "__main__":
    sys.exit(main())
