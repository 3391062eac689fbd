"""MultiPL-E scoring time per language: seconds per 164 samples, sandboxed, on this machine.

MultiPL-E ships no reference solutions outside Python, so every language scores a *stub*
completion per task that compiles and fails at the first test (``throw``/``panic``/``???``...):
the cost of a sample is then compile + toolchain start + one test, the floor of any sample's
cost. Python scores HumanEval's canonical solutions. Baseline in the same run: the same
programs run by the same commands with no sandbox, one at a time (MultiPL-E's own evaluator
runs them that way, in its container). Rows go to bench/results/multiple.json.

  python -m bench.bench_multiple [--tasks 16] [--languages cs ts java]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reflectioncoder.eval import multiple as ml
from reflectioncoder.eval import tasks as tk
from reflectioncoder.printable import printable

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REFLECTIONCODER_SHARED", ROOT.parent / "shared")) / "evaldata"

# A body that compiles for any return type and fails at the first test.
STUBS = {
    "cpp": "    abort();\n",
    "cs": "        throw new NotImplementedException();\n",
    "d": "{\n    assert(0);\n}\n",
    "go": '    panic("stub")\n}\n',
    "java": "        throw new UnsupportedOperationException();\n",
    "jl": '    error("stub")\nend\n',
    "js": '  throw new Error("stub");\n}\n',
    "lua": '    error("stub")\nend\n',
    "php": '    throw new Exception("stub");\n}\n',
    "pl": '    die "stub";\n}\n',
    "r": '    stop("stub")\n}\n',
    "rb": '  raise "stub"\nend\n',
    "rkt": '  (error "stub"))\n',
    "rs": "    unimplemented!()\n",
    "scala": "        ???\n",
    "sh": "    return 1\n",
    "swift": '    fatalError("stub")\n',
    "ts": '  throw new Error("stub");\n}\n',
}


def samples_for(lang: str, tasks: dict) -> list[dict]:
    if lang == "python":
        rows = tk.read_jsonl(DATA / tk.MULTIPLE_DIR / "humaneval-python.jsonl")
        canonical = {r["task_id"]: r["canonical_solution"] for _, r in rows}
        return [{"task_id": t, "completion": canonical[t]} for t in tasks]
    return [{"task_id": t, "completion": STUBS[lang]} for t in tasks]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bare_run(lang: str, program: str) -> int:
    """The same command with no sandbox and no limits (the baseline); returns its exit code."""
    spec = ml.LANGUAGES[lang]
    with tempfile.TemporaryDirectory() as src, tempfile.TemporaryDirectory() as work:
        for name, content in ml.program_files(lang, program).items():
            data = content.encode() if isinstance(content, str) else content
            Path(src, name).write_bytes(data)
        command = ml.command_line(lang, spec.run_s).replace("{src}", src).replace("{work}", work)
        env = {**os.environ, **ml.toolchain_env(lang)[0], "HOME": work}
        proc = subprocess.run(["/bin/sh", "-c", command], cwd=work, env=env, capture_output=True)
        return proc.returncode


def bench_language(lang: str, n_tasks: int, n_bare: int) -> dict:
    tasks = dict(list(tk.load_multiple(DATA, lang).items())[:n_tasks])
    samples = samples_for(lang, tasks)
    t0 = time.perf_counter()
    results = ml.score_multiple_samples(tasks, samples, parallel=2)
    wall = time.perf_counter() - t0
    statuses = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "timeout")}
    bare_ids = list(tasks)[:n_bare]
    # CPU time is read here: processes in bwrap's PID namespace escape RUSAGE_CHILDREN
    cpu0, t0 = _children_cpu(), time.perf_counter()
    for tid, s in zip(bare_ids, samples, strict=False):
        bare_run(lang, ml.program_text(tasks[tid], s["completion"], "nonce"))
    bare = (time.perf_counter() - t0) / max(1, len(bare_ids))
    bare_cpu = (_children_cpu() - cpu0) / max(1, len(bare_ids))
    per_sample = wall / len(samples)
    return {
        "language": lang,
        "samples": len(samples),
        "wall_s": round(wall, 2),
        "s_per_164": round(per_sample * 164, 1),
        "bare_s_per_sample_1_worker": round(bare, 3),
        "bare_cpu_s_per_sample": round(bare_cpu, 3),
        "speedup_vs_bare": round(bare / per_sample, 2),
        "verdicts": statuses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=16, help="tasks per language (first N)")
    parser.add_argument("--bare", type=int, default=4, help="of those, run without sandbox")
    parser.add_argument("--languages", nargs="+", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "multiple.json")
    args = parser.parse_args(argv)
    on_disk = tk.multiple_languages(DATA)
    chosen = args.languages or [lang for lang in ml.LANGUAGES if lang in on_disk]
    rows = []
    for lang in chosen:
        problem = ml.toolchain_problem(lang)
        if problem:
            rows.append({"language": lang, "unavailable": problem})
            print(printable(problem), flush=True)  # a program's words: no terminal codes
            continue
        row = bench_language(lang, args.tasks, args.bare)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.languages and args.out.is_file():  # a partial rerun replaces only its rows
        kept = json.loads(args.out.read_text())["rows"]
        rows = [r for r in kept if r["language"] not in chosen] + rows
        rows.sort(key=lambda r: list(ml.LANGUAGES).index(r["language"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"CPU, {os.cpu_count()} cores", "parallel": 2, "tasks": args.tasks}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"results: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
