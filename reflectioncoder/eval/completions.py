"""Samples from a model (``evaluate --model``): each task's prompt in the requested format,
the model client (``reflectioncoder.generate``), and the post-processing that turns raw text
into a completion."""

from __future__ import annotations

import dataclasses

from reflectioncoder.eval import prompts as pr
from reflectioncoder.eval.request import EvalRequest
from reflectioncoder.progress import Progress


def generate_samples(req: EvalRequest, tasks: dict, stats: dict) -> list[dict]:
    """``{"task_id", "completion"}`` rows, ``req.decoding.n`` per task in task order.
    ``stats`` receives the generation's tokens and speed (transformers backend)."""
    ids = list(tasks)
    if req.task.startswith("multiple"):
        prompts = [pr.multiple_prompt(tasks[t]) for t in ids]
        post = lambda tid, raw: pr.postprocess_multiple(tasks[tid], raw)  # noqa: E731
        return _generate(req, ids, prompts, post, stats)
    if req.prompt_format == "chat":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(req.model, local_files_only=True)
        prompts = [pr.chat_prompt(tasks[t], tok) for t in ids]
        post = lambda tid, raw: pr.postprocess_chat(raw)  # noqa: E731
        return _generate(req, ids, prompts, post, stats, stop_strings=(pr.FENCE,))
    prompts = [pr.python_prompt(tasks[t]) for t in ids]
    return _generate(req, ids, prompts, lambda tid, raw: pr.postprocess(raw), stats)


def _generate(
    req: EvalRequest, task_ids: list[str], prompts: list[str], post, stats: dict, stop_strings=()
) -> list[dict]:
    from reflectioncoder import generate as gn

    config = gn.GenerationConfig(
        **dataclasses.asdict(req.decoding), stop_strings=tuple(stop_strings)
    )
    bar = Progress(len(prompts), "generate", unit="item", enabled=req.progress)
    try:
        if req.backend == "hf":
            model = gn.LocalModel(req.model, device=req.device, threads=req.threads)
            texts = model.complete(prompts, config, progress=bar, stats=stats)
        elif req.backend == "vllm":
            model = gn.VllmModel(
                req.model, tensor_parallel=req.tensor_parallel, seed=req.decoding.seed
            )
            texts = model.complete(prompts, config, progress=bar)
        else:
            policy = gn.RetryPolicy(timeout_s=600.0)  # a long completion may take minutes
            client = gn.OpenAIClient(req.base_url, req.model, req.api_key, policy)
            texts = client.complete(prompts, config, progress=bar)
    finally:
        bar.close()
    return [
        {"task_id": tid, "completion": post(tid, raw)}
        for tid, outs in zip(task_ids, texts, strict=True)
        for raw in outs
    ]
