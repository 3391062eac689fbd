"""The embedded demo (``make demo``): the whole ReflectionCoder method, end to end, on a CPU.

1. build a reflection dataset by really running buggy code and its fixes in the sandbox;
2. train a small BPE tokenizer on it, locally;
3. train a tiny Llama from scratch with the full method (teacher, student, dynamic mask, KL);
4. generate with the saved checkpoint from a SPEC §5 prompt, and run the answer's tests;
5. print where everything is.

Nothing is downloaded. ``python -m reflectioncoder.demo --out runs/demo``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reflectioncoder.errors import UsageError
from reflectioncoder.printable import printable
from reflectioncoder.progress import Progress, setup_output

if TYPE_CHECKING:  # the steps import these when they run: `--help` stays quick
    from reflectioncoder.construct.build import BuildStats
    from reflectioncoder.construct.problems import Problem

TOTAL_STEPS = 5


@dataclass
class DemoResult:
    """Where the demo put things, and what it saw."""

    data: Path
    tokenizer: Path
    run_dir: Path
    checkpoint: Path
    metrics: Path
    plot: Path | None
    steps: int
    first_loss: float
    last_loss: float
    prompt: str
    completion: str
    completion_passed: bool
    seconds: dict[str, float]


def _header(k: int, total: int, title: str) -> None:
    print(f"\n{'=' * 78}\n[{k}/{total}] {title}\n{'=' * 78}", flush=True)


def _indent(text: str, prefix: str = "    | ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def generation_prompt(problem_prompt: str) -> str:
    """SPEC §5's HumanEval prompt, up to and including the opening python fence."""
    from reflectioncoder.eval.prompts import humaneval_user, spec_prompt

    return spec_prompt(humaneval_user(problem_prompt))


def generate(checkpoint: Path, prompt: str, max_new_tokens: int) -> str:
    """Greedy, on the CPU, from a saved Hugging Face folder, through the one model client; the
    completion is cut at the closing fence and at SPEC §5's stop strings."""
    from reflectioncoder.eval.prompts import postprocess_chat
    from reflectioncoder.generate import GenerationConfig, LocalModel

    # the model's end tokens stop it (no stop strings); special tokens are dropped from the text
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop=(), skip_special_tokens=True)
    raw = LocalModel(str(checkpoint), device="cpu").complete([prompt], config)[0][0]
    return postprocess_chat(raw)


def check_sizes(**sizes: int | None) -> None:
    """Each count the demo takes is >= 1 (None: the default), checked before minutes of work."""
    for name, value in sizes.items():
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"expected a number >= 1, got {value}", field=flag)


def run_demo(
    out: str | Path = "runs/demo",
    n: int = 240,
    seed: int = 0,
    workers: int = 8,
    max_steps: int | None = 200,
    samples_per_step: int = 4,
    vocab_size: int = 1024,
    max_new_tokens: int = 96,
    progress: bool = True,
    threads: int | None = 1,
) -> DemoResult:
    """Run the five steps; returns the paths and figures (also printed as it goes)."""
    if n < 2:
        raise UsageError(f"the demo needs at least 2 samples, got {n}", field="--n")
    check_sizes(workers=workers, steps=max_steps, samples_per_step=samples_per_step,
                threads=threads)  # fmt: skip
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError("is a file; give a folder", file=out, field="--out")
    _refuse_a_run_not_the_demos(out / "train")
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    samples, stats, data_path = _build_data(out, n, seed, workers, progress)
    seconds["data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tok_dir = _train_tokenizer(out, samples, vocab_size)
    seconds["tokenizer"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run_dir = out / "train"
    overrides = [
        f"data.files=[{data_path}]",
        f"model.tokenizer={tok_dir}",
        f"checkpoint.out_dir={run_dir}",
        f"train.samples_per_step={samples_per_step}",
        f"train.seed={seed}",
        f"logging.progress={str(progress).lower()}",
        f"train.threads={'null' if threads is None else threads}",
    ]
    if max_steps is not None:
        overrides.append(f"train.max_steps={max_steps}")
    steps, first, last = _train_model(run_dir, overrides)
    seconds["train"] = time.perf_counter() - t0
    plot = run_dir / "loss.png" if (run_dir / "loss.png").is_file() else None

    t0 = time.perf_counter()
    checkpoint = run_dir / "final"
    problem, prompt, completion, passed = _generate_and_test(
        checkpoint, samples, seed, max_new_tokens
    )
    seconds["generate"] = time.perf_counter() - t0

    _header(5, TOTAL_STEPS, "Summary")
    res = DemoResult(
        data=data_path,
        tokenizer=tok_dir,
        run_dir=run_dir,
        checkpoint=checkpoint,
        metrics=run_dir / "metrics.jsonl",
        plot=plot,
        steps=steps,
        first_loss=first,
        last_loss=last,
        prompt=prompt,
        completion=completion,
        completion_passed=passed,
        seconds=seconds,
    )
    _print_summary(res, stats, problem.entry_point)
    (out / "summary.json").write_text(
        json.dumps(
            {k: str(v) if isinstance(v, Path) else v for k, v in vars(res).items()}, indent=2
        )
    )
    return res


def _refuse_a_run_not_the_demos(run_dir: Path) -> None:
    """The demo starts its own earlier run over (OUT/train), never a run of the user's that
    OUT/train happens to hold: one trained on other data or another tokenizer than OUT's."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return
    import yaml

    try:
        saved = yaml.safe_load(config.read_text()) or {}
        files = [Path(f).parts[-2:] for f in saved["data"]["files"]]
        tokenizer = Path(saved["model"]["tokenizer"]).name
    except (yaml.YAMLError, KeyError, TypeError, IndexError):
        files, tokenizer = None, None
    if files != [("data", "reflection.jsonl")] or tokenizer != "tokenizer":
        raise UsageError(
            f"{run_dir} holds a training run that is not a demo's; the demo would delete it: "
            "choose another --out",
            field="--out",
        )


def _build_data(
    out: Path, n: int, seed: int, workers: int, progress: bool
) -> tuple[list[dict], BuildStats, Path]:
    """Step 1: ``n`` samples built by running code in the sandbox, written to OUT/data."""
    from reflectioncoder.construct.build import build_dataset, write_jsonl

    _header(1, TOTAL_STEPS, "Build reflection data by real execution (reflectioncoder build-data)")
    print(
        f"{n} samples from template problems: a buggy first attempt (a mutated reference\n"
        "solution) runs with its tests in the sandbox; a reflection explains the real error;\n"
        "the fix runs again; the one-off answer closes the sample (SPEC §1 ReflectionSeq).",
        flush=True,
    )
    bar = Progress(None, "reflection samples", unit="sample", enabled=progress, parallel=workers)
    with bar:  # workers samples at a time: no time left guessed for the last of them

        def tick(done: int, of: int) -> None:
            bar.set_total(of)
            bar.update(done - bar.n)

        samples, stats = build_dataset(n, seed, workers=workers, progress=tick)
    data_path = write_jsonl(samples, out / "data" / "reflection.jsonl")
    print(f"wrote {data_path}\n{stats.summary()}")
    example = next(s for s in samples if s["type"] == "reflection")
    body = example["messages"][1]["content"]
    print(f"\nOne reflection sequence ({example['task_id']}), blocks of message 2:")
    for block in body:
        content = block["content"] if block["type"] != "code" else "(code and its tests)"
        print(f"  <{block['type']}>\n{_indent(content)}")
    return samples, stats, data_path


def _train_tokenizer(out: Path, samples: list[dict], vocab_size: int) -> Path:
    """Step 2: a byte-level BPE tokenizer trained on the samples, saved to OUT/tokenizer."""
    from reflectioncoder.data.tokenize import SPECIAL_TOKENS
    from reflectioncoder.tokenizer import train_tokenizer

    _header(2, TOTAL_STEPS, "Train a byte-level BPE tokenizer locally")
    texts = [b["content"] for s in samples for m in s["messages"] for b in m["content"]]
    tok_dir = out / "tokenizer"
    tokenizer = train_tokenizer(texts, vocab_size, tok_dir)
    line = "for x in nums:"
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(line, add_special_tokens=False))
    print(f"vocabulary {len(tokenizer)} tokens, saved to {tok_dir}")
    print(f"{line!r} -> {pieces}")
    print(
        f"the trainer adds SPEC's {len(SPECIAL_TOKENS)} special tokens: {' '.join(SPECIAL_TOKENS)}"
    )
    return tok_dir


def _train_model(run_dir: Path, overrides: list[str]) -> tuple[int, float, float]:
    """Step 3: the ``tiny`` preset trained with ``overrides`` into ``run_dir``; (steps, mean
    loss of the first steps, of the last steps)."""
    from reflectioncoder.config_loader import load_config
    from reflectioncoder.train.metrics import step_rows
    from reflectioncoder.train.trainer import Trainer

    _header(3, TOTAL_STEPS, "Train a tiny Llama with the ReflectionCoder method (preset `tiny`)")
    cfg = load_config(None, overrides, base="tiny")
    print(
        "teacher: the whole sequence; student: the reflection hidden by block_mask (order "
        f"{cfg.mask.block_order}),\nthe mask rate step / steps, 1 at the last step (SPEC §3); "
        "loss = CE (teacher + student) + KL(teacher || student)\non the answer.",
        flush=True,
    )
    # An earlier demo's run is started over, under the folder's lock: a demo still training
    # there is refused in one line, not deleted under its feet.
    trainer = Trainer(cfg, overwrite=True)
    try:
        summary = trainer.train()
    finally:
        trainer.close()  # flushes metrics and draws the loss plot
    rows = step_rows(run_dir / "metrics.jsonl")
    if not rows:
        raise RuntimeError(f"training wrote no metrics to {run_dir / 'metrics.jsonl'}")
    k = max(1, min(10, len(rows) // 5))  # mean of the first and last k steps: less noise
    first = sum(r["loss"] for r in rows[:k]) / k
    last = sum(r["loss"] for r in rows[-k:]) / k
    _print_losses(rows)
    print(f"loss: {first:.3f} (mean of the first {k} steps) -> {last:.3f} (last {k})")
    return int(summary["steps"]), first, last


def _print_losses(rows: list[dict]) -> None:
    """About eight of the metrics rows (and the last) as a table of the loss's parts."""
    print("\nstep   loss     teacher CE  student CE  KL       mask rate")
    shown = rows[:: max(1, len(rows) // 8)]
    shown += [rows[-1]] if shown[-1] is not rows[-1] else []
    for r in shown:
        teacher, student = r.get("teacher_ce"), r.get("student_ce")
        parts = "   ".join(f"{v:8.4f}" if v is not None else "     n/a" for v in (teacher, student))
        print(f"{r['step']:>4}   {r['loss']:.4f}   {parts}    {r['kl']:.4f}   {r['mask_rate']:.2f}")
    print(
        "(teacher CE + student CE = CE, one mean over both passes' label tokens (SPEC §2); the\n"
        "student's share is small: it is scored on the final answer only)"
    )


def _generate_and_test(
    checkpoint: Path, samples: list[dict], seed: int, max_new_tokens: int
) -> tuple[Problem, str, str, bool]:
    """Step 4: a completion of a problem the model has not trained on (where one is left), its
    tests run in the sandbox; (problem, prompt, completion, passed)."""
    from reflectioncoder.construct.execute import run_tests
    from reflectioncoder.construct.problems import generate_problems

    _header(4, TOTAL_STEPS, "Generate from the saved checkpoint (SPEC §5 prompt, greedy)")
    used = {s["task_id"] for s in samples}
    problems = generate_problems(seed)
    unseen = [p for p in problems if p.task_id not in used] or problems
    problem = random.Random(seed).choice(unseen)
    prompt = generation_prompt(problem.prompt)
    completion = generate(checkpoint, prompt, max_new_tokens)
    result = run_tests(problem, completion, timeout_s=5.0)
    note = "not in the training data" if problem.task_id not in used else "seen in training"
    print(f"problem {problem.task_id} ({note}):\n{_indent(problem.prompt.rstrip())}")
    shown = printable(completion, lines=True) or "(empty)"  # model-written: escapes escaped
    print(f"completion (cut at the fence and stop strings):\n{_indent(shown)}")
    last_line = result.output.splitlines()[-1] if result.output else ""
    print(f"its tests, run in the sandbox: {_verdict(result.passed)}  {printable(last_line)}")
    return problem, prompt, completion, result.passed


def _verdict(passed: bool) -> str:
    return "PASSED" if passed else "failed"


def _print_summary(res: DemoResult, stats: BuildStats, entry_point: str) -> None:
    """Step 5: where everything is."""
    first_line = res.completion.splitlines()[0][:60] if res.completion else ""
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in res.seconds.items())
    print(
        f"data        {res.data}  ({stats.reflection} reflection + {stats.generation} "
        "generation samples)\n"
        f"tokenizer   {res.tokenizer}\n"
        f"training    {res.steps} steps, loss {res.first_loss:.3f} -> {res.last_loss:.3f}\n"
        f"metrics     {res.metrics}  (TensorBoard: {res.run_dir / 'tensorboard'})\n"
        f"loss plot   {res.plot}\n"
        f"checkpoint  {res.checkpoint}  (AutoModelForCausalLM.from_pretrained loads it)\n"
        f"sample      {entry_point}: {first_line!r}"
        f" ... tests {_verdict(res.completion_passed)}\n"
        f"time        {timing}"
    )


def build_parser() -> argparse.ArgumentParser:
    """The demo's options, each with its help and default (``--help``)."""
    parser = argparse.ArgumentParser(prog="python -m reflectioncoder.demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--n", type=int, default=240, help="samples to build (default 240)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data, the model and training (default 0)"
    )
    parser.add_argument(
        "--workers", type=int, default=8, help="sandboxed runs in parallel (default 8)"
    )
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    parser.add_argument(
        "--samples-per-step", type=int, default=4, help="samples per optimizer step (default 4)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the tiny model's ops are too small to gain from "
        "more, and on a busy 2-core machine 2 threads ran 7x slower)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from reflectioncoder.cli import guarded

    # The one error boundary of every command: a bad value is one line, Ctrl-C `interrupted`.
    return guarded(parser.prog, lambda: _demo(args), args.debug)


def _demo(args: argparse.Namespace) -> int:
    setup_output(progress=not args.no_progress)  # plain lines, not bars, when logged to a file
    check_sizes(threads=args.threads)  # before torch takes it
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # per-file save/load bars: noise here
    start = time.perf_counter()
    run_demo(
        args.out,
        n=args.n,
        seed=args.seed,
        workers=args.workers,
        max_steps=args.steps,
        samples_per_step=args.samples_per_step,
        progress=not args.no_progress,
        threads=args.threads,
    )
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
