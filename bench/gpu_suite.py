"""Everything a lent GPU should measure, in one call: ``python -m bench.gpu_suite``.

1. The environment: card, driver, torch / CUDA / Triton versions, which optional packages
   (flash-attn-4, flash-attn, FA3, Liger) are installed and the attention kernel ``auto``
   picks. Nothing is installed: what is missing is skipped (FA4: the attention benchmark's
   ``varlen:flash_attn_4`` row and tests/test_gpu_kernels.py's FA4 case, each skipped with its
   reason).
2. The checks owed since the call's last review (``CHECKS``: the fused loss's head bias, logit
   scale and soft cap, a Gemma 2's soft caps, the MoE router's balancing loss in a packed
   micro-batch, dropout from config overrides under checkpointing of compiled layers, the
   compiled torch_varlen op), each
   against float64 with a tolerance per dtype, their errors in ``checks.figures`` and a table;
   then the tests on the device (``pytest -m gpu``, TRITON_INTERPRET=0: kernels compiled for
   real).
3. The pytest-benchmark suites (bench/test_*.py) at the ``headline`` profile: the fused loss at
   N=16384, D=4096, V=128256 and V=32000 in bf16 (ours per backend, the reference
   formulation, and every fused linear CE a user could pick instead: torch's
   linear_cross_entropy, Liger's Triton and Hopper FLCE and fused JSD, QuACK, Cut
   Cross-Entropy; time, TF/s over 6NDV, % of peak, extra memory, determinism over two runs,
   the loss against float64, each provider's version, code path and settings), the mask
   kernel, packing, the attention paths, and a train step of a 1B-class Llama (random
   weights, 4K packed, bf16) against the reference recipe.
4. ``gpu_suite.json`` and ``gpu_suite.md`` in ``--out``; the table is printed last.

``--dry-run`` takes the same path at the ``tiny`` profile on the CPU (tests through the Triton
interpreter, RC_TEST_DEVICE=cpu), and runs the ablation (bench/ablation.py) at its toy size,
every arm and benchmark (its GPU size is a step of bench/gpu_call.sh): CI runs it. Budget: at
most 12.5 minutes by its limits (2.4 measured on an H200 before tests/test_gpu_engines.py's
FSDP-engine and kept-outputs cases, which add about 1-2 minutes, and the checks, about 1.5,
estimated); the GPU call gives each of its steps less (``--budget-s``). ``--parts`` picks
what runs and in which order, ``--budget-s`` bounds them all (each part's limit is at most what is
left; a part that cannot start is listed as such); the JSON and markdown are rewritten after
every part, so a call cut short keeps what it measured. bench/gpu_call.sh runs the checks, the
loss suite (issue 20's providers), then the rest, each as a step of its own.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from reflectioncoder.kernels.varlen_attention import backend_installed, varlen_backend

from bench.providers.common import REPO, commit
from bench.report import ratio_table

# The attention kernels' packages, probed as varlen_attention probes them (flash-attn-4 leaves
# a namespace `flash_attn`, which is not flash-attn 2).
ATTENTION_PACKAGES = {
    "flash-attn-4": "flash_attn_4",
    "flash-attn": "flash_attn",
    "flash-attn-3": "flash_attn_3",
}
OPTIONAL = {
    "liger-kernel": "liger_kernel",
    "nvidia-cutlass-dsl": "cutlass",  # Liger's Hopper FLCE and QuACK are CuTe DSL
    "quack-kernels": "quack",
    "cut-cross-entropy": "cut_cross_entropy",
}
# tests/test_gpu_*.py: 26 s on an H200 (2026-11-30) before the FSDP-engine and kept-outputs cases,
# which add about 1-2 minutes (estimated: two inductor compiles of a tiny Llama layer, cold)
TEST_TIMEOUT_S = 200
GPU_TESTS = ("tests/test_gpu_kernels.py", "tests/test_gpu_engines.py")  # every test marked gpu
# What the call owes since its last review, checked first as a part of its own (bench/README.md's
# "owed on a GPU"): the capabilities' file (head bias, logit scale and soft cap in the fused loss;
# the MoE router's balancing loss; dropout from config overrides, checkpointed and compiled)
# and the compiled torch_varlen op on the image's torch 2.11. Their figures (errors against
# float64, tolerance per dtype) come back through RC_GPU_FIGURES into the JSON and the table.
CHECKS = (
    "tests/test_gpu_capabilities.py",
    "tests/test_gpu_kernels.py::test_compiled_attention_op_on_device[torch_varlen]",
)
# the "test" of their rows in RC_GPU_FIGURES
CHECK_FIGURES = ("head_options", "soft_caps", "router_loss", "dropout_recompute")
CHECKS_TIMEOUT_S = 150  # about 60-90 s on an H100 / H200, estimated: an inductor compile, cold
CASE = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")
ABLATION_TIMEOUT_S = 400  # the toy ablation: ~75 s on the shared 2-core CPU at load 12
# One pytest run per suite, each with its own limit, so that one overrunning loses only itself;
# 10 minutes in all at most with the tests' (a lent GPU gives a session 15 minutes, its start
# included; expected well under: the limits are for a card slower than planned).
SUITES = {
    "loss": ("bench/test_loss.py", 200),  # 11 providers at two shapes
    "train_step": ("bench/test_train_step.py", 110),
    "attention": ("bench/test_attention.py", 45),
    "mask": ("bench/test_mask.py bench/test_packing.py", 45),
}
# --parts: what runs, in this order (ablation: dry run)
PARTS = ("checks", "tests", *SUITES, "ablation")
MIN_PART_S = 30  # a part started with less left than this is not started (said so)

# GPU measurements owed that this suite does not take: each with the command that takes it (so
# a dry run lists every GPU figure the docs say is owed, not only the suite's own).
OWED_ELSEWHERE = (
    ("bash bench/gpu_call.sh", "the calibration misses replayed on the GPU (bench_host_replay "
     "--device cuda), this suite's checks, issue 19's step call (below), this suite's loss "
     "providers, then its tests and other suites, checkpointing's CUDA peak and host wait, the "
     "ablation at its GPU size, in that order inside one budget (470 s; predicted to reach "
     "the loss providers, bench/README.md)"),
    ("python -m bench.gpu_step_call", "issue 19: CodeLlama-7B layer shapes, each lever on and "
     "off, against the authors' faithful recipe (flash_attention_2, checkpointing, fp32 "
     "masters); step time, MFU / HFU, the 32-layer extrapolation (a step of gpu_call.sh, "
     "the cases in order of value until its budget)"),
    ("python -m bench.bench_engines --device cuda", "the engines' step time, tokens/s, "
     "samples/s, MFU / HFU in bf16 under the one count (the H200 rows were recomputed, not "
     "re-run; in no prepared call)"),
    ("(several GPUs)", "ZeRO-1/2/3 and FSDP2 on 8 GPUs: NCCL, per-GPU memory, the step model's "
     "8-GPU rows (no multi-GPU machine has been lent)"),
)  # fmt: skip


def environment(dry_run: bool) -> dict:
    import torch
    import triton

    env = {
        "commit": commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
        "dry_run": dry_run,
    }
    found = {d: backend_installed(b) for d, b in ATTENTION_PACKAGES.items()}
    found |= {d: importlib.util.find_spec(m) is not None for d, m in OPTIONAL.items()}
    for dist, installed in found.items():
        if not installed:
            env[dist] = None
            continue
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[dist] = "installed"
    if torch.cuda.is_available():  # bf16, head size 128: the suite's attention shape
        env["attention_auto"] = varlen_backend(torch.device("cuda"), torch.bfloat16, 128)
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        env["driver"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
    except OSError:
        env["driver"] = None
    return env


def _run(cmd: list[str], env: dict, timeout: int) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        out = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        rc, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as e:
        partial = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        rc, text = 124, f"timed out after {timeout} s\n{partial or ''}"  # what ran is listed
    return rc, text, time.perf_counter() - start


def run_tests(dry_run: bool, timeout: float = TEST_TIMEOUT_S, paths=GPU_TESTS) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1" if dry_run else "0")
    if dry_run:
        env["RC_TEST_DEVICE"] = "cpu"
    # the marked files alone (tests/test_gpu_names.py keeps the marker there): collecting every
    # test module would import what the GPU machine lacks, and take seconds
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-v",
        "-rs",
        "-m",
        "gpu",
        *paths,
        "-p",
        "no:randomly",
    ]
    rc, text, seconds = _run(cmd, env, timeout)
    lines = text.splitlines()
    summary = next((line for line in reversed(lines) if " in " in line), "")
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    # each case's outcome (-v), and why each skipped (-rs): which CUDA-only cases really ran
    cases = [" ".join(m.groups()) for line in lines if (m := CASE.match(line))]
    skipped = [line for line in lines if line.startswith("SKIPPED")]
    return {"rc": rc, "summary": summary.strip("= "), "failures": failures, "cases": cases,
            "skipped": skipped, "seconds": seconds}  # fmt: skip


def run_benchmarks(dry_run: bool, out: Path, names=tuple(SUITES), left=None, saved=None) -> dict:
    """Suites ``names`` in order (``tiny`` profile on a dry run, else ``headline``); rows from
    their --benchmark-json files. ``left()``: the seconds the call has left (each suite's limit
    is at most that); ``saved(bench)``: called after each suite with what is measured so far."""
    profile = "tiny" if dry_run else "headline"
    env = dict(os.environ, TRITON_INTERPRET="1" if dry_run else "0")
    bench = {"rc": 0, "rows": [], "skipped": [], "failures": [], "seconds": 0.0}
    for name in names:
        paths, timeout = SUITES[name]
        timeout = min(timeout, left()) if left else timeout
        if timeout < MIN_PART_S:
            bench["failures"].append(f"{paths}: not started, {timeout:.0f} s of the budget left")
            continue
        json_path = out / f"pytest_benchmark_{Path(paths.split()[0]).stem}.json"
        json_path.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-m", "pytest", *paths.split(), "-q", "--benchmark-only",
            f"--bench-profile={profile}", f"--benchmark-json={json_path}",
            "--benchmark-group-by=group", "--benchmark-columns=min,median,max,rounds",
        ]  # fmt: skip
        rc, text, took = _run(cmd, env, timeout)
        bench["rc"] = bench["rc"] or rc
        bench["seconds"] += took
        if json_path.exists():
            for b in json.loads(json_path.read_text())["benchmarks"]:
                bench["rows"].append(dict(b["extra_info"], group=b["group"], name=b["name"]))
        lines = text.splitlines()
        bench["skipped"] += [line for line in lines if line.startswith("SKIPPED")]
        bench["failures"] += [line for line in lines if line.startswith(("FAILED", "ERROR"))]
        if rc == 124:
            bench["failures"].append(f"{paths}: timed out after {timeout:.0f} s")
        if saved:
            saved(bench)
    return bench


def check_figures(path: str | None) -> list[dict]:
    """The capability checks' rows (``CHECK_FIGURES``) of the figures file at ``path``."""
    if not path or not Path(path).is_file():
        return []
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("test") in CHECK_FIGURES]


def checks_table(checks: dict) -> list[str]:
    """The checks part's lines: outcome, then a row per case, its worst error against float64
    (relative, in norm) beside the tolerance of its dtype."""
    lines = [f"Checks owed since the last review (`pytest -m gpu {' '.join(CHECKS)}`): "
             f"{checks['summary'] or 'no summary'} (exit {checks['rc']}, "
             f"{checks['seconds']:.0f} s).",
             *[f"- {f}" for f in checks["failures"] + checks.get("skipped", [])]]  # fmt: skip
    if checks.get("figures"):
        lines += ["", "| check | case | dtype | error nearest its bound (of) | bound | within |",
                  "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in checks["figures"]:
            tol = r["tol"] if isinstance(r["tol"], dict) else dict.fromkeys(r["errors"], r["tol"])
            worst = max(r["errors"], key=lambda k: r["errors"][k] / tol[k])  # nearest its bound
            e = r["errors"][worst]
            lines.append(f"| {r['test']} | {r['case']} | {r['dtype']} | {e:.2e} ({worst}) | "
                         f"{tol[worst]:.1e} | {'yes' if e <= tol[worst] else 'NO'} |")  # fmt: skip
    return [*lines, ""]


def markdown(env: dict, tests: dict, bench: dict, checks: dict | None = None) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("device", "dry_run"))
    lines = [
        f"# GPU suite{' (dry run, CPU)' if env['dry_run'] else ''}: {env['device']}",
        "",
        f"{versions}.",
        "",
        *(checks_table(checks) if checks else []),
        f"Tests on the device (`pytest -m gpu`): {tests['summary'] or 'no summary'} "
        f"(exit {tests['rc']}, {tests['seconds']:.0f} s).",
        *[f"- {f}" for f in tests["failures"] + tests.get("skipped", [])],
        "",
        "<details><summary>each test</summary>",
        "",
        *[f"- {c}" for c in tests.get("cases", [])],
        "",
        "</details>",
        "",
        f"Benchmarks (`pytest bench`, exit {bench['rc']}, {bench['seconds']:.0f} s); time is "
        "the median, ratios are to each group's baseline in this run:",
        *[f"- {f}" for f in bench["failures"] + bench["skipped"]],
        "",
        ratio_table(bench["rows"]) if bench["rows"] else "(no benchmark rows)",
        "",
        "Also owed on a GPU, by other commands:",
        *[f"- `{cmd}`: {what}" for cmd, what in OWED_ELSEWHERE],
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (CI)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/gpu")
    parser.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"what runs, in this order (of {', '.join(PARTS)})"
    )
    parser.add_argument(
        "--budget-s", type=float, default=None, help="all parts together (each its own limit)"
    )
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if not (args.skip_tests and p == "tests")]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"--parts: {', '.join(unknown)} not among {', '.join(PARTS)}")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device here; use --dry-run on a CPU", file=sys.stderr)
        return 2
    out = args.out or REPO / "bench" / "results" / ("gpu_dry_run" if args.dry_run else "gpu")
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    def left() -> float:
        return args.budget_s - (time.monotonic() - start) if args.budget_s else float("inf")

    env = environment(args.dry_run)
    print(json.dumps(env), flush=True)
    if not os.environ.get("RC_GPU_FIGURES"):  # gpu_call.sh sets one for the whole call
        os.environ["RC_GPU_FIGURES"] = str(out / "gpu_figures.jsonl")
        (out / "gpu_figures.jsonl").unlink(missing_ok=True)
    not_run = {"rc": 0, "summary": "not run (--parts)", "failures": [], "seconds": 0.0}
    result = {
        "environment": env,
        "checks": dict(not_run, figures=[]),
        "tests": dict(not_run),
        "benchmarks": {"rc": 0, "rows": [], "skipped": [], "failures": [], "seconds": 0.0},
        "ablation": {"rc": 0},
        "owed_elsewhere": [{"command": c, "what": w} for c, w in OWED_ELSEWHERE],
    }
    save(out, result)  # what is measured so far, after every part
    if "checks" in parts:
        checks = run_tests(args.dry_run, min(CHECKS_TIMEOUT_S, left()), CHECKS)
        checks["figures"] = check_figures(os.environ["RC_GPU_FIGURES"])
        result["checks"] = checks
        print(f"checks: {checks['summary']} (exit {checks['rc']})", flush=True)
        save(out, result)
    if "tests" in parts:
        result["tests"] = run_tests(args.dry_run, min(TEST_TIMEOUT_S, left()))
        print(f"tests: {result['tests']['summary']} (exit {result['tests']['rc']})", flush=True)
        save(out, result)

    def saved(bench: dict) -> None:
        result["benchmarks"] = bench
        save(out, result)

    suites = [p for p in parts if p in SUITES]
    result["benchmarks"] = run_benchmarks(args.dry_run, out, suites, left, saved)
    if args.dry_run and "ablation" in parts:  # on a GPU: gpu_call.sh's step, at its GPU size
        result["ablation"] = run_ablation_toy(out)
    text = save(out, result)
    print(f"-> {out / 'gpu_suite.json'}, {out / 'gpu_suite.md'}\n")
    print(text)
    tests, bench = result["tests"], result["benchmarks"]
    ok = tests["rc"] == 0 and result["checks"]["rc"] == 0
    ok = ok and bench["rc"] == 0 and not bench["failures"]
    ok = ok and (bench["rows"] or not suites) and result["ablation"]["rc"] == 0
    return 0 if ok else 1


def save(out: Path, result: dict) -> str:
    """gpu_suite.json and gpu_suite.md of ``result`` as it stands; the markdown."""
    (out / "gpu_suite.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result["environment"], result["tests"], result["benchmarks"], result["checks"])
    (out / "gpu_suite.md").write_text(text)
    return text


def run_ablation_toy(out: Path) -> dict:
    """bench/ablation.py --dry-run: every arm, training and benchmark at the toy size."""
    folder = out / "ablation_dry_run"
    cmd = [sys.executable, "-m", "bench.ablation", "--dry-run", "--out", str(folder)]
    rc, text, seconds = _run(cmd, dict(os.environ), ABLATION_TIMEOUT_S)
    table = folder / "ablation.md"
    print(f"ablation --dry-run: exit {rc}, {seconds:.0f} s", flush=True)
    if rc != 0:
        print(text[-3000:], flush=True)
    return {"rc": rc, "seconds": seconds, "table": table.read_text() if table.is_file() else ""}


if __name__ == "__main__":
    sys.exit(main())
