"""The DeepSpeed JSON sections its config parser hands on whole, checked key by key against the
code that takes them (the parser reads none of their keys, so a typo there passes it): a
``scheduler``'s ``type`` and ``params`` (the keyword arguments of the scheduler class it
names, DeepSpeed's ``lr_schedules`` or torch's) and ``pipeline`` (the keys of DeepSpeed's
pipeline defaults and those its pipeline engine reads)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from reflectioncoder.errors import did_you_mean

# ``pipeline`` keys DeepSpeed's pipeline engine reads beyond its config's defaults
# (deepspeed/runtime/pipe/engine.py: ``self._config.pipeline.get('use_reentrant')``)
_READ_BY_PIPELINE_ENGINE = ("use_reentrant",)


def unknown_key(hint: str) -> str:
    return f"unknown key{hint}: {_deepspeed()} has no such setting"


def _deepspeed() -> str:
    import deepspeed

    return f"DeepSpeed {deepspeed.__version__}"


def handed_on_problem(data: dict[str, Any]) -> tuple[tuple, str] | None:
    """The first key of ``scheduler`` or ``pipeline`` that the code DeepSpeed hands the section
    to does not take: (the key path, why); None when every key is taken."""
    return _scheduler_problem(data.get("scheduler")) or _pipeline_problem(data.get("pipeline"))


def _scheduler_problem(section: Any) -> tuple[tuple, str] | None:
    if not isinstance(section, dict) or section.get("type", "auto") in (None, "auto"):
        return None  # no type (null: DeepSpeed builds no scheduler): it reads no params either
    name = section["type"]
    scheduler = _scheduler_classes().get(name) if isinstance(name, str) else None
    if scheduler is None:
        hint = did_you_mean(str(name), _scheduler_classes())
        return ("scheduler", "type"), f"{name!r} is not a scheduler {_deepspeed()} builds{hint}"
    params = section.get("params")
    taken = _keyword_arguments(scheduler)
    for key in params if isinstance(params, dict) and taken is not None else ():
        if key not in taken:
            hint = did_you_mean(key, taken, "scheduler.params")
            return ("scheduler", "params", key), unknown_key(hint)
    return None


@functools.cache
def _scheduler_classes() -> dict[str, type]:
    """The scheduler ``type``s DeepSpeed's engine builds (``_scheduler_from_config``): its own
    ``lr_schedules``, else torch's ``torch.optim.lr_scheduler`` class of that name."""
    import torch
    from deepspeed.runtime import lr_schedules

    base = torch.optim.lr_scheduler.LRScheduler
    names = vars(torch.optim.lr_scheduler).items()
    torchs = {n: c for n, c in names if inspect.isclass(c) and issubclass(c, base)}
    return {**torchs, **{n: getattr(lr_schedules, n) for n in lr_schedules.VALID_LR_SCHEDULES}}


def _keyword_arguments(scheduler: type) -> frozenset[str] | None:
    """What ``scheduler(optimizer, **params)`` takes as params; None when it takes any."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = list(inspect.signature(scheduler).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters[1:] if p.kind in kinds)  # [0]: the optimizer


def _pipeline_problem(section: Any) -> tuple[tuple, str] | None:
    from deepspeed.runtime.config import get_pipeline_config

    taken = {*get_pipeline_config({}), *_READ_BY_PIPELINE_ENGINE}  # {}: its defaults
    for key in section if isinstance(section, dict) else ():
        if key not in taken:
            return ("pipeline", key), unknown_key(did_you_mean(key, taken, "pipeline"))
    return None
