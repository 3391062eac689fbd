"""Side-by-side scoring time: EvalPlus 0.3.1 vs ``reflectioncoder evaluate``.

One greedy sample set (the authors' released completions), ``--parallel 2`` on both sides,
expected outputs cached on both sides (a warm-up run fills each cache first), the two tools run
one after the other in the same invocation, each as its own command. EvalPlus runs offline from
the same data files (HUMANEVAL_OVERRIDE_PATH / MBPP_OVERRIDE_PATH). Rows go to
bench/results/eval.json: (kernel, provider, mode, size, device, commit, value) + scores.

  python -m bench.bench_eval --model ReflectionCoder-CL-7B --tasks humaneval mbpp
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.providers.common import commit, device_name, write_rows

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REFLECTIONCODER_SHARED", ROOT.parent / "shared"))
DATA = {
    "humaneval": "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz",
    "mbpp": "mbppplus/MbppPlus-v0.2.0.jsonl.gz",
}


CPU_SECONDS: list[float] = []  # CPU time (user + system) of each timed command's process tree
CPU_COUNTED_BY: list[str] = []  # how each was counted: "cgroup" (everything) or "rusage"
CPUACCT = Path("/sys/fs/cgroup/cpuacct")  # cgroup v1's CPU accounting, where root can nest


def _cpu_cgroup() -> Path | None:
    """A fresh cpuacct cgroup (v1) to run a command in: it counts the whole tree, the boxes
    our scorer kills at their verdict included (their pid namespace dies with them and the
    host's init reaps them, so rusage misses them). None where we cannot make one (then
    rusage counts what the command reaps; on cgroup v2 moving the tool into a leaf would
    change where its sandbox may make the runs' cgroups, so v2 is not used)."""
    path = CPUACCT / f"rc-bench-eval-{os.getpid()}-{time.monotonic_ns()}"
    try:
        path.mkdir()
    except OSError:
        return None
    return path


def _timed(cmd: list[str], env: dict, cwd: str) -> tuple[float, str]:
    group = _cpu_cgroup()

    def enter() -> None:  # in the child, before exec: the whole tree is counted from here
        (group / "cgroup.procs").write_text("0")  # type: ignore[operator]

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            preexec_fn=enter if group else None,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        reaped = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        CPU_SECONDS.append(_cgroup_cpu(group) if group else reaped)
        CPU_COUNTED_BY.append("cgroup" if group else "rusage")
    finally:
        if group:
            _remove(group)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, proc.stdout + proc.stderr


def _cgroup_cpu(group: Path) -> float:
    """CPU seconds the group's processes used, once the last of them is gone."""
    for _ in range(200):
        if not (group / "cgroup.procs").read_text().strip():
            break
        time.sleep(0.01)
    return int((group / "cpuacct.usage").read_text()) / 1e9


def _remove(group: Path) -> None:
    for _ in range(100):
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.05)


def _evalplus(task: str, samples: Path, env: dict, tmp: Path) -> tuple[float, dict]:
    run_dir = Path(tempfile.mkdtemp(dir=tmp))  # fresh: EvalPlus reuses old result files
    copy = run_dir / "samples.jsonl"
    shutil.copy(samples, copy)
    cmd = [
        sys.executable,
        "-m",
        "evalplus.evaluate",
        "--dataset",
        task,
        "--samples",
        str(copy),
        "--parallel",
        "2",
        "--i_just_wanna_run",
    ]
    wall, out = _timed(cmd, env, str(run_dir))
    found = re.findall(r"pass@1:\s*([0-9.]+)", out)
    return wall, {"base": float(found[0]), "plus": float(found[1])} if len(found) >= 2 else {}


def _ours(task: str, samples: Path, env: dict, tmp: Path) -> tuple[float, dict]:
    out_json = Path(tempfile.mkdtemp(dir=tmp)) / "result.json"
    cmd = [
        sys.executable,
        "-m",
        "reflectioncoder.cli",
        "evaluate",
        "--task",
        task,
        "--samples",
        str(samples),
        "--data-dir",
        str(SHARED / "evaldata"),
        "--json",
        str(out_json),
        "--parallel",
        "2",
        "--no-progress",
    ]
    wall, _ = _timed(cmd, env, str(ROOT))
    scores = json.loads(out_json.read_text())["scores"]
    base, plus = list(scores.values())[:2]
    return wall, {"base": base["pass@1"], "plus": plus["pass@1"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ReflectionCoder-CL-7B")
    parser.add_argument("--tasks", nargs="+", default=["humaneval", "mbpp"], choices=list(DATA))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/eval.json")
    parser.add_argument("--no-warmup", action="store_true", help="caches are known to be warm")
    args = parser.parse_args()
    try:
        import evalplus  # noqa: F401
    except ImportError:
        print("pip install evalplus==0.3.1 to run the comparison", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["HUMANEVAL_OVERRIDE_PATH"] = str(SHARED / "evaldata" / DATA["humaneval"])
    env["MBPP_OVERRIDE_PATH"] = str(SHARED / "evaldata" / DATA["mbpp"])
    env["TOKENIZERS_PARALLELISM"] = "false"
    device, rev = device_name("cpu"), commit()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp_name:
        tmp = Path(tmp_name)
        for task in args.tasks:
            samples = SHARED / "reference-samples" / args.model / f"{task}.jsonl"
            if not args.no_warmup:  # fill both expected-output caches (first runs)
                for tool in (_evalplus, _ours):
                    wall, _ = tool(task, samples, env, tmp)
                    print(f"warm-up {tool.__name__[1:]} {task}: {wall:.1f} s", flush=True)
            for _ in range(args.repeats):
                for name, tool in (("evalplus-0.3.1", _evalplus), ("reflectioncoder", _ours)):
                    wall, scores = tool(task, samples, env, tmp)
                    rows.append(
                        {
                            "kernel": "evaluate",
                            "provider": name,
                            "mode": task,
                            "size": f"{args.model}, {sum(1 for _ in open(samples))} samples",
                            "device": device,
                            "commit": rev,
                            "value": round(wall, 2),
                            "unit": "s",
                            "cpu_s": round(CPU_SECONDS[-1], 1),
                            "cpu_counted_by": CPU_COUNTED_BY[-1],
                            "load1": round(os.getloadavg()[0], 1),
                            "scores": scores,
                            "parallel": 2,
                        }
                    )
                    cpu = CPU_SECONDS[-1]
                    print(
                        f"{name:16s} {task:10s} {wall:7.1f} s  CPU {cpu:7.1f} s "
                        f"({CPU_COUNTED_BY[-1]})  {scores}",
                        flush=True,
                    )
    write_rows(rows, args.out, append=True)
    for task in args.tasks:
        ep = [r["value"] for r in rows if r["mode"] == task and r["provider"] != "reflectioncoder"]
        us = [r["value"] for r in rows if r["mode"] == task and r["provider"] == "reflectioncoder"]
        print(f"{task}: EvalPlus {min(ep):.1f} s, ours {min(us):.1f} s, {min(ep) / min(us):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
