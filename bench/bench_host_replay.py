"""Host (CPU) time of a whole measured training step, replayed with the code that ran it.

    python -m bench.bench_host_replay --out bench/results/host_replay.json
    python -m bench.bench_host_replay --device cuda --archives .replay --out OUT.json  # a GPU
    python -m bench.bench_host_replay --device cpu --profile --widths 2    # the same path, CPU
    python -m bench.bench_host_replay --op-timeline --out bench/results/host_replay.json

bench/step_model.py's calibration has two steps measured on an H200: the 1.06B CLI step
(``reflectioncoder train`` through bench/bench_engines.py at commit de58a14) and the 1.5B
bench step (bench/test_train_step.py's ``ours`` at 3d82f92). This script extracts each
commit's tree (``git archive`` into a temporary folder; the working tree is not touched) and
runs that commit's own code on the CPU as the run went, in a child that runs this file by path
beside that tree (the runs: host_replay_cases.py; what they measure: host_replay_record.py;
this file: the parent and the command): for the CLI step bench_engines' saved
model, toy data, tokenizer and ``reflectioncoder train`` overrides (the CLI, its planning and
packing on the background thread, the teacher-CE logging pass, clipping, foreach AdamW,
metrics), steps 2-4 of 4; for the 1.5B step the suite's prepared micro-batches, model and
AdamW, one warm-up call and ``STEP_1B_ROUNDS`` timed calls. Depth, micro-batches and tokens
are the run's; the hidden size is tiny (``WIDTHS``: 2, 4, 8; the heads as many as the width,
head size 1, the KV heads a quarter of them as run, at least one; the MLP scaled with the
width) so that the kernels cost little and the CPU time is what the host spends issuing the
work. One thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``). Per step: the
process's CPU time (``process_time``: the background packing thread included), the main
thread's (``thread_time``) and wall time; per width the median over the steps the run timed
(steps 2-4; the suite's median of its calls), the least of ``--rounds`` fresh processes. The
host at width 0 is extrapolated (least squares, linear in the width: what the CPU kernels
still cost at these widths grows with T x width); the smallest width is an upper bound. The
main thread's CPU is also split by where it is spent (``PARTS``: the layers' forward, the
loss calls, backward, clipping, AdamW, the metrics; the rest is the step's glue).

CUDA-only kernels run as one-op CPU stand-ins (one launch each), the Python around them as it
ran: Liger's RMSNorm / RoPE / SwiGLU (bench_host_overhead's stand-ins: one op forward, two
backward), torch's varlen attention (what both commits picked on the H200, which had no
flash-attn: its Python wrapper and custom op as they are, a CPU kernel of one op registered
for ``torch_attn::_varlen_attn`` and its backward), the fused loss's Triton row and slot-sum
kernels (one op each; the GPU's chunk budget, so the chunks are the GPU's). Not replayed: the
cost of a CUDA launch and of the caching allocator against a CPU op's (stated in RESULTS).

The step is split at its host syncs (where a CUDA run waits for the GPU to drain): the main
thread's CPU time between them, marked where each happens (the loss plan's ``nonzero``; the
CLI's ``tolist`` after clipping). A separate run (``--count-syncs`` in the child) lists every
op of one step that syncs on CUDA (``nonzero``, ``item`` / ``bool`` of a tensor, ``tolist``,
``repeat_interleave`` without ``output_size``) with the file and line that called it.

``--op-timeline`` records, for bench/step_model.py's simulation of one CUDA stream, every op of
one step that a CUDA run launches a kernel for (``_OpRecorder``: a ``TorchDispatchMode`` over
the main thread; the ops on the model's, optimizer's and batch's tensors and what they make,
the stand-ins as one kernel each): its issue time since its segment's start (the recorder's
own CPU taken off), category, and FLOPs and bytes at the run's own shapes, at widths 8 and 16
(least of 3 processes each), the issue times extrapolated to width 0 (bench/host_replay_ops.py).

``--device cuda`` (``--profile`` on the CPU) settles what the replay cannot: each step at the
run's own shapes with its own CUDA kernels (Liger, torch's varlen attention pinned as on the
H200, the fused loss's Triton kernels; on the CPU the stand-ins at the first of ``--widths``),
timed unprofiled, then the timed steps again through torch.profiler in the same process. Per
step: wall, the main thread's CPU, GPU busy time (the union of kernels and copies), the GPU's
idle after each host sync and between kernels, kernels, launches, host CPU per launch, kernel
time by category (bench/host_replay_profile.py reads the Chrome trace); the medians against
the step model's calibration row, and a ``reading``: (a) a launch costs the host more, or (b)
the GPU is slower at these shapes than modelled.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# The child's side (host_replay_cases.py, host_replay_record.py), re-exported here where
# callers import it; run by file path, this script imports it as a top-level module.
if __package__:
    from bench.host_replay_cases import (
        CLI_HEADS,
        CLI_HIDDEN,
        CLI_INTERMEDIATE_PER_HIDDEN,
        CLI_LAYERS,
        CLI_TIMED_STEPS,
        H200_HOST_ROWS_MS,
        REAL,
        STEP_1B_ROUNDS,
        STEP_1B_VOCAB,
        _child,
    )
    from bench.host_replay_record import ATTENTION_OPS, GEMMS, OP_CATEGORIES, PARTS
else:  # a child: beside a replayed commit, whose ``bench`` this tree's must not shadow
    from host_replay_cases import H200_HOST_ROWS_MS, REAL, _child

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (2, 4, 8)
COMMITS = {"cli": "de58a14", "step_1b": "3d82f92"}
CASES = (*COMMITS, "host_speed")

__all__ = [
    "ATTENTION_OPS",
    "CASES",
    "CLI_HEADS",
    "CLI_HIDDEN",
    "CLI_INTERMEDIATE_PER_HIDDEN",
    "CLI_LAYERS",
    "CLI_TIMED_STEPS",
    "COMMITS",
    "GEMMS",
    "H200_HOST_ROWS_MS",
    "OP_CATEGORIES",
    "PARTS",
    "REAL",
    "ROOT",
    "SPLITS",
    "STEP_1B_ROUNDS",
    "STEP_1B_VOCAB",
    "WIDTHS",
    "_fit_zero",
    "_run_child",
    "archive",
    "extract",
    "host_speed",
    "main",
    "profile_case",
    "replay",
]


def archive(commit: str, archives: Path | None = None) -> bytes:
    """``commit``'s tree as a tar: ``archives/<commit>.tar`` where written beforehand
    (``--write-archives``: a lent GPU gets the working tree without git's history), else
    ``git archive``."""
    saved = archives / f"{commit}.tar" if archives else None
    if saved is not None and saved.is_file():
        return saved.read_bytes()
    cmd = ["git", "-C", str(ROOT), "archive", commit]
    try:
        return subprocess.run(cmd, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        where = f"{saved} is missing and " if saved else ""
        raise RuntimeError(
            f"{commit}: {where}git archive failed ({_why(e)}); "
            "where git has the history: python -m bench.bench_host_replay --write-archives "
            ".replay, and carry .replay"
        ) from e


def _why(error: Exception) -> str:
    stderr = getattr(error, "stderr", None)
    return stderr.decode(errors="replace").strip() if stderr else str(error)


def extract(commit: str, folder: Path, archives: Path | None = None) -> Path:
    """``commit``'s tree under ``folder``; returns a folder holding only its two
    packages, importable as they were installed (setup.py maps ``reflectioncoder.kernels`` to
    ``kernels/``; a bare ``kernels`` on sys.path would meet transformers' hub probe)."""
    tree = folder / commit
    tree.mkdir(parents=True)
    archive_ = archive(commit, archives)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive_, check=True)
    (tree / "reflectioncoder" / "kernels").symlink_to(tree / "kernels")
    site = tree / "_site"
    site.mkdir()
    for package in ("reflectioncoder", "bench"):
        (site / package).symlink_to(tree / package)
    return site


# ---------------------------------------------------------------------------------------------
# The parent: fresh processes per width and round, the least of the rounds, the fit to width 0.


def _run_child(
    kind: str,
    site: Path,
    width: int,
    count_syncs: bool = False,
    device: str = "cpu",
    trace: Path | None = None,
    record_ops: bool = False,
) -> dict:
    env = dict(os.environ)
    if device == "cpu":
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--site", str(site)]
    cmd += ["--width", str(width), "--device", device]
    cmd += (["--count-syncs"] if count_syncs else []) + (["--trace", str(trace)] if trace else [])
    cmd += ["--record-ops"] if record_ops else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} width {width}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fit_zero(widths: list[int], values: list[float]) -> tuple[float, float]:
    """Least squares value = a + b x width: (a, b)."""
    n = len(widths)
    mx, my = sum(widths) / n, sum(values) / n
    sxx = sum((x - mx) ** 2 for x in widths)
    b = sum((x - mx) * (y - my) for x, y in zip(widths, values, strict=True)) / sxx
    return my - b * mx, b


def _fit_keys(widths: list[int], rows: list[dict], keys: list[str]) -> dict:
    """Per key of ``rows`` (one a width): its ``_fit_zero`` as {at_width_0, per_width}."""
    fit = {}
    for key in keys:
        a, b = _fit_zero(widths, [r[key] for r in rows])
        fit[key] = {"at_width_0": a, "per_width": b}
    return fit


# A step's main-thread CPU split two ways: between its host syncs, and by PARTS.
SPLITS = ("segments_main_cpu_s", "parts_main_cpu_s")


def _summary(runs: list[dict], first: int) -> dict:
    """Per timed step the least over the rounds (its segments from the round with the least
    main-thread CPU), then the median over the timed steps (the run's own statistic)."""
    per_step = []
    for i in range(first, len(runs[0]["steps"])):
        steps = [r["steps"][i] for r in runs]
        best = min(steps, key=lambda s: s["main_thread_cpu_s"])
        per_step.append(
            {
                **best,
                "cpu_s": min(s["cpu_s"] for s in steps),
                "wall_s": min(s["wall_s"] for s in steps),
            }
        )
    median = {
        k: statistics.median(s[k] for s in per_step)
        for k in ("cpu_s", "main_thread_cpu_s", "wall_s")
    }
    for split in SPLITS:
        median[split] = {
            k: statistics.median(s[split][k] for s in per_step) for k in per_step[0][split]
        }
    prepared = [r["prepare_cpu_s"][first:] for r in runs if r["prepare_cpu_s"]]
    if prepared:
        median["prepare_cpu_s"] = statistics.median(min(p) for p in zip(*prepared, strict=True))
    return {"per_step": per_step, "median": median}


def replay(kind: str, site: Path, widths: tuple[int, ...], rounds: int) -> dict:
    rows = []
    for width in widths:
        runs = [_run_child(kind, site, width) for _ in range(rounds)]
        # the CLI: bench_engines' median of steps 2-4; the 1.5B: the calls after the warm-up
        rows.append({"width": width, "arch": runs[0]["arch"], **_summary(runs, first=1)})
        if "micro_batches" in runs[0]:
            rows[-1]["micro_batches"] = runs[0]["micro_batches"]
        print(json.dumps({"case": kind, "width": width, **rows[-1]["median"]}), flush=True)
    ws = [r["width"] for r in rows]
    medians = [r["median"] for r in rows]
    keys = ("cpu_s", "main_thread_cpu_s", "wall_s", "prepare_cpu_s")
    fit = _fit_keys(ws, medians, [k for k in keys if k in medians[0]])
    for split in SPLITS:
        fit[split] = _fit_keys(ws, [m[split] for m in medians], list(medians[0][split]))
    counted = _run_child(kind, site, widths[0], count_syncs=True)
    return {
        "commit": COMMITS[kind],
        "widths": rows,
        "fit": fit,
        "syncs_one_step": counted["syncs"],
        "ops_one_step": counted["ops"],
    }


def host_speed(site: Path, rounds: int) -> dict:
    """The H200 machine's host-only rows against this machine's (the least over rounds)."""
    runs = [_run_child("host_speed", site, 0)["cpu_ms"] for _ in range(rounds)]
    rows = {}
    for name, h200_ms in H200_HOST_ROWS_MS.items():
        here = min(r[name] for r in runs)
        rows[name] = {"h200_host_ms": h200_ms, "here_ms": here, "h200_over_here": h200_ms / here}
    ratio = statistics.median(r["h200_over_here"] for r in rows.values())
    print(json.dumps({"host_speed_h200_over_here": ratio}), flush=True)
    return {"commit": COMMITS["step_1b"], "rows": rows, "median_h200_over_here": ratio}


# ---------------------------------------------------------------------------------------------
# --profile: each timed step through torch.profiler, the GPU's side too on CUDA (real widths).


def profile_case(kind: str, site: Path, device: str, width: int) -> dict:
    """One fresh process runs the steps unprofiled (wall from one step's start to the next,
    the main thread's CPU), then again profiled (the CLI: the whole run again, its warm-up
    step included); per timed step both, with the host's CPU per launch (unprofiled CPU /
    the profile's launches)."""
    from bench.host_replay_profile import profile_steps, summarise_case

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        timed = _run_child(kind, site, width, device=device, trace=trace)
        case = summarise_case(kind, device, timed, profile_steps(json.loads(trace.read_text())))
    print(json.dumps({"case": kind, **case["median"]}), flush=True)
    return case


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--site", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count-syncs", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--record-ops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: the steps at the measured runs' own shapes, their own kernels (implies "
        "--profile); cpu: tiny widths, one-op stand-ins",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="each timed step through torch.profiler (the first of --widths on the CPU): "
        "JSON to --out, a markdown table beside it (.md)",
    )
    parser.add_argument(
        "--archives",
        type=Path,
        default=None,
        help="read each commit's tree from ARCHIVES/<commit>.tar where there (a GPU's copy of "
        "the working tree has no git history)",
    )
    parser.add_argument(
        "--write-archives",
        type=Path,
        default=None,
        metavar="DIR",
        help="write DIR/<commit>.tar for both commits (git archive) and exit",
    )
    parser.add_argument(
        "--op-timeline",
        action="store_true",
        help="record every kernel-launching op of one step per case at OP_WIDTHS (issue time, "
        "category, work at the run's shapes) into --out's 'op_timeline', keeping the rest",
    )
    parser.add_argument("--trace", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.child:
        child = _child(
            args.child,
            Path(args.site),
            args.width,
            args.count_syncs,
            args.device,
            args.trace,
            args.record_ops,
        )
        print(json.dumps(child))
        return 0
    if args.write_archives:
        _write_archives(args.write_archives)
        return 0
    unknown = sorted(set(args.cases.split(",")) - set(CASES))
    if unknown:
        parser.error(f"--cases: {', '.join(unknown)} not among {', '.join(CASES)}")
    if args.profile or args.device == "cuda":
        return _profile_main(args)
    if args.op_timeline:
        from bench.host_replay_ops import _op_timeline_main

        return _op_timeline_main(args)
    widths = tuple(int(w) for w in args.widths.split(","))
    if len(set(widths)) < 2:  # one width cannot be extrapolated (_fit_zero)
        parser.error(f"--widths: at least two different widths, got {args.widths!r}")
    return _replay_main(args, widths)


def _write_archives(folder: Path) -> None:
    """FOLDER/<commit>.tar for both commits (git archive): what a GPU's copy reads."""
    folder.mkdir(parents=True, exist_ok=True)
    for commit in COMMITS.values():
        (folder / f"{commit}.tar").write_bytes(archive(commit))


def _replay_main(args, widths: tuple[int, ...]) -> int:
    """Each case replayed at ``widths`` in fresh children, fitted to width 0; JSON to --out."""
    import torch

    from bench.providers.common import cpu_model

    result: dict = {"meta": {"torch": torch.__version__, "threads": 1, "rounds": args.rounds}}
    result["meta"]["cpu"] = cpu_model()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.cases.split(","):
            commit = COMMITS["step_1b" if kind == "host_speed" else kind]
            site = Path(tmp) / commit / "_site"
            if not site.exists():
                site = extract(commit, Path(tmp), args.archives)
            if kind == "host_speed":
                result[kind] = host_speed(site, args.rounds)
            else:
                result[kind] = replay(kind, site, widths, args.rounds)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _profile_main(args) -> int:
    import torch

    from bench.providers.common import cpu_model

    width = REAL if args.device == "cuda" else int(args.widths.split(",")[0])
    cases = [k for k in args.cases.split(",") if k in COMMITS]
    result: dict = {"meta": {"torch": torch.__version__, "cpu": cpu_model()}}
    if args.device == "cuda":
        result["meta"]["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in cases:
            site = extract(COMMITS[kind], Path(tmp), args.archives)
            result[kind] = profile_case(kind, site, args.device, width)
    from bench.host_replay_profile import profile_table

    table = profile_table(result)
    print(table)
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
