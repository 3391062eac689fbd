"""Score samples (or generate them first) on HumanEval(+), MBPP(+) or MultiPL-E, sandboxed.

examples:
  reflectioncoder evaluate --task humaneval --samples S.jsonl --json result.json
  reflectioncoder evaluate --task mbpp --model runs/demo/train/final --json mbpp.json
  reflectioncoder evaluate --task multiple-cpp --samples S.jsonl
  reflectioncoder evaluate --task multiple --samples S.jsonl   # every language; rows name theirs

Generated samples go beside --json (RESULT.samples.jsonl), to --save-samples, or into the run
folder of a trained model (RUN/eval/); never silently into the current folder.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

from reflectioncoder.errors import (
    UsageError,
    UserError,
    atomic_write_text,
    require_file,
    require_model_folder,
)
from reflectioncoder.eval import multiple as ml
from reflectioncoder.eval import prompts as pr
from reflectioncoder.eval import tasks as tk
from reflectioncoder.eval.sandbox import not_guaranteed
from reflectioncoder.progress import Progress

TASKS = ("humaneval", "mbpp", "multiple", "multiple-LANG")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    languages = ", ".join(ml.LANGUAGES)
    parser.add_argument(
        "--task",
        required=True,
        help=f"humaneval | mbpp | multiple (every language that runs here) | multiple-LANG, "
        f"LANG one of: {languages}",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", type=Path, help="jsonl of {task_id, completion}: score these")
    src.add_argument("--model", help="model folder (or name, with --base-url): generate first")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="evaluation data (default: $REFLECTIONCODER_DATA_DIR or ../shared/evaldata)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the full result here")
    parser.add_argument("--parallel", type=int, default=2, help="sandboxed workers")
    parser.add_argument("--base-only", action="store_true", help="skip the plus tests")
    parser.add_argument(
        "--languages",
        nargs="+",
        default=None,
        metavar="LANG",
        help="--task multiple: only these languages (default: those the samples name, or all "
        "that run here with --model)",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N tasks (N >= 1)")
    parser.add_argument(
        "--k",
        type=int,
        nargs="+",
        default=None,
        help="pass@k to report, each k <= samples per task (default: those of 1, 10, 100 that "
        "the samples allow)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
    gen = parser.add_argument_group("generation (with --model)")
    gen.add_argument(
        "--backend",
        choices=("hf", "vllm", "openai"),
        default="hf",
        help="transformers on a local folder, vLLM, or an OpenAI-compatible server",
    )
    gen.add_argument("--base-url", default=None, help="OpenAI-compatible server (backend openai)")
    gen.add_argument(
        "--api-key",
        default=None,
        help="key for --base-url (default: none; the server may not need one)",
    )
    gen.add_argument(
        "--prompt-format",
        choices=pr.PROMPT_FORMATS,
        default="spec",
        help="spec: SPEC §5's prompt (the paper's; for models trained here); chat: the same "
        "request through the model's own chat template, for instruct models (HumanEval: the "
        "reply repeats the signature and the model writes the body)",
    )
    gen.add_argument("--n-samples", type=int, default=1, help="samples per task")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1]")
    gen.add_argument("--max-new-tokens", type=int, default=1024, help="tokens per completion")
    gen.add_argument("--batch-size", type=int, default=8, help="prompts per generate() call")
    gen.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    gen.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for generation (default: torch's, every core)",
    )
    gen.add_argument("--tensor-parallel", type=int, default=1, help="vLLM tensor parallelism")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    gen.add_argument(
        "--save-samples",
        type=Path,
        default=None,
        help="where generated samples go (default: beside --json, or RUN/eval/ for a model "
        "inside a run folder)",
    )


def check_arguments(args: argparse.Namespace) -> None:
    """Argument values argparse cannot check alone: a UsageError naming the flag."""
    positive = {
        "--limit": args.limit,
        "--parallel": args.parallel,
        "--n-samples": args.n_samples,
        "--max-new-tokens": args.max_new_tokens,
        "--batch-size": args.batch_size,
        "--tensor-parallel": args.tensor_parallel,
        "--threads": args.threads,
    }
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise UsageError(f"{flag}: expected a number >= 1, got {value}")
    for k in args.k or []:
        if k < 1:
            raise UsageError(f"--k: expected numbers >= 1, got {k}")
        if args.model is not None and k > args.n_samples:
            raise UsageError(
                f"--k {k}: needs at least {k} samples per task; --n-samples is {args.n_samples}"
            )
    if args.temperature < 0:
        raise UsageError(f"--temperature: expected >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p: expected a value in (0, 1], got {args.top_p}")
    if args.samples is not None:
        require_file(args.samples, "samples file", field="--samples")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError("folder not found", file=args.data_dir, field="--data-dir")
    if args.model is not None and args.backend != "openai":
        require_model_folder(args.model, "--model", need="both")
    if args.model is not None and args.backend == "openai" and not args.base_url:
        raise UsageError("--backend openai needs --base-url")
    if args.prompt_format == "chat" and (args.backend == "openai" or args.task.startswith("mult")):
        raise UsageError("--prompt-format chat: HumanEval and MBPP with --backend hf or vllm only")
    if args.device is not None and args.model is not None:
        _check_device(args.device)


def _check_device(device: str) -> None:
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: this torch build or machine has no CUDA device")


def samples_path(args: argparse.Namespace) -> Path:
    """Where generated samples go: --save-samples, beside --json, or RUN/eval/ for a model
    inside a run folder (RUN/final, RUN/checkpoints/step-N/model)."""
    if args.save_samples is not None:
        return args.save_samples
    if args.json is not None:
        return args.json.with_suffix(".samples.jsonl")
    model = Path(args.model).resolve()
    for run in (model.parent, model.parent.parent.parent):
        if (run / "config.yaml").is_file():
            return run / "eval" / f"samples-{args.task}.jsonl"
    raise UsageError(
        "give --json RESULT or --save-samples FILE: where should the generated samples go?"
    )


def _bar(total: int, desc: str, enabled: bool) -> Progress:
    """A bar on a terminal; about ten plain lines in a log."""
    return Progress(total, desc, unit="item", enabled=enabled)


def _read_samples(path: Path) -> list[dict]:
    rows = []
    with open(path, "rb") as f:  # decoded per line, so bad bytes name their line
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"not UTF-8 (byte {exc.start + 1})", file=path, line=n) from None
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"invalid JSON: {exc.msg}", file=path, line=n, column=exc.colno
                ) from None
            if not isinstance(row, dict) or "task_id" not in row:
                raise UserError("missing", file=path, line=n, field="task_id")
            if not isinstance(row.get("completion", row.get("solution")), str):
                got = row.get("completion", row.get("solution"))
                raise UserError(
                    f"expected a string, got {json.dumps(got)}",
                    file=path,
                    line=n,
                    field="completion",
                )
            rows.append(row)
    return rows


def _generate(
    args: argparse.Namespace, task_ids: list[str], prompts: list[str], post, stop_strings=()
) -> list[dict]:
    from reflectioncoder import generate as gn

    config = gn.GenerationConfig(
        stop_strings=tuple(stop_strings),
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        n=args.n_samples,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    bar = _bar(len(prompts), "generate", not args.no_progress)
    try:
        if args.backend == "hf":
            model = gn.LocalModel(args.model, device=args.device, threads=args.threads)
            texts = model.complete(prompts, config, progress=bar, stats=args.generation_stats)
        elif args.backend == "vllm":
            model = gn.VllmModel(args.model, tensor_parallel=args.tensor_parallel, seed=args.seed)
            texts = model.complete(prompts, config, progress=bar)
        else:
            policy = gn.RetryPolicy(timeout_s=600.0)  # a long completion may take minutes
            client = gn.OpenAIClient(args.base_url, args.model, args.api_key, policy)
            texts = client.complete(prompts, config, progress=bar)
    finally:
        bar.close()
    return [
        {"task_id": tid, "completion": post(tid, raw)}
        for tid, outs in zip(task_ids, texts, strict=True)
        for raw in outs
    ]


def _pass_at(n: list[int], c: list[int], ks: list[int]) -> dict[str, float]:
    from reflectioncoder.eval.score import estimate_pass_at_k

    return {f"pass@{k}": float(estimate_pass_at_k(n, c, k).mean()) for k in ks if min(n) >= k}


def main(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    check_arguments(args)
    args.generation_stats = {}
    data_dir = args.data_dir or tk.default_data_dir()
    if data_dir is None:
        raise UsageError("--data-dir not given and ../shared/evaldata not found")
    task = args.task
    if task == "multiple":
        return _multiple_all(args, data_dir, t0)
    if task.startswith("multiple-"):
        lang = task.removeprefix("multiple-")
        problem = ml.toolchain_problem(lang)
        if problem:
            print(f"reflectioncoder evaluate: {problem}", file=sys.stderr)
            return 3
        tasks = tk.load_multiple(data_dir, lang)
    elif task == "humaneval":
        tasks = tk.load_humaneval_plus(data_dir)
    elif task == "mbpp":
        tasks = tk.load_mbpp_plus(data_dir)
    else:
        raise UsageError(f"--task: expected one of {', '.join(TASKS)}, got {task!r}")
    if args.limit:
        tasks = dict(list(tasks.items())[: args.limit])

    if args.samples is not None:
        samples = _read_samples(args.samples)
    else:
        out = samples_path(args)
        samples = _generate_for(args, task, tasks)
        atomic_write_text(out, "".join(json.dumps(s) + "\n" for s in samples))
        print(f"samples: {out}", file=sys.stderr)
    samples = _check_samples(args, tasks, samples)
    if task.startswith("multiple-"):
        result = _score_multiple(args, tasks, samples)
    else:
        result = _score_python(args, task, tasks, samples, data_dir)
    return _finish(args, result, t0)


def _generate_for(args: argparse.Namespace, task: str, tasks: dict) -> list[dict]:
    ids = list(tasks)
    if task.startswith("multiple"):
        prompts = [pr.multiple_prompt(tasks[t]) for t in ids]
        return _generate(
            args, ids, prompts, lambda tid, raw: pr.postprocess_multiple(tasks[tid], raw)
        )
    if args.prompt_format == "chat":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
        prompts = [pr.chat_prompt(tasks[t], tok) for t in ids]
        post = lambda tid, raw: pr.postprocess_chat(raw)  # noqa: E731
        return _generate(args, ids, prompts, post, stop_strings=[pr.FENCE])
    prompts = [pr.python_prompt(tasks[t]) for t in ids]
    return _generate(args, ids, prompts, lambda tid, raw: pr.postprocess(raw))


def _check_samples(args: argparse.Namespace, tasks: dict, samples: list[dict]) -> list[dict]:
    """The samples of ``tasks`` (``--limit`` drops the rest); every task needs one, and
    ``--k`` (defaulted here) at most as many as the task with the fewest has."""
    if args.limit:
        samples = [s for s in samples if s["task_id"] in tasks]
    missing = sorted(set(tasks) - {s["task_id"] for s in samples})
    if missing:
        raise UserError(
            f"no sample for {len(missing)} tasks, e.g. {missing[:3]}",
            file=args.samples,
        )
    per_task = collections.Counter(s["task_id"] for s in samples)
    fewest = min(per_task[t] for t in tasks)
    if args.k is None:
        args.k = [k for k in (1, 10, 100) if k <= fewest]
    elif max(args.k) > fewest:
        raise UsageError(
            f"--k {max(args.k)}: some tasks have only {fewest} sample(s); pass@k needs k <= "
            "samples per task"
        )
    return samples


def _finish(args: argparse.Namespace, result: dict, t0: float) -> int:
    result.update(
        task=args.task,
        samples=str(args.samples or args.model),
        seconds=round(time.monotonic() - t0, 2),
    )
    python_only = args.task in ("humaneval", "mbpp", "multiple-python")
    result["not_guaranteed"] = not_guaranteed(result["isolation"], python_only)
    _print_table(result)
    gen = getattr(args, "generation_stats", None)
    if gen:
        result["generation"] = gen
        print(
            f"generation: {gen['new_tokens']} tokens in {gen['seconds']} s ({gen['tokens_per_s']} "
            f"tokens/s, {gen['cpu_seconds']} s CPU, {gen['threads']} thread(s), batch "
            f"{gen['batch_size']})"
        )
    for reason in result.get("unavailable", {}).values():
        print(reason)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))
        print(f"result: {args.json}", file=sys.stderr)
    if args.model is not None and args.backend != "openai":
        from reflectioncoder.train.model_card import add_eval_results

        # A subset's score says so: "pass@1 (first 2 tasks)".
        note = f" (first {len(result['details'])} tasks)" if args.limit else ""
        card = add_eval_results(args.model, result["scores"], note)
        if card is not None:
            print(f"model card: {card} (model-index updated)", file=sys.stderr)
    return 0


def _multiple_languages(args: argparse.Namespace, data_dir: Path, rows: list[dict] | None):
    """The languages ``--task multiple`` scores: --languages, else those the samples name,
    else (generating) every language with a runner and data."""
    on_disk = tk.multiple_languages(data_dir)
    if args.languages:
        bad = [lang for lang in args.languages if lang not in on_disk or lang not in ml.LANGUAGES]
        if bad:
            raise UsageError(f"--languages: no MultiPL-E runner or data for {' '.join(bad)}")
        return args.languages
    named = None if rows is None else {r["language"] for r in rows}
    return [lang for lang in ml.LANGUAGES if lang in on_disk and (named is None or lang in named)]


def _multiple_all(args: argparse.Namespace, data_dir: Path, t0: float) -> int:
    """``--task multiple``: every language that runs here, one table. Samples name their
    language (``"language": "cs"``); with ``--model`` each language is generated in turn.
    Languages whose toolchain is missing are listed under the table with the reason."""
    from reflectioncoder.eval.sandbox import isolation_level

    rows = None
    if args.samples is not None:
        rows = _read_samples(args.samples)
        known = set(tk.multiple_languages(data_dir)) & set(ml.LANGUAGES)
        for n, row in enumerate(rows, 1):
            if not isinstance(row.get("language"), str):
                raise UserError(
                    "missing (--task multiple)", file=args.samples, line=n, field="language"
                )
            if row["language"] not in known:
                raise UserError(
                    f"{row['language']!r} is not a MultiPL-E language here "
                    f"({' '.join(sorted(known))})",
                    file=args.samples,
                    line=n,
                    field="language",
                )
    wanted = _multiple_languages(args, data_dir, rows)
    unavailable = {lang: ml.toolchain_problem(lang) for lang in wanted}
    unavailable = {lang: why for lang, why in unavailable.items() if why}
    out = samples_path(args) if rows is None else None  # before generating: fail fast
    result = {"scores": {}, "isolation": isolation_level(), "details": {}}
    generated = []
    k_asked = args.k
    for lang in (lang for lang in wanted if lang not in unavailable):
        tasks = tk.load_multiple(data_dir, lang)
        if args.limit:
            tasks = dict(list(tasks.items())[: args.limit])
        if rows is None:
            samples = [{**s, "language": lang} for s in _generate_for(args, "multiple", tasks)]
            generated += samples
        else:
            samples = [r for r in rows if r["language"] == lang]
        args.k = k_asked
        samples = _check_samples(args, tasks, samples)
        part = _score_multiple(args, tasks, samples, f"multiple-{lang}")
        result["scores"].update(part["scores"])
        result["details"].update({f"{lang}:{tid}": v for tid, v in part["details"].items()})
    if out is not None:
        atomic_write_text(out, "".join(json.dumps(s) + "\n" for s in generated))
        print(f"samples: {out}", file=sys.stderr)
    if not result["scores"]:
        reasons = "; ".join(unavailable.values()) or "no language given"
        raise UserError(f"no MultiPL-E language runs here ({reasons}); see eval-setup")
    result["unavailable"] = unavailable
    return _finish(args, result, t0)


def _score_python(args, task: str, tasks: dict, samples: list[dict], data_dir: Path) -> dict:
    from reflectioncoder.eval import score as sc
    from reflectioncoder.eval.sandbox import isolation_level

    rel = tk.HUMANEVAL_PLUS_FILE if task == "humaneval" else tk.MBPP_PLUS_FILE
    source = tk.dataset_file(data_dir, rel)
    bar = _bar(len(tasks), "expected outputs", not args.no_progress)
    try:
        expected = sc.expected_outputs(
            tasks, tk.file_hash(source), parallel=args.parallel, progress=bar
        )
    finally:
        bar.close()
    bar = _bar(len(samples), "score", not args.no_progress)
    try:
        results = sc.score_python_samples(
            tasks,
            samples,
            expected,
            parallel=args.parallel,
            base_only=args.base_only,
            progress=bar,
            hide=[str(data_dir)],
        )
    finally:
        bar.close()
    per_task: dict[str, list] = {}
    for r in results:
        per_task.setdefault(r.task_id, []).append(r)
    n = [len(v) for v in per_task.values()]
    name = "HumanEval" if task == "humaneval" else "MBPP"
    scores = {name: _pass_at(n, [sum(r.passed_base for r in v) for v in per_task.values()], args.k)}
    if not args.base_only:
        c_plus = [sum(r.passed_plus for r in v) for v in per_task.values()]
        scores[name + "+"] = _pass_at(n, c_plus, args.k)
    return {
        "scores": scores,
        "isolation": isolation_level(),
        "details": {
            tid: [
                {
                    "completion_id": r.completion_id,
                    "base": r.base,
                    "plus": r.plus,
                    "base_failed_input": r.base_failed_input,
                    "plus_failed_input": r.plus_failed_input,
                    "reason": r.reason,
                    "seconds": round(r.duration_s, 3),
                }
                for r in v
            ]
            for tid, v in per_task.items()
        },
    }


def _score_multiple(args, tasks: dict, samples: list[dict], name: str = "") -> dict:
    from reflectioncoder.eval.sandbox import isolation_level

    bar = _bar(len(samples), f"score {name}".strip(), not args.no_progress)
    try:
        results = ml.score_multiple_samples(tasks, samples, parallel=args.parallel, progress=bar)
    finally:
        bar.close()
    per_task: dict[str, list] = {}
    for r in results:
        per_task.setdefault(r.task_id, []).append(r)
    n = [len(v) for v in per_task.values()]
    c = [sum(r.passed for r in v) for v in per_task.values()]
    return {
        "scores": {name or args.task: _pass_at(n, c, args.k)},
        "isolation": isolation_level(),
        "details": {
            tid: [
                {
                    "completion_id": r.completion_id,
                    "status": r.status,
                    "exit_code": r.exit_code,
                    "reason": r.reason,
                    "stderr_tail": r.stderr_tail,
                    "seconds": round(r.duration_s, 3),
                }
                for r in v
            ]
            for tid, v in per_task.items()
        },
    }


def _print_table(result: dict) -> None:
    """A short table: one row per benchmark, one column per pass@k."""
    scores = result["scores"]
    ks = sorted({k for v in scores.values() for k in v}, key=lambda s: int(s.split("@")[1]))
    width = max(len(name) for name in scores) + 2
    print(f"{'benchmark':<{width}}" + "".join(f"{k:>10}" for k in ks))
    for name, vals in scores.items():
        print(
            f"{name:<{width}}"
            + "".join(f"{100 * vals[k]:>10.1f}" if k in vals else f"{'-':>10}" for k in ks)
        )
    n_samples = sum(len(v) for v in result["details"].values())
    print(
        f"{len(result['details'])} tasks, {n_samples} samples, {result['seconds']} s, "
        f"sandbox: {result['isolation']}"
    )
