"""Build reflection sequences by real execution: problems, buggy attempts, feedback, fixes.

Writes ReflectionSeq jsonl (SPEC §1). Every attempt runs with its tests in the sandbox; the
execution blocks hold what the interpreter printed.
"""

from __future__ import annotations

import argparse
import os
import sys

from reflectioncoder.construct.backend import MutationBackend, OpenAIBackend
from reflectioncoder.construct.build import build_dataset, write_jsonl


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``reflectioncoder build-data`` flags."""
    parser.add_argument("--out", required=True, help="output jsonl file")
    parser.add_argument("--n", type=int, required=True, help="number of samples to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of problems, bugs and order")
    parser.add_argument(
        "--workers",
        type=int,
        default=8,
        help="sandboxed runs in parallel (default 8: a run mostly waits on process start-up)",
    )
    parser.add_argument(
        "--generation-fraction",
        type=float,
        default=0.25,
        help="share of plain `type: generation` samples (default 0.25)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per program run")
    parser.add_argument(
        "--two-bug-rate",
        type=float,
        default=0.25,
        help="mutation backend: share of first attempts with two bugs (default 0.25)",
    )
    parser.add_argument(
        "--backend", choices=("mutation", "openai"), default="mutation", help="who writes code"
    )
    parser.add_argument("--base-url", help="openai backend: e.g. http://localhost:8000/v1")
    parser.add_argument("--model", help="openai backend: the model name to request")


def main(args: argparse.Namespace) -> int:
    """Build the dataset and write it; prints a one-line summary."""
    if args.n < 0:
        print(f"error: --n: expected a non-negative number, got {args.n}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"error: --workers: expected at least 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.backend == "openai":
        if not args.base_url or not args.model:
            print("error: --backend openai needs --base-url and --model", file=sys.stderr)
            return 2
        backend = OpenAIBackend(args.base_url, args.model, os.environ.get("OPENAI_API_KEY"))
    else:
        backend = MutationBackend(args.two_bug_rate, timeout_s=args.timeout)
    from tqdm import tqdm

    with tqdm(total=None, desc="reflection samples", unit="sample", leave=False) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        samples, stats = build_dataset(
            args.n,
            args.seed,
            workers=args.workers,
            generation_fraction=args.generation_fraction,
            backend=backend,
            timeout_s=args.timeout,
            progress=progress,
        )
    path = write_jsonl(samples, args.out)
    print(f"wrote {path}: {stats.summary()}")
    return 0
