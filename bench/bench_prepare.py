"""What `prepare-data` costs: rows per second with and without benchmark decontamination.

    python -m bench.bench_prepare [--rows 20000] [--out bench/results/prepare.json]

Synthetic CodeFeedback rows (a 40-80 word query, a 200-400 word answer with a code block, html
entities, ``\\r\\n`` and tabs), 1% of them with a HumanEval prompt planted in the query. Each
configuration runs in this process on the same file; wall and CPU time are both reported (the
machine is shared). Also: the time to build the benchmark index, and how many planted rows the
10-gram rule found.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from bench import RESULTS
from reflectioncoder.data.decontaminate import BenchmarkIndex, benchmark_texts
from reflectioncoder.data.prepare import prepare
from reflectioncoder.eval.tasks import default_data_dir

WORDS = (
    "the a list of numbers function returns value string each element index loop sort "
    "python code input output write test case array sum maximum minimum given integer "
    "dictionary key count character word reverse check whether if otherwise empty result"
).split()


def synthetic_rows(n: int, prompts: list[str], seed: int = 0) -> tuple[list[dict], set[int]]:
    rng = random.Random(seed)
    rows, planted = [], set()
    for i in range(n):
        query = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 80)))
        if rng.random() < 0.01:
            query = query + "\n" + rng.choice(prompts)
            planted.add(i)
        prose = " ".join(rng.choice(WORDS) for _ in range(rng.randint(200, 400)))
        code = "def f(xs):\r\n\tfor x in xs:\r\n\t\tif x &gt; 0:\r\n\t\t\treturn x\r\n"
        rows.append({"query": query + " &amp; more", "answer": f"  {prose}\n```python\n{code}```"})
    return rows, planted


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=RESULTS / "prepare.json")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    prompts = [t for _, t in benchmark_texts(data_dir)["humaneval"]]
    rows, planted = synthetic_rows(args.rows, prompts)
    index, index_wall, index_cpu = timed(
        lambda: BenchmarkIndex.from_texts(benchmark_texts(data_dir))
    )
    report = {"rows": args.rows, "planted": len(planted), "index_build_s": [index_wall, index_cpu]}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "codefeedback.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for name, idx in (("convert only", None), ("convert + decontaminate", index)):
            result, wall, cpu = timed(
                lambda idx=idx: prepare([src], Path(tmp) / "out.jsonl", index=idx, progress=False)
            )
            report[name] = {
                "wall_s": wall,
                "cpu_s": cpu,
                "rows_per_s_wall": args.rows / wall,
                "rows_per_s_cpu": args.rows / cpu,
                "dropped": result.inputs[0].decontaminated,
            }
    base, dec = report["convert only"], report["convert + decontaminate"]
    report["decontaminate_cost_ratio"] = [
        dec["wall_s"] / base["wall_s"],
        dec["cpu_s"] / base["cpu_s"],
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
