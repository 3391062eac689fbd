"""Host memory of building a CodeLlama-34B-shaped model under ZeRO-3 (2 gloo ranks) against an
unpartitioned build of the same slice, through the trainer's own construction path.

    python -m bench.bench_zero3_init --out bench/results/zero3_init.json [--layers 4]

The slice: CodeLlama-34B's hidden 8192, intermediate 22016, 64 heads, 8 KV heads, vocabulary
32000, with ``--layers`` decoder layers (2 by default: 1.9B parameters, 3.8 GB in bf16), saved
in bf16 as a Hugging Face folder in 1 GB shards (real 34B checkpoints come in shards too), with
a tokenizer of 32000 tokens (so the seven special tokens add rows, as for CodeLlama). Each case
is fresh processes that load the model, then read one element per memory page of what the rank
holds (weights mapped from the file but not yet read are not resident), and report the peak
resident memory (VmHWM) and the resident memory just before loading (VmRSS, after imports, the
process group and the tokenizer):

- ``from_pretrained``: one process, ``from_pretrained`` in bf16 (the baseline);
- ``unpartitioned``: one process, ``train.load.build_model`` under DeepSpeed ZeRO-1 (bf16, then
  the special tokens: the tables are resized, so copied);
- ``zero3``: 2 ranks under torchrun, ``train.load.build_model`` under ZeRO-3: the model is built
  partitioned with no values and each rank reads only its piece of each parameter from the
  safetensors files, the special-token rows included.
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
from bench.providers.common import commit, device_name, write_rows

SHAPE = {"hidden_size": 8192, "intermediate_size": 22016, "num_heads": 64, "num_kv_heads": 8}
VOCAB = 32000


def _prepare(folder: Path, layers: int, shape: dict | None = None) -> None:
    """The slice (``shape``: the 34B one by default), random, saved in bf16 with a small
    locally trained tokenizer."""
    import torch

    from reflectioncoder.model import build_tiny_llama
    from reflectioncoder.tokenizer import train_tokenizer

    torch.set_default_dtype(torch.bfloat16)  # never a whole fp32 copy, even here
    model = build_tiny_llama(VOCAB, num_layers=layers, seed=0, **(shape or SHAPE))
    model.config._attn_implementation = "sdpa"
    model.save_pretrained(str(folder), max_shard_size="1GB")
    texts = [f"def f{i}(x):\n    return x + {i}\n" for i in range(300)]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    # As large as the vocabulary (as CodeLlama's): the special tokens then add 7 rows.
    tokenizer.add_tokens([f"<filler_{i}>" for i in range(VOCAB - len(tokenizer))])
    tokenizer.save_pretrained(str(folder))


def _memory_mib(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _child(spec: dict) -> None:
    """Build the model one case's way; print this rank's figures as one JSON line."""
    import torch
    from transformers import AutoTokenizer

    from reflectioncoder.config_loader import load_config
    from reflectioncoder.model import count_parameters, load_model
    from reflectioncoder.train import distributed
    from reflectioncoder.train.deepspeed_config import zero3_transformers_config
    from reflectioncoder.train.load import build_model

    cfg = load_config(
        base="tiny",
        overrides=[
            f"model.name_or_path={spec['model']}",
            "model.dtype=bf16",
            "data.files=[unused.jsonl]",
            "distributed.backend=" + ("none" if spec["stage"] is None else "deepspeed"),
            f"distributed.zero_stage={spec['stage'] or 1}",
        ],
    )
    info = distributed.setup(cfg.distributed, "cpu")
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    before = _memory_mib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    keep = zero3_transformers_config(cfg, info)  # as the Trainer keeps it
    if spec["stage"] is None:  # what one process without the trainer does
        model = load_model(spec["model"], dtype=torch.bfloat16)
    else:
        model = build_model(cfg, tokenizer, torch.bfloat16, info)
    # from_pretrained may leave weights as untouched file mappings (not yet resident): read one
    # element per 4 KiB page of what this rank holds, as the first step would.
    for p in model.parameters():
        held = getattr(p, "ds_tensor", p).detach().reshape(-1)
        held[:: 4096 // held.element_size()].float().sum()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _memory_mib("VmHWM")
    local = sum(getattr(p, "ds_tensor", p).numel() for p in model.parameters())
    line = json.dumps(
        {
            "rank": info.rank,
            "peak": peak,
            "before": before,
            "wall": wall,
            "cpu": cpu,
            "params": count_parameters(model),
            "local_params": local,
            "zero3": keep is not None,
        }
    )
    os.write(1, (line + "\n").encode())  # one write: the ranks' lines never interleave
    distributed.barrier()
    distributed.shutdown()


def _run_case(folder: Path, stage: int | None, ranks: int) -> list[dict]:
    spec = json.dumps({"model": str(folder), "stage": stage})
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if ranks == 1:
        args = [sys.executable, "-m", "bench.bench_zero3_init", "--child", spec]
    else:
        args = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={ranks}",
            "-m",
            "bench.bench_zero3_init",
            "--child",
            spec,
        ]
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError((proc.stdout + proc.stderr)[-4000:])
    return [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]


def rank_rows(
    common: dict, provider: str, got: dict, extra: list[tuple[str, float, str]]
) -> list[dict]:
    """One rank's figures (peak and prior RSS, what construction added, ``extra``, parameters,
    wall and CPU time) as report rows."""
    figures = [
        ("peak_rss", got["peak"], "MiB"),
        ("rss_before", got["before"], "MiB"),
        ("construction_delta", got["peak"] - got["before"], "MiB"),
        *extra,
        ("params", got["params"], "count"),
        ("wall", got["wall"], "s"),
        ("cpu", got["cpu"], "s"),
    ]
    return [
        {**common, "provider": provider, "mode": mode, "value": value, "unit": unit}
        for mode, value, unit in figures
    ]


def run(layers: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "slice"
        # In its own process: a child inherits its parent's peak RSS (Linux keeps it over
        # fork and exec), so this process must never hold the model.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.bench_zero3_init",
                "--prepare",
                str(folder),
                "--layers",
                str(layers),
            ],
            check=True,
            env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"),
        )
        common = {
            "kernel": "zero3_init",
            "device": device_name("cpu"),
            "commit": commit(),
            "size": f"CodeLlama-34B shape, {layers} layers, bf16",
        }
        cases = (("from_pretrained", None, 1), ("unpartitioned", 1, 1), ("zero3", 3, 2))
        for name, stage, ranks in cases:
            for got in _run_case(folder, stage, ranks):
                extra = [("local_params", got["local_params"], "count")]
                rows += rank_rows(common, f"{name}/rank{got['rank']}", got, extra)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=RESULTS / "zero3_init.json")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)  # JSON; bench_fsdp_load's model
    args = parser.parse_args()
    if args.prepare:
        _prepare(Path(args.prepare), args.layers, args.shape and json.loads(args.shape))
        return
    if args.child:
        _child(json.loads(args.child))
        return
    rows = run(args.layers)
    write_rows(rows, args.out)
    for r in rows:
        print(f"{r['provider']:>22} {r['mode']:>20}: {r['value']:.6g} {r['unit']}")


if __name__ == "__main__":
    main()
