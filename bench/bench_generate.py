"""Generation speed of `evaluate --model` on a CPU: batch size x torch threads, same prompts.

The first MBPP prompts in the `chat` format (a real instruct model: the installed SmolLM2 by
default), greedy, at most --tokens new tokens, generated through evaluate's own client
(`reflectioncoder.generate.LocalModel`, with the stops `evaluate --prompt-format chat` uses: the
end token and the closing code fence), so the figures are the command's. Greedy decoding gives
every configuration the same texts. Per configuration: the tokens generated, wall seconds, CPU
seconds of this process, tokens per wall second and per CPU second (the latter steadier on a
shared machine), and the ratio to the first row.

  python -m bench.bench_generate --prompts 6 --tokens 48 --configs 1x1 6x1 6x2
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bench.providers.common import write_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--configs", nargs="+", default=["1x1", "6x1", "6x2"], help="BATCHxTHREADS")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    from reflectioncoder.eval import prompts as pr
    from reflectioncoder.eval import tasks as tk
    from reflectioncoder.generate import GenerationConfig, LocalModel
    from reflectioncoder.install_model import default_folder

    model = LocalModel(str(args.model or default_folder("smollm2-135m-instruct")), device="cpu")
    tasks = list(tk.load_mbpp_plus(tk.default_data_dir()).values())[: args.prompts]
    prompts = [pr.chat_prompt(t, model.tokenizer) for t in tasks]
    rows = []
    for config in args.configs:
        batch, threads = (int(x) for x in config.split("x"))
        torch.set_num_threads(threads)
        decoding = GenerationConfig(
            max_new_tokens=args.tokens, batch_size=batch, stop_strings=(pr.FENCE,)
        )
        stats: dict = {}
        model.complete(prompts, decoding, stats=stats)
        wall, cpu, n = stats["seconds"], stats["cpu_seconds"], stats["new_tokens"]
        rows.append(
            {
                "batch": batch,
                "threads": threads,
                "tokens": n,
                "wall_s": wall,
                "cpu_s": cpu,
                "tokens_per_s": round(n / wall, 2) if wall else None,
                "tokens_per_cpu_s": round(n / cpu, 2) if cpu else None,
                "load": os.getloadavg()[0],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    print("\nbatch x threads   tok/s   tok/CPU-s   wall ratio to the first row   load (1 min)")
    for r in rows:
        ratio = r["wall_s"] / base["wall_s"]
        print(
            f"{r['batch']:>5} x {r['threads']:<7} {r['tokens_per_s']:>7.2f}  "
            f"{r['tokens_per_cpu_s']:>9.2f}   {ratio:>6.3f}x   {r['load']:.2f}"
        )
    if args.json:
        write_rows(rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
