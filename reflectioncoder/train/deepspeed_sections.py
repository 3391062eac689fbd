"""The DeepSpeed JSON sections its config parser hands on whole, checked key by key against the
code that takes them (the parser reads none of their keys, so a typo there passes it): a
``scheduler``'s ``type`` and ``params`` (the keyword arguments of the scheduler class it
names, DeepSpeed's ``lr_schedules`` or torch's), ``pipeline`` (the keys of DeepSpeed's
pipeline defaults and those its pipeline engine reads), the ``optimizer`` section (what the
trainer's AdamW honours: ``optimizer_problem``) and ``data_efficiency`` (DeepSpeed's data
pipeline, which the trainer does not run: refused when it turns anything on, its keys checked
against DeepSpeed's own names otherwise). Each problem is a key path, which the JSON reader
turns into file:line:col."""

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


def json_kind(value: Any) -> str:
    """What a JSON value is, as a user wrote it: an object, a list, a string, ..."""
    kinds = ((bool, "true/false"), (dict, "a JSON object"), (list, "a list"), (str, "a string"))
    return next((name for cls, name in kinds if isinstance(value, cls)), "a number")


def handed_on_problem(data: dict[str, Any]) -> tuple[tuple, str] | None:
    """The first key of ``scheduler``, ``pipeline`` or ``data_efficiency`` that the code
    DeepSpeed hands the section to does not take: (the key path, why); None when every key is
    taken."""
    return (
        _scheduler_problem(data.get("scheduler"))
        or _pipeline_problem(data.get("pipeline"))
        or _data_efficiency_problem(data.get("data_efficiency"))
    )


def _scheduler_problem(section: Any) -> tuple[tuple, str] | None:
    if not isinstance(section, dict) or section.get("type", "auto") in (None, "auto"):
        return None  # no type (null: DeepSpeed builds no scheduler): it reads no params either
    params = section.get("params")
    if params is not None and not isinstance(params, dict):
        why = f"expected a JSON object of the scheduler's arguments, got {json_kind(params)}"
        return ("scheduler", "params"), why
    name = section["type"]
    scheduler = _scheduler_classes().get(name) if isinstance(name, str) else None
    if scheduler is None:
        hint = did_you_mean(str(name), _scheduler_classes())
        return ("scheduler", "type"), f"{name!r} is not a scheduler {_deepspeed()} builds{hint}"
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


# The DeepSpeed JSON optimizer section's params we honour (-> OptimConfig field), and those
# that change nothing here (which implementation runs is ours to choose).
OPTIM_PARAMS = {"lr": "lr", "betas": "betas", "eps": "eps", "weight_decay": "weight_decay"}
_IMPLEMENTATION_PARAMS = ("torch_adam", "fused", "adam_w_mode")

# DeepSpeed Adam params at the values our AdamW runs (its defaults, which configs spell out):
# honoured as given, refused at any other value
_ADAMW_RUNS = {"bias_correction": True, "amsgrad": False}


def _honoured(key: str, value: Any) -> bool:
    if key in OPTIM_PARAMS or key in _IMPLEMENTATION_PARAMS:
        return True
    return key in _ADAMW_RUNS and value in (_ADAMW_RUNS[key], "auto")


def optimizer_problem(section: Any) -> tuple[tuple, str] | None:
    """What the trainer cannot honour in the JSON's ``optimizer`` section (it runs AdamW, the
    section's lr, betas, eps and weight_decay replacing ``optim.*``): (the key path, why)."""
    if section is None or section == {}:
        return None
    if not isinstance(section, dict):
        return ("optimizer",), f"expected a JSON object, got {json_kind(section)}"
    kind = section.get("type", "")
    if not isinstance(kind, str) or kind.lower() not in ("adam", "adamw"):
        return ("optimizer", "type"), (
            f"{kind!r} is not supported: the trainer runs AdamW (DeepSpeed's CPU Adam "
            "under offload); use Adam or AdamW, or remove the section"
        )
    params = section.get("params", {})
    if not isinstance(params, dict):
        return ("optimizer", "params"), f"expected a JSON object, got {json_kind(params)}"
    if kind.lower() == "adam" and params.get("adam_w_mode") is False and params.get("weight_decay"):
        return ("optimizer", "params", "adam_w_mode"), (
            "adam_w_mode=false (L2 weight decay) is not supported"
        )
    for key, value in params.items():
        if not _honoured(key, value):
            honoured = (*OPTIM_PARAMS, *_IMPLEMENTATION_PARAMS, *_ADAMW_RUNS)
            hint = did_you_mean(key, [k for k in honoured if k not in params], "optimizer.params")
            return ("optimizer", "params", key), (
                f"cannot be honoured{hint}; known: lr, betas, eps, weight_decay (and "
                "bias_correction true, amsgrad false: what the trainer's AdamW runs)"
            )
        why = _optim_value_problem(key, value)
        if why:
            return ("optimizer", "params", key), why
    return None


def _optim_value_problem(key: str, value: Any) -> str | None:
    """Why an honoured optimizer param's value is no value of its ``optim.*`` field."""
    from reflectioncoder.config import OptimConfig

    if key not in OPTIM_PARAMS or value == "auto":
        return None
    numbers = value if key == "betas" and isinstance(value, list) else [value]
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in numbers):
        wanted = "a list of two numbers" if key == "betas" else "a number"
        return f"expected {wanted}, got {json_kind(value)}"
    try:
        OptimConfig(**{OPTIM_PARAMS[key]: value})
    except ValueError as err:
        return str(err).split(": ", 1)[-1]  # "optim.lr: must be > 0": the key is named already
    return None


# ``data_efficiency``'s sections (DeepSpeed's data pipeline) and the prefix of the names of
# their keys in DeepSpeed's data_pipeline/constants.py; a section's own dicts (random-LTD's
# schedules, a curriculum's schedule_config) take the same names
_DATA_EFFICIENCY_SECTIONS = {
    "data_efficiency": ("DATA_EFFICIENCY", ("data_sampling", "data_routing")),
    "data_sampling": ("DATA_SAMPLING", ("curriculum_learning", "dynamic_batching")),
    "curriculum_learning": ("CURRICULUM_LEARNING", ()),
    "dynamic_batching": ("DYNAMIC_BATCHING", ()),
    "data_routing": ("DATA_ROUTING", ("random_ltd",)),
    "random_ltd": ("RANDOM_LTD", ()),
}
_USER_NAMED = ("curriculum_metrics",)  # its keys are the user's metric names

_NOT_RUN = (
    "DeepSpeed's data pipeline (curriculum learning, data sampling, dynamic batching, "
    "random-LTD) does not run here: the trainer plans and packs its own batches (data.packing, "
    "its masking schedule is the curriculum); remove the section, or set its enabled to false"
)


def _data_efficiency_problem(section: Any) -> tuple[tuple, str] | None:
    """``data_efficiency``: a feature it turns on is refused (the trainer never hands DeepSpeed
    a dataset or a random-LTD model, so it would do nothing); its keys are checked against the
    names DeepSpeed 0.19.8 reads, section by section."""
    if not isinstance(section, dict):
        return None  # DeepSpeed's parser names a section that is no object
    return _data_section_problem(section, ("data_efficiency",), "data_efficiency")


def _data_section_problem(section: dict, path: tuple, name: str) -> tuple[tuple, str] | None:
    prefix, children = _DATA_EFFICIENCY_SECTIONS[name]
    known = {*_constant_names(prefix), *children}
    for key, value in section.items():
        here = (*path, key)
        if key not in known:
            return here, unknown_key(did_you_mean(key, known, ".".join(path)))
        if key == "enabled" and value not in (False, None):
            return here, _NOT_RUN
        if key in children and isinstance(value, dict):
            problem = _data_section_problem(value, here, key)
        elif key in _USER_NAMED and isinstance(value, dict):
            metrics = [(m, v) for m, v in value.items() if isinstance(v, dict)]
            problem = next(filter(None, (
                _data_section_problem(v, (*here, m), name) for m, v in metrics)), None)  # fmt: skip
        elif isinstance(value, dict):
            problem = _data_section_problem(value, here, name)
        else:
            problem = None
        if problem:
            return problem
    return None


@functools.cache
def _constant_names(prefix: str) -> frozenset[str]:
    """The key names DeepSpeed's data pipeline reads in a section: the string constants of
    data_pipeline/constants.py named ``<prefix>_...`` (less their ``_DEFAULT`` values)."""
    from deepspeed.runtime.data_pipeline import constants

    return frozenset(
        value
        for name, value in vars(constants).items()
        if name.startswith(prefix + "_")
        and not name.endswith("_DEFAULT")
        and isinstance(value, str)
    )
