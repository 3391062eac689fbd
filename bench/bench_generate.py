"""Generation speed of `evaluate --model` on a CPU: batch size x torch threads, same prompts.

The first MBPP prompts in the `chat` format (a real instruct model: the installed SmolLM2 by
default), greedy, a fixed number of new tokens (no stop: every configuration generates the same
count). Per configuration: wall seconds, CPU seconds of this process, tokens per wall second and
per CPU second (the latter steadier on a shared machine), and the ratio to the first row.

  python -m bench.bench_generate --prompts 6 --tokens 48 --configs 1x1 6x1 6x2
"""

from __future__ import annotations

import argparse
import json
import os
import time
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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reflectioncoder.eval import prompts as pr
    from reflectioncoder.eval import tasks as tk
    from reflectioncoder.install_model import default_folder

    model_dir = args.model or default_folder("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tasks = list(tk.load_mbpp_plus(tk.default_data_dir()).values())[: args.prompts]
    prompts = [pr.chat_prompt(t, tok) for t in tasks]
    rows = []
    for config in args.configs:
        batch, threads = (int(x) for x in config.split("x"))
        torch.set_num_threads(threads)
        t0, cpu0 = time.perf_counter(), time.process_time()
        for start in range(0, len(prompts), batch):
            enc = tok(prompts[start : start + batch], return_tensors="pt", padding=True)
            with torch.no_grad():
                model.generate(
                    **enc,
                    max_new_tokens=args.tokens,
                    min_new_tokens=args.tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        n = args.tokens * len(prompts)
        rows.append(
            {
                "batch": batch,
                "threads": threads,
                "tokens": n,
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "tokens_per_s": round(n / wall, 2),
                "tokens_per_cpu_s": round(n / cpu, 2),
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
