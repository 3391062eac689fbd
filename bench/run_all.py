"""Run every benchmark of the project with its default (CPU-sized) arguments: `make bench-reports`.

    python -m bench.run_all [--only NAME ...] [--list]

Discovery: each module bench/bench_*.py that defines ``main(argv: list[str] | None) -> int`` is
a benchmark; it runs as ``python -m bench.<name>`` (a fresh process each, so one's memory peak
or crash does not touch the next) with no arguments, writing its own results under
bench/results/. compile_check runs too when Triton's NVIDIA toolchain is present (it needs no
GPU). Exit status: the number of benchmarks that failed.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def has_main(path: Path) -> bool:
    """True when the module defines a top-level ``main`` function (checked without importing)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)


def discover() -> list[str]:
    """Module names of the benchmarks, sorted."""
    return sorted(p.stem for p in BENCH_DIR.glob("bench_*.py") if has_main(p))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names to run")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--no-compile-check", action="store_true")
    args = parser.parse_args(argv)
    names = discover()
    if args.only:
        unknown = set(args.only) - set(names) - {"compile_check"}
        if unknown:
            parser.error(f"--only: unknown benchmarks {sorted(unknown)}; found {names}")
        names = [n for n in names if n in args.only]
    if not args.no_compile_check and (not args.only or "compile_check" in args.only):
        names.append("compile_check")
    if args.list:
        print("\n".join(names))
        return 0
    failed = []
    for name in names:
        print(f"== bench.{name}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=REPO).returncode
        print(f"== bench.{name}: exit {rc} in {time.perf_counter() - start:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
