"""Host memory of starting an FSDP2 run (2 gloo ranks) from a safetensors checkpoint: each rank
reading only its shards (the model built on the meta device, ``train/fsdp_load.py``) against
each rank loading the whole model before sharding it (the path every checkpoint took before,
and ``.bin`` checkpoints still take), through the trainer's own construction.

    python -m bench.bench_fsdp_load --out bench/results/fsdp_load.json [--layers 4]

The model: a Llama of hidden 2048, intermediate 5504, 16 heads, 4 KV heads, vocabulary 32000 and
``--layers`` decoder layers (4 by default: 308M parameters, 616 MB in bf16), saved in bf16 in
several safetensors files, with a tokenizer of 32000 tokens (the seven special tokens add rows).
Each case is 2 fresh ranks under torchrun that construct ``Trainer`` (``distributed.backend:
fsdp``, bf16, fp32 masters) on a few toy samples and report the peak resident memory (VmHWM)
and the resident memory before it (VmRSS, after the imports). The whole-model case is the same
checkpoint with ``has_safetensors`` answering no (what a ``.bin`` checkpoint takes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import RESULTS
from bench.bench_zero3_init import _memory_mib, rank_rows
from bench.providers.common import commit, device_name, write_rows

SHAPE = {"hidden_size": 2048, "intermediate_size": 5504, "num_heads": 16, "num_kv_heads": 4}


def _child(spec: dict) -> None:
    """One rank: construct the trainer one case's way; print this rank's figures."""
    import logging

    import torch

    from reflectioncoder import zero3_load
    from reflectioncoder.config_loader import load_config
    from reflectioncoder.train.trainer import Trainer

    logging.basicConfig(level=logging.INFO)  # the log line that names the path taken
    if spec["case"] == "whole":
        zero3_load.has_safetensors = lambda folder: False  # build_model's old path
    cfg = load_config(base="tiny", overrides=spec["overrides"])
    before = _memory_mib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    trainer = Trainer(cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _memory_mib("VmHWM")
    held = sum(p.to_local().nbytes for p in trainer.engine.params)
    line = {
        "rank": trainer.info.rank,
        "peak": peak,
        "before": before,
        "wall": wall,
        "cpu": cpu,
        "params": trainer.n_params,
        "shard_mib": held / 2**20,
    }
    os.write(1, (json.dumps(line) + "\n").encode())  # one write: lines never interleave
    torch.distributed.barrier()
    trainer.close()


def _run_case(case: str, overrides: list[str]) -> list[dict]:
    spec = json.dumps({"case": case, "overrides": overrides})
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    args += ["-m", "bench.bench_fsdp_load", "--child", spec]
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError((proc.stdout + proc.stderr)[-4000:])
    path = "reads only its shards" if case == "shards" else "loads the whole model"
    if path not in proc.stderr:  # the case took the path it names
        raise RuntimeError(f"{case}: the log lacks {path!r}:\n{proc.stderr[-4000:]}")
    return [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]


def run(layers: int) -> list[dict]:
    from reflectioncoder.testing.toy_jsonl import write_toy_jsonl

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        # In its own process: a child inherits its parent's peak RSS (Linux keeps it over
        # fork and exec), so this process must never hold the model.
        shape = json.dumps(SHAPE)
        subprocess.run(
            [sys.executable, "-m", "bench.bench_zero3_init", "--prepare", str(folder),
             "--layers", str(layers), "--shape", shape],
            check=True, env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"),
        )  # fmt: skip
        data = write_toy_jsonl(Path(tmp) / "toy.jsonl", 6, seed=0, generation_fraction=0.2)
        common = {
            "kernel": "fsdp_load",
            "device": device_name("cpu"),
            "commit": commit(),
            "size": f"Llama hidden 2048, {layers} layers, vocab 32000, bf16, 2 ranks",
        }
        for case in ("whole", "shards"):
            overrides = [
                f"model.name_or_path={folder}",
                "model.dtype=bf16",
                "distributed.backend=fsdp",
                f"data.files=[{data}]",
                f"checkpoint.out_dir={Path(tmp) / case}",
                "logging.progress=false",
                "logging.tensorboard=false",
                "logging.plot=false",
            ]
            rows += [
                row
                for got in _run_case(case, overrides)
                for row in rank_rows(
                    common,
                    f"{case}/rank{got['rank']}",
                    got,
                    [("fp32_shards", got["shard_mib"], "MiB")],
                )
            ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one rank of a case
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--out", default=RESULTS / "fsdp_load.json")
    args = parser.parse_args()
    if args.child:
        return _child(json.loads(args.child))
    rows = run(args.layers)
    write_rows(rows, args.out)
    by_provider: dict[str, list[str]] = {}
    for r in rows:
        by_provider.setdefault(r["provider"], []).append(
            f"{r['mode']} {r['value']:.6g} {r['unit']}"
        )
    for provider, figures in by_provider.items():
        print(f"{provider}: " + ", ".join(figures))


if __name__ == "__main__":
    main()
