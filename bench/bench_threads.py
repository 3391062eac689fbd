"""CPU threads of a training step (issue 11): train.threads = 1, 2, and torch's own default,
on an idle machine and beside one busy process, as a person running the CPU demo would see it.

    python -m bench.bench_threads --out bench/results/threads.json

Each setting runs in its own process (torch's thread pool is fixed once used) on the tiny preset
and toy data; rows hold the median wall and CPU time of a step, and each setting's ratio to one
thread measured in the same run (the same machine state, settings interleaved by repeat).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench import RESULTS
from bench.providers.common import write_rows

STEP_SCRIPT = r"""
import json, sys, tempfile, time, torch
from pathlib import Path
from reflectioncoder.config_loader import load_config
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.trainer import Trainer
threads, steps = sys.argv[1], int(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    data = write_toy_jsonl(Path(tmp) / "toy.jsonl", 64, seed=0)
    overrides = [f"data.files=[{data}]", f"checkpoint.out_dir={tmp}/run",
                 "checkpoint.save_every=0", "checkpoint.save_final=false", "train.epochs=50",
                 "train.samples_per_step=8", "logging.progress=false",
                 "logging.tensorboard=false", "logging.plot=false"]
    if threads != "torch":
        overrides.append(f"train.threads={threads}")
    default = torch.get_num_threads()
    trainer = Trainer(load_config(base="tiny", overrides=overrides))
    if threads == "torch":
        torch.set_num_threads(default)  # what a trainer without the setting runs with
    trainer.train_step()  # warm-up
    walls, cpus = [], []
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        trainer.train_step()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    trainer.close()
print(json.dumps({"threads": torch.get_num_threads(), "walls": walls, "cpus": cpus}))
"""


def _busy() -> subprocess.Popen:
    """One other busy process, as on a shared machine."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(setting: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", STEP_SCRIPT, setting, str(steps)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=RESULTS / "threads.json")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    settings = ["1", "2", "torch", "default"]
    rows = []
    for load in ("idle", "one busy process"):
        busy = _busy() if load != "idle" else None
        time.sleep(1.0 if busy else 0.0)
        try:
            runs: dict[str, list[dict]] = {s: [] for s in settings}
            for _ in range(args.repeats):
                for s in settings:
                    runs[s].append(measure("null" if s == "default" else s, args.steps))
                    walls = runs[s][-1]["walls"]
                    print(f"  {load}, threads={s}: {statistics.median(walls):.3f} s", flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        wall = {s: statistics.median(w for r in runs[s] for w in r["walls"]) for s in settings}
        cpu = {s: statistics.median(c for r in runs[s] for c in r["cpus"]) for s in settings}
        for s in settings:
            rows.append(
                {
                    "kernel": "train_step",
                    "mode": f"threads={s}",
                    "load": load,
                    "threads": runs[s][0]["threads"],
                    "wall_s": round(wall[s], 4),
                    "cpu_s": round(cpu[s], 4),
                    "wall_vs_1_thread": round(wall[s] / wall["1"], 2),
                    "cores": len(os.sched_getaffinity(0)),
                }
            )
            r = rows[-1]
            print(
                f"{load:>17}  {r['mode']:>16} ({r['threads']} threads): step {r['wall_s']:.3f} s "
                f"wall, {r['cpu_s']:.3f} s CPU, {r['wall_vs_1_thread']:.2f}x one thread"
            )
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
