"""Build reflection sequences by real execution: problems, buggy attempts, feedback, fixes.

Writes ReflectionSeq jsonl (SPEC §1). Every attempt runs with its tests in the sandbox; the
execution blocks hold what the interpreter printed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from reflectioncoder.construct.backend import MutationBackend, OpenAIBackend
from reflectioncoder.construct.build import build_dataset, write_jsonl
from reflectioncoder.errors import UsageError
from reflectioncoder.progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``reflectioncoder build-data`` flags."""
    parser.add_argument("--out", required=True, help="output jsonl file")
    parser.add_argument("--n", type=int, required=True, help="number of samples to write (>= 1)")
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
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per program run (> 0)")
    parser.add_argument(
        "--two-bug-rate",
        type=float,
        default=0.25,
        help="mutation backend: share of first attempts with two bugs (default 0.25)",
    )
    parser.add_argument(
        "--backend",
        choices=("mutation", "openai"),
        default="mutation",
        help="who writes the code: mutated reference solutions, or a model behind an "
        "OpenAI-compatible server (key from $OPENAI_API_KEY)",
    )
    parser.add_argument("--base-url", help="openai backend: e.g. http://localhost:8000/v1")
    parser.add_argument("--model", help="openai backend: the model name to request")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def main(args: argparse.Namespace) -> int:
    """Build the dataset and write it; prints a one-line summary."""
    check_arguments(args)
    if args.backend == "openai":
        backend = OpenAIBackend(args.base_url, args.model, os.environ.get("OPENAI_API_KEY"))
    else:
        backend = MutationBackend(args.two_bug_rate, timeout_s=args.timeout)
    with Progress(None, "reflection samples", unit="sample", enabled=not args.no_progress) as bar:

        def progress(done: int, total: int) -> None:
            bar.set_total(total)
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


def check_arguments(args: argparse.Namespace) -> None:
    """Argument values argparse cannot check alone: a UsageError naming the flag."""
    if args.n < 1:
        raise UsageError(f"--n: expected a number of samples >= 1, got {args.n}")
    if args.workers < 1:
        raise UsageError(f"--workers: expected at least 1, got {args.workers}")
    for flag, value in (
        ("--generation-fraction", args.generation_fraction),
        ("--two-bug-rate", args.two_bug_rate),
    ):
        if not 0 <= value <= 1:
            raise UsageError(f"{flag}: expected a value in [0, 1], got {value}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout: expected seconds > 0, got {args.timeout}")
    if args.backend == "openai" and (not args.base_url or not args.model):
        raise UsageError("--backend openai needs --base-url and --model")
    if Path(args.out).is_dir():
        raise UsageError("is a folder; give a file name", file=args.out, field="--out")
