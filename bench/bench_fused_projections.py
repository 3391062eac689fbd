"""Fused q/k/v and gate/up projections (``model.fused_projections``) against the separate GEMMs,
on the CPU: forward + backward of a Llama body over one packed micro-batch, each shape and dtype
in one run, fused and unfused interleaved, median CPU time (and wall time) of the repeats:

    python -m bench.bench_fused_projections --out bench/results/fused_projections.json

The ratio is fused / unfused (below 1: the fusion is faster). CPU time is the figure to read
on a shared machine (wall time waits for other programs)."""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from bench import RESULTS

SHAPES = [  # (hidden, intermediate, heads, kv heads, layers, tokens)
    (256, 688, 8, 2, 2, 2048),
    (512, 1376, 8, 2, 2, 2048),
    (1024, 2752, 16, 4, 1, 4096),
]


def _batch(tokens: int, segments: int, vocab: int, seed: int) -> SimpleNamespace:
    gen = torch.Generator().manual_seed(seed)
    lengths = [tokens // segments] * segments
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return SimpleNamespace(
        input_ids=torch.randint(0, vocab, (tokens,), generator=gen),
        position_ids=torch.cat([torch.arange(n) for n in lengths]),
        cu_seqlens=cu,
        max_seqlen=max(lengths),
        seq_lens=lengths,
    )


def _step(model: torch.nn.Module, batch: SimpleNamespace) -> None:
    from reflectioncoder.model import forward_hidden

    forward_hidden(model, batch).float().square().mean().backward()
    model.zero_grad(set_to_none=True)


def measure(shape: tuple[int, ...], dtype: torch.dtype, repeats: int, seed: int) -> dict:
    from reflectioncoder.model import build_tiny_llama, prepare_model

    hidden, inter, heads, kv, layers, tokens = shape
    plain = build_tiny_llama(512, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
                             num_heads=heads, num_kv_heads=kv, seed=seed).to(dtype)  # fmt: skip
    prepare_model(plain, liger=False)
    fused = copy.deepcopy(plain)
    prepare_model(fused, liger=False, fused_projections=True)
    batch = _batch(tokens, 4, 512, seed)
    runs = {"unfused": plain, "fused": fused}
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in runs}
    for model in runs.values():  # warm-up
        _step(model, batch)
    for _ in range(repeats):
        for name, model in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            _step(model, batch)
            times[name][0].append(time.perf_counter() - wall)
            times[name][1].append(time.process_time() - cpu)
    median = {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in times.items()}
    return {
        "hidden": hidden,
        "intermediate": inter,
        "heads": heads,
        "kv_heads": kv,
        "layers": layers,
        "tokens": tokens,
        "dtype": str(dtype).removeprefix("torch."),
        "repeats": repeats,
        "unfused_cpu_s": median["unfused"][1],
        "fused_cpu_s": median["fused"][1],
        "cpu_ratio": median["fused"][1] / median["unfused"][1],
        "unfused_wall_s": median["unfused"][0],
        "fused_wall_s": median["fused"][0],
        "wall_ratio": median["fused"][0] / median["unfused"][0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the smallest shape only")
    parser.add_argument("--out", type=Path, default=RESULTS / "fused_projections.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for shape in SHAPES[:1] if args.quick else SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            row = measure(shape, dtype, args.repeats, args.seed)
            rows.append(row)
            print(
                f"D={row['hidden']} I={row['intermediate']} T={row['tokens']} {row['dtype']}: "
                f"CPU {row['unfused_cpu_s'] * 1e3:.1f} -> {row['fused_cpu_s'] * 1e3:.1f} ms "
                f"({row['cpu_ratio']:.3f}x), wall {row['wall_ratio']:.3f}x",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
