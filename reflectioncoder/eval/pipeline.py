"""The steps of ``reflectioncoder evaluate``: load the benchmark's tasks, read the samples (or
generate them), score them in the sandbox, summarise, report (table, result file, model card).

Every step reads the one ``EvalRequest``; what a run learns on its way (the pass@k its samples
allow, the generation's speed) is returned, never written back into the request.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from contextlib import nullcontext
from operator import attrgetter

from reflectioncoder.errors import UsageError, UserError, atomic_write_text, did_you_mean
from reflectioncoder.eval import multiple as ml
from reflectioncoder.eval import tasks as tk
from reflectioncoder.eval.completions import generate_samples
from reflectioncoder.eval.journal import SampleJournal, generation_key
from reflectioncoder.eval.request import EvalRequest
from reflectioncoder.eval.samples import read_samples, select_samples
from reflectioncoder.eval.sandbox import Isolation, isolation
from reflectioncoder.eval.summary import print_table, summarise
from reflectioncoder.eval.toolchains import meant_languages
from reflectioncoder.printable import printable
from reflectioncoder.progress import Progress

TASKS = ("humaneval", "mbpp", "multiple", "multiple-LANG")
NO_TOOLCHAIN = 3  # the exit status of "skipped: its toolchain is not installed here"


def evaluate(req: EvalRequest) -> int:
    """Run the request: 0 when scored, NO_TOOLCHAIN when the toolchain of every language it
    asks for is missing here."""
    t0 = time.monotonic()
    if req.task == "multiple":
        return _evaluate_multiple_all(req, t0)
    task = req.task
    if task.startswith("multiple-"):
        lang = task.removeprefix("multiple-")
        if lang not in ml.LANGUAGES:  # a typo, not a toolchain to install (exit 3 says that)
            known = ", ".join(ml.LANGUAGES)
            meant = meant_languages([lang])
            raise UsageError(
                f"--task: no MultiPL-E language {lang!r}{meant}; LANG is one of {known}"
            )
        problem = ml.toolchain_problem(lang)
        if problem:
            print(f"reflectioncoder evaluate: {printable(problem)}", file=sys.stderr)
            return NO_TOOLCHAIN
        tasks = tk.load_multiple(req.data_dir, lang)
    elif task == "humaneval":
        tasks = tk.load_humaneval_plus(req.data_dir)
    elif task == "mbpp":
        tasks = tk.load_mbpp_plus(req.data_dir)
    else:
        typo = did_you_mean(task, ("humaneval", "mbpp", "multiple"))
        raise UsageError(f"--task: expected one of {', '.join(TASKS)}, got {task!r}{typo}")
    generation: dict = {}
    if req.samples is not None:  # checked against every task: a --limit drops the others
        rows = read_samples(
            req.samples, solutions=not task.startswith("multiple"), tasks=(tasks, task)
        )
    tasks = _first(tasks, req.limit)
    journal = None
    if req.samples is None:
        with SampleJournal(req.samples_out(), generation_key(req)) as journal:
            rows = generate_samples(req, tasks, generation, journal)
        journal.write_samples(rows)
    rows, ks = select_samples(tasks, rows, subset=bool(req.limit), k=req.k, file=req.samples)
    if task.startswith("multiple-"):
        scores, details = _score_multiple(req, tasks, rows, ks, task)
    else:
        scores, details = _score_python(req, tasks, rows, ks)
    level = isolation()
    result = {"scores": scores, "isolation": level.name, "details": details}
    code = _report(req, result, level, generation, t0)
    if journal is not None:  # kept until now: a run stopped while scoring generates nothing again
        journal.remove()
    return code


def _first(tasks: dict, limit: int | None) -> dict:
    return dict(list(tasks.items())[:limit]) if limit else tasks


def _multiple_languages(req: EvalRequest, rows: list[dict] | None) -> list[str]:
    """The languages ``--task multiple`` scores: --languages, else those the samples name,
    else (generating) every language with a runner and data."""
    on_disk = tk.multiple_languages(req.data_dir)
    if req.languages:
        bad = [lang for lang in req.languages if lang not in on_disk or lang not in ml.LANGUAGES]
        if bad:
            raise UsageError(f"--languages: no MultiPL-E runner or data for {' '.join(bad)}"
                             f"{meant_languages(bad)}")  # fmt: skip
        return list(req.languages)
    named = None if rows is None else {r["language"] for r in rows}
    return [lang for lang in ml.LANGUAGES if lang in on_disk and (named is None or lang in named)]


def _evaluate_multiple_all(req: EvalRequest, t0: float) -> int:
    """``--task multiple``: every language that runs here, one table. Samples name their
    language (``"language": "cs"``); with ``--model`` each language is generated in turn.
    Languages whose toolchain is missing are listed under the table with the reason."""
    rows = None
    if req.samples is not None:
        known = set(tk.multiple_languages(req.data_dir)) & set(ml.LANGUAGES)
        rows = read_samples(req.samples, solutions=False, languages=known)
    wanted = _multiple_languages(req, rows)
    unavailable = {lang: ml.toolchain_problem(lang) for lang in wanted}
    unavailable = {lang: why for lang, why in unavailable.items() if why}
    if wanted and len(unavailable) == len(wanted):  # skipped, as --task multiple-LANG is
        reasons = printable("; ".join(unavailable.values()))
        print(f"reflectioncoder evaluate: no MultiPL-E language asked for runs here ({reasons}); "
              "see eval-setup", file=sys.stderr)  # fmt: skip
        return NO_TOOLCHAIN
    out = req.samples_out() if rows is None else None  # before generating: fail fast
    level = isolation()
    result = {"scores": {}, "isolation": level.name, "details": {}}
    generated, generation = [], {}
    with SampleJournal(out, generation_key(req)) if out else nullcontext() as journal:
        for lang in (lang for lang in wanted if lang not in unavailable):
            tasks = _first(tk.load_multiple(req.data_dir, lang), req.limit)
            if rows is None:
                lang_rows = generate_samples(req, tasks, generation, journal, language=lang)
                generated += lang_rows
            else:
                lang_rows = [r for r in rows if r["language"] == lang]
            lang_rows, ks = select_samples(
                tasks, lang_rows, subset=bool(req.limit), k=req.k, file=req.samples
            )
            scores, details = _score_multiple(req, tasks, lang_rows, ks, f"multiple-{lang}", lang)
            result["scores"].update(scores)
            result["details"].update(details)
        if journal is not None:
            journal.write_samples(generated)
    if not result["scores"]:
        where = "the samples name none" if rows is not None else f"no data in {req.data_dir}"
        raise UserError(f"no MultiPL-E language to score ({where})")
    result["unavailable"] = unavailable
    code = _report(req, result, level, generation, t0)
    if journal is not None:
        journal.remove()
    return code


def _score_python(req: EvalRequest, tasks: dict, rows: list[dict], ks: tuple[int, ...]):
    from reflectioncoder.eval import score as sc
    from reflectioncoder.eval.expected import expected_outputs

    rel = tk.HUMANEVAL_PLUS_FILE if req.task == "humaneval" else tk.MBPP_PLUS_FILE
    source = tk.dataset_file(req.data_dir, rel)
    bar = _sandbox_bar(req, len(tasks), "expected outputs")
    try:
        expected = expected_outputs(
            tasks, tk.file_hash(source), parallel=req.parallel, progress=bar
        )
    finally:
        bar.close()
    bar = _sandbox_bar(req, len(rows), "score")
    try:
        results = sc.score_python_samples(
            tasks,
            rows,
            expected,
            parallel=req.parallel,
            base_only=req.base_only,
            progress=bar,
            hide=[str(req.data_dir)],
        )
    finally:
        bar.close()
    name = "HumanEval" if req.task == "humaneval" else "MBPP"
    benchmarks = {name: attrgetter("passed_base")}
    if not req.base_only:
        benchmarks[name + "+"] = attrgetter("passed_plus")  # base and plus both pass
    return summarise(results, benchmarks, ks)


def _score_multiple(
    req: EvalRequest, tasks: dict, rows: list[dict], ks, name: str, lang: str | None = None
):
    """One MultiPL-E language's row; ``lang``: the details are keyed ``lang:task_id``."""
    desc = f"score {name}" if lang else "score"
    bar = _sandbox_bar(req, len(rows), desc)
    try:
        results = ml.score_multiple_samples(tasks, rows, parallel=req.parallel, progress=bar)
    finally:
        bar.close()
    prefix = f"{lang}:" if lang else ""
    return summarise(results, {name: attrgetter("passed")}, ks, prefix=prefix)


def _sandbox_bar(req: EvalRequest, total: int, desc: str) -> Progress:
    """A bar over sandboxed runs, ``--parallel`` at a time: once every item left is running
    it says so instead of a time left (one may run out its whole time limit)."""
    return Progress(total, desc, unit="item", enabled=req.progress, parallel=req.parallel)


def _report(req: EvalRequest, result: dict, level: Isolation, generation: dict, t0: float) -> int:
    """The table (and the generation's speed) on stdout, the result file, the model card."""
    seconds = round(time.monotonic() - t0, 2)
    result.update(task=req.task, samples=str(req.samples or req.model), seconds=seconds)
    result["not_guaranteed"] = level.not_guaranteed(req.python_only)
    print_table(result)
    if generation:
        result["generation"] = generation
        print(
            f"generation: {generation['new_tokens']} tokens in {generation['seconds']} s "
            f"({generation['tokens_per_s']} tokens/s, {generation['cpu_seconds']} s CPU, "
            f"{generation['threads']} thread(s), batch {generation['batch_size']})"
        )
    for reason in result.get("unavailable", {}).values():
        print(printable(reason))
    out = req.result_out()
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=1))
        print(f"result: {out}", file=sys.stderr)
    if req.model is not None and req.backend != "openai":
        from reflectioncoder.train.model_card import add_eval_results

        try:
            card = add_eval_results(req.model, result["scores"], _card_note(req, result))
        except UserError as err:  # a card edited since: the scores are kept all the same
            print(f"model card: {err}", file=sys.stderr)
        else:
            if card is not None:
                print(f"model card: {card} (model-index updated)", file=sys.stderr)
    return 0


def _card_note(req: EvalRequest, result: dict) -> str:
    """What a model-index entry's name adds to ``pass@k``, so that scores made another way keep
    entries of their own: the chat prompt, sampling, a subset ("first 2 tasks")."""
    parts = ["chat prompt"] if req.prompt_format == "chat" else []
    if req.decoding.temperature > 0:
        d = req.decoding
        parts.append(f"temperature {d.temperature:g}, top-p {d.top_p:g}, {d.n} samples")
    # Tasks per benchmark (--task multiple keys its details language:task_id); fewer than
    # --limit: scored whole.
    per_language = Counter(key.partition(":")[0] for key in result["details"] if ":" in key)
    scored = max(per_language.values(), default=len(result["details"]))
    if req.limit and scored >= req.limit:
        parts.append(f"first {scored} tasks")
    return f" ({', '.join(parts)})" if parts else ""
