"""Verdicts against machine load, and the released completions against EvalPlus's scores.

``--load``: score one sample file twice with ``reflectioncoder evaluate``, once as the machine
is and once with two busy-looping processes per core running beside the scorer, and compare
the per-task verdicts (base and plus). ``--reproduce``: score each model's released
completions on HumanEval(+) and MBPP(+) and compare with EvalPlus 0.3.1's published scores.
Rows go to bench/results/eval_load.json.

  python -m bench.bench_eval_load --load ReflectionCoder-DS-6.7B --task mbpp
  python -m bench.bench_eval_load --reproduce ReflectionCoder-CL-7B ReflectionCoder-DS-33B
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_eval import SHARED
from bench.providers.common import commit, device_name, write_rows

ROOT = Path(__file__).resolve().parents[1]
# EvalPlus 0.3.1's scores of the released completions (HE / HE+ / MBPP / MBPP+), as published.
PUBLISHED = {
    "ReflectionCoder-CL-7B": (75.0, 68.9, 72.2, 61.4),
    "ReflectionCoder-DS-6.7B": (81.1, 76.2, 81.5, 69.8),
    "ReflectionCoder-DS-33B": (82.9, 76.8, 84.9, 72.8),
    "ReflectionCoder-CL-34B": (78.0, 73.8, 80.2, 67.5),
}


def _busy() -> None:  # pragma: no cover - a load generator
    while True:
        pass


def evaluate(model: str, task: str, tmp: Path) -> tuple[dict, dict]:
    """Scores and run figures (wall, CPU of the scorer and its sandboxes, load average)."""
    out = Path(tempfile.mkdtemp(dir=tmp)) / "result.json"
    samples = SHARED / "reference-samples" / model / f"{task}.jsonl"
    cmd = [sys.executable, "-m", "reflectioncoder.cli", "evaluate", "--task", task]
    cmd += ["--samples", str(samples), "--data-dir", str(SHARED / "evaldata")]
    cmd += ["--json", str(out), "--parallel", "2", "--no-progress"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    figures = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load1": os.getloadavg()[0]}
    return json.loads(out.read_text()), figures


def _verdicts(result: dict) -> dict[str, tuple]:
    return {
        tid: tuple((r["base"], r["plus"]) for r in rows) for tid, rows in result["details"].items()
    }


def load_test(model: str, task: str, tmp: Path) -> dict:
    quiet, quiet_fig = evaluate(model, task, tmp)
    busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(2 * os.cpu_count())]
    for p in busy:
        p.start()
    try:
        loaded, loaded_fig = evaluate(model, task, tmp)
    finally:
        for p in busy:
            p.kill()
            p.join()
    a, b = _verdicts(quiet), _verdicts(loaded)
    differ = sorted(t for t in a if a[t] != b.get(t))
    return {
        "model": model,
        "task": task,
        "as_is": {"scores": quiet["scores"], **quiet_fig},
        "busy_loops": {"scores": loaded["scores"], "loopers": len(busy), **loaded_fig},
        "tasks": len(a),
        "verdicts_differ": differ,
        "isolation": quiet["isolation"],
    }


def reproduce(model: str, tmp: Path) -> dict:
    got, figures = [], {}
    for task in ("humaneval", "mbpp"):
        result, figures[task] = evaluate(model, task, tmp)
        got += [round(100 * s["pass@1"], 1) for s in result["scores"].values()]
    return {
        "model": model,
        "ours": got,
        "evalplus_published": list(PUBLISHED[model]),
        "exact": tuple(got) == PUBLISHED[model],
        "runs": figures,
        "isolation": result["isolation"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", metavar="MODEL")
    parser.add_argument("--task", default="mbpp", choices=["humaneval", "mbpp"])
    parser.add_argument("--reproduce", nargs="*", default=[], choices=list(PUBLISHED))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/eval_load.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp_name:
        tmp = Path(tmp_name)
        for model in args.reproduce:
            rows.append({"kind": "reproduce", **reproduce(model, tmp)})
            print(json.dumps(rows[-1]), flush=True)
        if args.load:
            rows.append({"kind": "load", **load_test(args.load, args.task, tmp)})
            print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row.update(device=device_name("cpu"), commit=commit())
    write_rows(rows, args.out, append=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
