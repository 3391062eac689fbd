"""Trainer overheads, as ratios measured in the same run (tiny model, toy data):

- host preparation of a step (plan, mask at the step, packing) over the whole step's time, and
  the part of it left on the critical path (the step's wait for its batches, which are prepared
  on a background thread while the previous step runs);
- the teacher/student CE split (one extra no-grad pass of the fused loss) over a step without it.

    python -m reflectioncoder.train.bench --out bench/results/training.json

Rows: {"kernel", "provider", "mode", "size", "device", "commit", "value", "unit"}; medians of
interleaved runs, so load on a shared machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from reflectioncoder.config_loader import load_config
from reflectioncoder.train.toydata import write_toy_jsonl
from reflectioncoder.train.trainer import Trainer


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def run(repeats: int, samples_per_step: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        data = write_toy_jsonl(Path(tmp) / "toy.jsonl", 64, seed=0)
        cfg = load_config(
            base="tiny",
            overrides=[
                f"data.files=[{data}]",
                f"checkpoint.out_dir={tmp}/run",
                "checkpoint.save_every=0",
                "checkpoint.save_final=false",
                "train.epochs=50",
                f"train.samples_per_step={samples_per_step}",
                "logging.progress=false",
                "logging.tensorboard=false",
                "logging.plot=false",
            ],
        )
        trainer = Trainer(cfg)
        trainer.train_step()  # warm-up
        prep, plain, split, wait = [], [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            trainer.step_batches(trainer.step)
            prep.append(time.perf_counter() - t0)
            cfg.logging.split_ce = False
            row = trainer.train_step()
            plain.append(row["time"])
            wait.append(row["host_wait"])
            cfg.logging.split_ce = True
            split.append(trainer.train_step()["time"])
        tokens = trainer.train_step()["tokens"]
        trainer.close()
    step = statistics.median(plain)
    host = statistics.median(prep)
    size = f"tiny, {samples_per_step} samples/step, ~{tokens} tokens/step"
    common = {"kernel": "train_step", "provider": "ours", "size": size, "device": "cpu"}
    common["commit"] = _commit()
    values = [
        ("step", step, "s"),
        ("host_prep", host, "s"),
        ("host_prep/step", host / step, "ratio"),
        ("host_wait", statistics.median(wait), "s"),
        ("host_wait/step", statistics.median(wait) / step, "ratio"),
        ("split_ce/plain", statistics.median(split) / step, "ratio"),
        ("threads", torch.get_num_threads(), "count"),
    ]
    return [{**common, "mode": m, "value": v, "unit": u} for m, v, u in values]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/training.json")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--samples-per-step", type=int, default=8)
    args = parser.parse_args()
    rows = run(args.repeats, args.samples_per_step)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    for r in rows:
        print(f"{r['mode']:>16}: {r['value']:.4g} {r['unit']}")


if __name__ == "__main__":
    main()
