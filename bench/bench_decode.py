"""Cost of decoding honest result lines: the bounded decoder the scorer uses for what a sample
sends (``result_decode.read_result_row``: line cap, int-digit cap, collision check, schema)
against the unbounded parse it replaced (``codec.loads_row``, still used for trusted cache
lines).

Rows are what a correct sample sends: every expected output of HumanEval+ as a
``{"phase", "i", "out"}`` line in the harness's encoding (expected outputs computed, or read
from the cache, first). Best of ``--repeats`` alternating passes, CPU time beside wall time.

  python bench/bench_decode.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from reflectioncoder.eval import tasks as tk
from reflectioncoder.eval.expected import expected_outputs
from reflectioncoder.eval.sandbox import codec, result_decode

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REFLECTIONCODER_SHARED", ROOT.parent / "shared"))


def result_lines(data_dir: Path) -> list[bytes]:
    source = tk.dataset_file(data_dir, tk.HUMANEVAL_PLUS_FILE)
    tasks = tk.load_humaneval_plus(data_dir)
    expected = expected_outputs(tasks, tk.file_hash(source))
    rows = []
    for exp in expected.values():
        for phase in ("base", "plus"):
            for i, out in enumerate(exp[phase]["out"]):
                row = {"phase": phase, "i": i, "out": codec.encode_output(out)}
                rows.append(json.dumps(row, separators=(",", ":")).encode())
    return rows


def timed(decode, rows: list[bytes]) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for row in rows:
        decode(row)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED / "evaldata")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = result_lines(args.data_dir)
    mib = sum(map(len, rows)) / 2**20
    print(f"{len(rows)} result lines, {mib:.1f} MiB")
    runs: dict[str, list[tuple[float, float]]] = {"unbounded": [], "bounded": []}
    for _ in range(args.repeats):
        runs["unbounded"].append(timed(codec.loads_row, rows))
        runs["bounded"].append(timed(result_decode.read_result_row, rows))
    best = {name: min(r, key=lambda x: x[1]) for name, r in runs.items()}
    for name, (wall, cpu) in best.items():
        print(f"{name:10s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  {mib / cpu:5.0f} MiB/s (cpu)")
    print(f"bounded / unbounded CPU: {best['bounded'][1] / best['unbounded'][1]:.2f}x")


if __name__ == "__main__":
    main()
