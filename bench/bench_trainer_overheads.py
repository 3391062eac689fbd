"""Trainer overheads, as ratios measured in the same run (tiny preset, toy data):

- host preparation of a step (plan, mask at the step, packing) over the whole step's time, and
  the part of it left on the critical path (the step's wait for its batches, which are prepared
  on a background thread while the previous step runs);
- the teacher/student CE split (``logging.split_ce``: one extra no-grad pass of the fused loss)
  over a step without it: two trainers configured alike but for that field, stepped in turn.

    python -m bench.bench_trainer_overheads --out bench/results/training.json

Rows: {"kernel", "provider", "mode", "size", "device", "commit", "value", "unit"}; medians of
interleaved runs, so load on a shared machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench import RESULTS
from bench.providers.common import commit, write_rows
from reflectioncoder.config_loader import load_config
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.trainer import Trainer


def toy_trainer(data: Path, out_dir: Path, samples_per_step: int, split_ce: bool) -> Trainer:
    """A tiny-preset trainer on ``data`` that saves nothing, shows nothing and runs long enough."""
    return Trainer(
        load_config(
            base="tiny",
            overrides=[
                f"data.files=[{data}]",
                f"checkpoint.out_dir={out_dir}",
                "checkpoint.save_every=0",
                "checkpoint.save_final=false",
                "train.epochs=50",
                f"train.samples_per_step={samples_per_step}",
                f"logging.split_ce={str(split_ce).lower()}",
                "logging.progress=false",
                "logging.tensorboard=false",
                "logging.plot=false",
            ],
        )
    )


def run(repeats: int, samples_per_step: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        data = write_toy_jsonl(Path(tmp) / "toy.jsonl", 64, seed=0)
        plain = toy_trainer(data, Path(tmp) / "plain", samples_per_step, split_ce=False)
        split = toy_trainer(data, Path(tmp) / "split", samples_per_step, split_ce=True)
        for trainer in (plain, split):
            trainer.train_step()  # warm-up
        prep, plain_s, split_s, wait = [], [], [], []
        for k in range(repeats):
            t0 = time.perf_counter()
            plain.step_batches(plain.step)
            prep.append(time.perf_counter() - t0)
            if k % 2:  # each goes first every other repeat: neither gets the warmer caches
                split_s.append(split.train_step()["time"])
            row = plain.train_step()
            plain_s.append(row["time"])
            wait.append(row["host_wait"])
            if not k % 2:
                split_s.append(split.train_step()["time"])
        tokens = row["tokens"]
        for trainer in (plain, split):
            trainer.close()
    step = statistics.median(plain_s)
    host = statistics.median(prep)
    size = f"tiny, {samples_per_step} samples/step, ~{tokens} tokens/step"
    common = {"kernel": "train_step", "provider": "ours", "size": size, "device": "cpu"}
    common["commit"] = commit()
    values = [
        ("step", step, "s"),
        ("host_prep", host, "s"),
        ("host_prep/step", host / step, "ratio"),
        ("host_wait", statistics.median(wait), "s"),
        ("host_wait/step", statistics.median(wait) / step, "ratio"),
        ("split_ce/plain", statistics.median(split_s) / step, "ratio"),
        ("threads", torch.get_num_threads(), "count"),
    ]
    return [{**common, "mode": m, "value": v, "unit": u} for m, v, u in values]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=RESULTS / "training.json")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--samples-per-step", type=int, default=8)
    args = parser.parse_args()
    rows = run(args.repeats, args.samples_per_step)
    write_rows(rows, args.out)
    for r in rows:
        print(f"{r['mode']:>16}: {r['value']:.4g} {r['unit']}")


if __name__ == "__main__":
    main()
