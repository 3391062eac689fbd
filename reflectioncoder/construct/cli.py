"""Build reflection sequences by real execution: problems, attempts, feedback, fixes, answers.

Writes ReflectionSeq jsonl (SPEC §1). Every program runs with its tests in the sandbox; the
execution blocks hold what the interpreter printed. Without ``--problems`` the problems are the
313 template problems (``--n`` samples); with ``--problems FILE`` they are the user's own
(jsonl ``{id, prompt, tests, reference?, entry_point?, language?}``), one sample per problem,
and the run is resumable: run the same command again to continue a stopped run.
"""

from __future__ import annotations

import argparse
import os

from reflectioncoder.construct.backend import MutationBackend, OpenAIBackend, TransformersBackend
from reflectioncoder.construct.build import build_dataset, write_jsonl
from reflectioncoder.errors import (
    UsageError,
    require_file,
    require_model_folder,
    require_writable_output,
)
from reflectioncoder.generate import RetryPolicy
from reflectioncoder.printable import printable
from reflectioncoder.progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``reflectioncoder build-data`` flags."""
    parser.add_argument("--out", required=True, help="output jsonl file")
    parser.add_argument(
        "--problems", help="your problems (jsonl: id, prompt, tests, reference?, entry_point?)"
    )
    parser.add_argument("--n", type=int, help="template problems: number of samples (>= 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of problems, bugs and order")
    parser.add_argument(
        "--workers",
        type=int,
        default=8,
        help="problems in flight at once (default 8: a run mostly waits on process start-up "
        "or on the model)",
    )
    parser.add_argument(
        "--generation-fraction",
        type=float,
        default=0.25,
        help="template problems: share of plain `type: generation` samples (default 0.25)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per program run (> 0)")
    parser.add_argument(
        "--max-rounds", type=int, default=3, help="--problems: reflection rounds at most"
    )
    parser.add_argument(
        "--two-bug-rate",
        type=float,
        default=0.25,
        help="mutation backend: share of first attempts with two bugs (default 0.25)",
    )
    parser.add_argument(
        "--backend",
        choices=("mutation", "openai", "transformers"),
        default="mutation",
        help="who writes code: mutated references (offline), an OpenAI-compatible endpoint, "
        "or a local transformers model",
    )
    parser.add_argument("--base-url", help="openai backend: e.g. http://localhost:8000/v1")
    parser.add_argument(
        "--model", help="openai: the model name to request; transformers: the model folder"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=120.0, help="openai: seconds per request"
    )
    parser.add_argument(
        "--retries", type=int, default=5, help="openai: retries of a failed request (back-off)"
    )
    parser.add_argument(
        "--rate-limit", type=float, default=0.0, help="openai: requests per second (0: no limit)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=1024, help="transformers: tokens per reply"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def _backend(args: argparse.Namespace):
    if args.backend == "openai":
        if not args.base_url or not args.model:
            raise UsageError("--backend openai needs --base-url and --model", field="--backend")
        return OpenAIBackend(
            args.base_url,
            args.model,
            os.environ.get("OPENAI_API_KEY"),
            policy=RetryPolicy(
                timeout_s=args.request_timeout, retries=args.retries, rate_limit=args.rate_limit
            ),
        )
    if args.backend == "transformers":
        if not args.model:
            raise UsageError("--backend transformers needs --model FOLDER", field="--backend")
        require_model_folder(args.model, "--model", need="both")
        return TransformersBackend(args.model, max_new_tokens=args.max_new_tokens)
    return MutationBackend(args.two_bug_rate, timeout_s=args.timeout)


def main(args: argparse.Namespace) -> int:
    """Build the dataset and write it; prints a one-line summary."""
    check_arguments(args)
    backend = _backend(args)
    if args.problems is not None:
        from reflectioncoder.construct.from_problems import build_from_problems, progress_path

        try:
            summary = build_from_problems(
                args.problems,
                args.out,
                backend,
                workers=args.workers,
                max_rounds=args.max_rounds,
                timeout_s=args.timeout,
                seed=args.seed,
            )
        except KeyboardInterrupt as stop:  # Ctrl-C: what is kept and how to go on
            log = progress_path(args.out)
            done = sum(1 for line in log.open("rb") if line.strip()) if log.is_file() else 0
            if str(stop) or not done:
                raise
            raise type(stop)(
                f"{done} problem(s) done, kept in {args.out}: the same command continues with "
                "the rest"
            ) from None
        print(f"{args.out}: {printable(summary.summary())}")  # reasons quote programs' output
        for where, reason in list(summary.skipped.items())[:20]:
            print(f"  skipped {printable(where)}: {printable(reason)}")
        print(f"  progress log: {progress_path(args.out)}")
        return 1 if summary.left else 0
    # --workers samples are made at a time: no time left is guessed for the last of them
    bar = Progress(
        None,
        "reflection samples",
        unit="sample",
        enabled=not args.no_progress,
        parallel=args.workers,
    )
    with bar:

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


# Waits past ~1e11 s overflow the platform's time_t (an internal error, every sample rejected).
MAX_SECONDS = 86400


def check_arguments(args: argparse.Namespace) -> None:
    """Argument values argparse cannot check alone: a UsageError naming the flag."""
    if args.problems is None and args.n is None:
        raise UsageError("give --n (template problems) or --problems FILE", field="--n")
    if args.problems is not None and args.n is not None:  # --n would be ignored
        raise UsageError("give --n (template problems) or --problems FILE, not both", field="--n")
    for flag in ("--model", "--base-url"):
        if args.backend == "mutation" and getattr(args, flag[2:].replace("-", "_")) is not None:
            raise UsageError("needs --backend openai or transformers (the default, mutation, "
                             "uses no model)", field=flag)  # fmt: skip
    if args.n is not None and args.n < 1:
        raise UsageError(f"expected a number of samples >= 1, got {args.n}", field="--n")
    if args.workers < 1:
        raise UsageError(f"expected at least 1, got {args.workers}", field="--workers")
    if args.seed < 0:
        raise UsageError(f"expected a seed >= 0, got {args.seed}", field="--seed")
    if args.problems is not None:
        require_file(args.problems, "problems file", field="--problems")
    for flag, value in (
        ("--generation-fraction", args.generation_fraction),
        ("--two-bug-rate", args.two_bug_rate),
    ):
        if not 0 <= value <= 1:
            raise UsageError(f"expected a value in [0, 1], got {value}", field=flag)
    seconds = f"finite seconds > 0, at most {MAX_SECONDS} (a day)"
    for flag, value, ok, expected in (
        ("--timeout", args.timeout, 0 < args.timeout <= MAX_SECONDS, seconds),
        (
            "--request-timeout",
            args.request_timeout,
            0 < args.request_timeout <= MAX_SECONDS,
            seconds,
        ),
        ("--max-rounds", args.max_rounds, args.max_rounds >= 1, "at least 1"),
        ("--retries", args.retries, args.retries >= 0, "a number >= 0"),
        ("--rate-limit", args.rate_limit, args.rate_limit >= 0, "requests per second >= 0"),
        ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, "at least 1"),
    ):
        if not ok:  # here, so the line names the flag the user typed, not a field behind it
            raise UsageError(f"expected {expected}, got {value}", field=flag)
    if args.base_url is not None and not args.base_url.startswith(("http://", "https://")):
        raise UsageError(f"expected an http(s) URL, got {args.base_url!r}", field="--base-url")
    require_writable_output(args.out, "--out")
    if args.problems is None:
        from reflectioncoder.construct.from_problems import progress_path

        if progress_path(args.out).exists():  # template samples would replace that run's
            raise UsageError(
                f"holds a build-data --problems run ({progress_path(args.out).name}); --n "
                "would write over its samples: choose another --out",
                file=args.out,
                field="--out",
            )
