"""Samples from a model (``evaluate --model``): each task's prompt in the requested format,
the model client (``reflectioncoder.generate``), and the post-processing that turns raw text
into a completion."""

from __future__ import annotations

import dataclasses
import sys

from reflectioncoder.data.special import END_OF_BLOCK, TEXT, USER
from reflectioncoder.eval import prompts as pr
from reflectioncoder.eval.journal import SampleJournal
from reflectioncoder.eval.request import EvalRequest
from reflectioncoder.progress import Progress


def generate_samples(
    req: EvalRequest,
    tasks: dict,
    stats: dict,
    journal: SampleJournal | None = None,
    language: str | None = None,
) -> list[dict]:
    """``{"task_id", "completion"}`` rows (and ``"language"`` when given), ``req.decoding.n``
    per task in task order. ``stats`` receives the generation's tokens and speed (transformers
    backend). Tasks the ``journal`` holds are not generated again; each task's new rows go
    into it as its batch is done."""
    ids = list(tasks)
    tok = _tokenizer(req)
    _note_prompt_format(req, tok)
    # spec prompts start with BOS, as the training sequences do (a server's own tokenizer decides)
    bos = pr.bos_text(tok) if tok is not None else ""
    if req.task.startswith("multiple"):
        prompts = {t: bos + pr.multiple_prompt(tasks[t]) for t in ids}
        post = lambda tid, raw: pr.postprocess_multiple(tasks[tid], raw)  # noqa: E731
        stops = ()
    elif req.prompt_format == "chat":
        prompts = {t: pr.chat_prompt(tasks[t], tok) for t in ids}
        post = lambda tid, raw: pr.postprocess_chat(raw)  # noqa: E731
        stops = (pr.FENCE,)
    else:
        prompts = {t: bos + pr.python_prompt(tasks[t]) for t in ids}
        post = lambda tid, raw: pr.postprocess(raw)  # noqa: E731
        stops = ()
    kept = {t: journal.rows(t, language) for t in ids} if journal else {}
    todo = [t for t in ids if not kept.get(t)]
    extra = {} if language is None else {"language": language}

    def keep(i: int, texts: list[str]) -> None:
        tid = todo[i]
        kept[tid] = [{"task_id": tid, "completion": post(tid, raw), **extra} for raw in texts]
        if journal:
            journal.add(kept[tid])

    if todo:
        _generate(req, [prompts[t] for t in todo], keep, stats, stop_strings=stops)
    return [row for t in ids for row in kept[t]]


def _note_prompt_format(req: EvalRequest, tok) -> None:
    """One line when the SPEC prompt goes to a model that was not trained on it: its tokenizer
    has none of SPEC §5's tokens but a chat template (an instruct model, such as SmolLM2)."""
    if req.prompt_format != "spec" or tok is None or req.task.startswith("multiple"):
        return
    ids = tok.convert_tokens_to_ids([USER, TEXT, END_OF_BLOCK])
    unknown = all(i is None or i == tok.unk_token_id for i in ids)
    if unknown and getattr(tok, "chat_template", None):
        print(
            f"note: {req.model} has no {USER} token (not trained by reflectioncoder) but a chat "
            "template: an instruct model answers --prompt-format chat, not the default spec",
            file=sys.stderr,
        )


def _tokenizer(req: EvalRequest):
    """The model folder's tokenizer (``--backend hf`` / ``vllm``); None behind an endpoint."""
    if req.backend == "openai":
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(req.model, local_files_only=True)


def _generate(req: EvalRequest, prompts: list[str], on_done, stats: dict, stop_strings=()):
    """Generate ``prompts``; ``on_done(i, texts)`` gets prompt i's texts as they are made."""
    from reflectioncoder import generate as gn

    config = gn.GenerationConfig(
        **dataclasses.asdict(req.decoding), stop_strings=tuple(stop_strings)
    )
    at_a_time = _prompts_at_a_time(req, len(prompts))
    bar = Progress(len(prompts), "generate", unit="item", enabled=req.progress, parallel=at_a_time)
    try:
        if req.backend == "hf":
            model = gn.LocalModel(req.model, device=req.device, threads=req.threads)
            run: dict = {}
            model.complete(prompts, config, progress=bar, stats=run, on_done=on_done)
            _add_stats(stats, run)
        elif req.backend == "vllm":
            model = gn.VllmModel(
                req.model, tensor_parallel=req.tensor_parallel, seed=req.decoding.seed
            )
            model.complete(prompts, config, progress=bar, on_done=on_done)
        else:
            policy = gn.RetryPolicy(timeout_s=600.0)  # a long completion may take minutes
            client = gn.OpenAIClient(req.base_url, req.model, req.api_key, policy)
            client.complete(prompts, config, progress=bar, on_done=on_done)
    finally:
        bar.close()


def _prompts_at_a_time(req: EvalRequest, n: int) -> int:
    """How many prompts are generated together: a batch (hf), all of them (vLLM schedules
    them at once), one (an endpoint: one request per prompt). The last batch's time is not the
    rate's guess (its prompts are the longest: batches go by length), so the bar says so."""
    if req.backend == "hf":
        return req.decoding.batch_size
    return max(n, 1) if req.backend == "vllm" else 1


def _add_stats(total: dict, run: dict) -> None:
    """``run``'s generation figures added to ``total`` (``--task multiple`` generates each
    language in turn; its line reports them all)."""
    for name in ("new_tokens", "seconds", "cpu_seconds"):
        total[name] = round(total.get(name, 0) + run[name], 2)
    seconds = total["seconds"]
    total.update(
        tokens_per_s=round(total["new_tokens"] / seconds, 2) if seconds else None,
        threads=run["threads"],
        batch_size=run["batch_size"],
    )
