"""The demo's training (`python -m reflectioncoder.demo`'s data, tokenizer and tiny preset, 200
steps) in fp32, and in bf16 three ways: the default (bf16 weights, fp32 masters, fp32 gradient
sums and AdamW states in the one-process engine), autocast (fp32 weights), and plain PyTorch bf16
(bf16 weights and AdamW states, no masters: the engine's masters patched out, for comparison).

    python -m bench.bench_precision --out bench/results/precision.json

The bf16 rule (STYLE.md) for the curve: the default's deviation from the fp32 losses, summed over
the steps, at most twice plain PyTorch bf16's. All runs in this process, one after the other,
on the same data, seed and plan; the rows hold every step's loss.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench import RESULTS
from bench.providers.common import write_rows

CASES = {
    "fp32": ["model.dtype=fp32"],
    "bf16 masters (default)": ["model.dtype=bf16"],
    "bf16 autocast": ["model.dtype=bf16", "model.mixed_precision=autocast"],
    "bf16 plain PyTorch": ["model.dtype=bf16"],
}


def demo_data(folder: Path, n: int, seed: int, workers: int) -> tuple[Path, Path]:
    """The demo's reflection data (built by real execution) and its tokenizer."""
    from reflectioncoder.construct.build import build_dataset, write_jsonl
    from reflectioncoder.tokenizer import train_tokenizer

    samples, _ = build_dataset(n, seed, workers=workers)
    data = write_jsonl(samples, folder / "reflection.jsonl")
    texts = [b["content"] for s in samples for m in s["messages"] for b in m["content"]]
    train_tokenizer(texts, 1024, folder / "tokenizer")
    return data, folder / "tokenizer"


def train(name: str, data: Path, tokenizer: Path, folder: Path, steps: int, seed: int) -> dict:
    from reflectioncoder.config_loader import load_config
    from reflectioncoder.train import local_engine
    from reflectioncoder.train.trainer import Trainer

    overrides = [
        f"data.files=[{data}]",
        f"model.tokenizer={tokenizer}",
        f"checkpoint.out_dir={folder / name.split()[0] / name.split()[-1]}",
        "checkpoint.save_every=0",
        "checkpoint.save_final=false",
        "train.samples_per_step=4",
        f"train.seed={seed}",
        f"train.max_steps={steps}",
        "train.threads=1",
        "logging.progress=false",
        "logging.tensorboard=false",
        "logging.plot=false",
        *CASES[name],
    ]
    real = local_engine._fp32_master
    if name == "bf16 plain PyTorch":
        local_engine._fp32_master = lambda weight: weight
    try:
        t0 = time.perf_counter()
        trainer = Trainer(load_config(base="tiny", overrides=overrides))
        losses = [trainer.train_step()["loss"] for _ in range(trainer.total_steps)]
        trainer.close()
    finally:
        local_engine._fp32_master = real
    return {"case": name, "losses": losses, "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=240, help="the demo's n")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "precision.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, tokenizer = demo_data(folder, args.samples, args.seed, args.workers)
        rows = [train(c, data, tokenizer, folder, args.steps, args.seed) for c in CASES]
    fp32 = rows[0]["losses"]
    for row in rows:
        row["deviation_from_fp32"] = sum(
            abs(a - b) for a, b in zip(row["losses"], fp32, strict=True)
        )
    plain = rows[-1]["deviation_from_fp32"]
    print(f"{args.steps} demo steps; loss deviation from fp32, summed over the steps:")
    for row in rows:
        ratio = row["deviation_from_fp32"] / plain if plain else float("nan")
        row["vs_plain_bf16"] = ratio
        print(
            f"  {row['case']:24s} first {row['losses'][0]:.4f} last {row['losses'][-1]:.4f} "
            f"deviation {row['deviation_from_fp32']:.4f} ({ratio:.3g}x plain bf16's) "
            f"{row['seconds']:.0f} s"
        )
    holds = rows[1]["deviation_from_fp32"] <= 2 * plain
    print(f"bf16 rule (default <= 2x plain PyTorch bf16): {'holds' if holds else 'FAILS'}")
    write_rows(rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
