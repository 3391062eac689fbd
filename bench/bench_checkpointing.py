"""Peak memory of ``reflectioncoder train`` with and without gradient checkpointing, on a model
loaded from disk whose activations dominate (narrow, deep, long packed micro-batches).

    python -m bench.bench_checkpointing --out bench/results/checkpointing.json
    python -m bench.bench_checkpointing --device cuda --out bench/results/checkpointing_cuda.json

On CUDA the figures are the CUDA allocator's (``max_memory_allocated``) on a wider model, and
the rows add the un-overlapped host wait per step (pinned, non-blocking copies).

Each case is a fresh ``reflectioncoder train`` process (the command users run) for a few steps;
the figure is its peak resident memory (ru_maxrss), and the same minus the resident memory just
before the first step (the step's own peak: activations, gradients, optimizer state). Both cases
run one after the other in the same invocation, so the ratio compares like with like.
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

from bench import RESULTS
from bench.providers.common import commit, device_name, write_rows
from reflectioncoder.train.metrics import step_rows

ARCH = {
    "cpu": {"hidden_size": 128, "intermediate_size": 256, "num_layers": 12, "num_heads": 4},
    "cuda": {"hidden_size": 1024, "intermediate_size": 2048, "num_layers": 24, "num_heads": 8},
}


def prepare_model_and_data(
    folder: Path, samples: int, arch: dict, num_kv_heads: int = 2, vocab: int | None = None
) -> Path:
    """A saved model + tokenizer in ``folder/model`` and a toy jsonl (what a user points the
    trainer at); returns the jsonl. ``vocab``: the model's rows (default: the tokenizer's; more
    are kept, as a checkpoint's padded vocabulary is). Also bench_engines' and the train-step
    bench's."""
    from reflectioncoder.model import build_tiny_llama
    from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
    from reflectioncoder.tokenizer import train_tokenizer

    data = write_toy_jsonl(folder / "toy.jsonl", samples, seed=0, generation_fraction=0.0)
    tok = train_tokenizer(data.read_text().splitlines(), vocab_size=400)
    model = build_tiny_llama(vocab or len(tok), num_kv_heads=num_kv_heads, seed=0, **arch)
    model.config._attn_implementation = "sdpa"
    model.save_pretrained(str(folder / "model"))
    tok.save_pretrained(str(folder / "model"))
    return data


def _child(argv: list[str]) -> None:
    """Run ``reflectioncoder train`` in this process; print its peak RSS figures as JSON."""
    from reflectioncoder.train import trainer as trainer_module

    marks: dict[str, float] = {}
    real_step = trainer_module.Trainer.train_step

    def step(self):  # memory just before the first step: model, data and optimizer set up
        marks.setdefault("before_step", _memory_now())
        return real_step(self)

    trainer_module.Trainer.train_step = step
    from reflectioncoder.cli import main

    t0, c0 = time.perf_counter(), time.process_time()
    rc = main(["train", *argv])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _peak_memory()
    print(
        json.dumps(
            {"rc": rc, "peak": peak, "before": marks["before_step"], "wall": wall, "cpu": cpu}
        )
    )


def _on_cuda() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _memory_now() -> float:
    """MiB: the CUDA allocator's when the run is on CUDA, else the resident set."""
    if _on_cuda():
        import torch

        return torch.cuda.memory_allocated() / 2**20
    return _rss_now()


def _peak_memory() -> float:
    if _on_cuda():
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB


def _rss_now() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(samples_per_step: int, steps: int, device: str) -> list[dict]:
    rows, arch = [], ARCH[device]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = prepare_model_and_data(folder, samples_per_step * steps, arch)
        for ckpt in (False, True):
            out = folder / f"run-{ckpt}"
            argv = ["--preset", "tiny"]
            for o in (
                f"model.name_or_path={folder / 'model'}",
                f"model.gradient_checkpointing={str(ckpt).lower()}",
                f"data.files=[{data}]",
                f"checkpoint.out_dir={out}",
                "checkpoint.save_every=0",
                "checkpoint.save_final=false",
                f"train.samples_per_step={samples_per_step}",
                "train.epochs=1",
                f"train.device={device}",
                "packing.max_tokens=65536",  # one long micro-batch per step
                "logging.progress=false",
                "logging.tensorboard=false",
                "logging.plot=false",
            ):
                argv += ["--set", o]
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            proc = subprocess.run(
                [sys.executable, "-m", "bench.bench_checkpointing", "--child", json.dumps(argv)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            metrics = step_rows(out / "metrics.jsonl")
            tokens = metrics[0]["tokens"]
            common = {
                "kernel": "train_step",
                "provider": "checkpointing" if ckpt else "no_checkpointing",
                "size": f"{arch['num_layers']} layers x {arch['hidden_size']}, "
                f"{tokens} tokens/micro-batch, {steps} steps",
                "device": device_name(device),
                "commit": commit(),
            }
            # un-overlapped host wait over step time, steps after the first (it waits for one)
            waits = [m["host_wait"] / m["time"] for m in metrics[1:]]
            for mode, value, unit in (
                ("peak_cuda" if device == "cuda" else "peak_rss", got["peak"], "MiB"),
                ("step_peak_over_setup", got["peak"] - got["before"], "MiB"),
                ("wall", got["wall"], "s"),
                ("cpu", got["cpu"], "s"),
                ("first_loss", metrics[0]["loss"], "nats"),
                ("host_wait/step", max(waits, default=float("nan")), "ratio (max)"),
            ):
                rows.append({**common, "mode": mode, "value": value, "unit": unit})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=RESULTS / "checkpointing.json")
    parser.add_argument("--samples-per-step", type=int, default=48)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    rows = run(args.samples_per_step, args.steps, args.device)
    write_rows(rows, args.out)
    for r in rows:
        print(f"{r['provider']:>17} {r['mode']:>21}: {r['value']:.4g} {r['unit']}")


if __name__ == "__main__":
    main()
