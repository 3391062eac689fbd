"""What the installed DeepSpeed reads of its JSON config (``deepspeed_json_problem``): a key it
does not know (a typo it would ignore, or stop on deep in ``deepspeed.initialize``), or a value
its config models refuse, found as a key path; the sections its parser hands on whole are
``deepspeed_sections.py``'s."""

from __future__ import annotations

import collections.abc
import functools
import sys
import typing
from typing import Any

from reflectioncoder.errors import did_you_mean
from reflectioncoder.train.deepspeed_sections import (
    handed_on_problem,
    json_kind,
    optimizer_problem,
    unknown_key,
)

# The batch keys our trainer owns, and what DeepSpeed is given for each from the world size:
# micro-batch 1 and one accumulation step (the trainer packs each step and sets the boundary)
BATCH_FROM_WORLD = {
    "train_micro_batch_size_per_gpu": lambda world: 1,
    "gradient_accumulation_steps": lambda world: 1,
    "train_batch_size": lambda world: world,
}
OWNED_BATCH_KEYS = tuple(BATCH_FROM_WORLD)


# What DeepSpeed reads of its JSON: its config parser (``DeepSpeedConfig._initialize_params``)
# run over dicts that record the keys it asks for, and its pydantic models (extra keys refused).


class _Reads(dict):
    """A JSON object that records which of its keys DeepSpeed's parser asks for. ``opaque``:
    it was iterated (every key may be used); ``seen``: the dict paths read, newest last."""

    def __init__(self, data: dict[str, Any], path: tuple = (), seen: list | None = None,
                 log: list | None = None, scalars: list | None = None) -> None:  # fmt: skip
        self.path, self.asked, self.opaque = path, set(), False
        self.seen = seen if seen is not None else [path]
        self.log = log if log is not None else []  # the key paths asked for (present), in order
        self.scalars = scalars if scalars is not None else []  # read as one value (see get)
        super().__init__({k: self._wrap(v, (*path, k)) for k, v in data.items()})

    def _wrap(self, value: Any, path: tuple) -> Any:
        if not isinstance(value, dict):
            return value
        return _Reads(value, path, self.seen, self.log, self.scalars)

    def _ask(self, key: Any) -> None:
        self.asked.add(key)
        if dict.__contains__(self, key):
            self.log.append((*self.path, key))
        value = dict.get(self, key)
        if isinstance(value, _Reads):
            self.seen.append(value.path)

    def get(self, key: Any, default: Any = None) -> Any:
        self._ask(key)
        # DeepSpeed reads its one-value keys through config_utils.get_scalar_param, which takes
        # an object or a list as the value unchecked (gradient_clipping: {...} passed)
        if sys._getframe(1).f_code.co_name == "get_scalar_param":
            self.scalars.append((*self.path, key))
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self._ask(key)
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        self._ask(key)
        return super().__contains__(key)

    def keys(self) -> collections.abc.KeysView:
        return _AskedKeys(self)

    def __iter__(self):
        self.opaque = True
        return super().__iter__()

    def items(self):
        self.opaque = True
        return super().items()

    def values(self):
        self.opaque = True
        return super().values()


class _AskedKeys(collections.abc.KeysView):
    """``key in d.keys()`` asks for ``key``; iterating the keys makes ``d`` opaque."""

    def __iter__(self):
        self._mapping.opaque = True
        return dict.__iter__(self._mapping)


def _deepspeed_parses(data: _Reads) -> Any:
    """DeepSpeed's own reading of its JSON (no world, no batch-size arithmetic)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = object.__new__(DeepSpeedConfig)
    parsed.world_size, parsed.global_rank, parsed._param_dict = 1, 0, data
    parsed._initialize_params(data)
    return parsed


# Top-level keys ``deepspeed.initialize`` reads from the dict itself, outside its config parser
_READ_BY_INITIALIZE = ("sequence_parallel_size", "data_parallel_size")


@functools.cache
def _top_level_keys() -> frozenset[str]:
    """The top-level keys DeepSpeed asks for: what its parser and its checks ask of a one-key
    JSON (some sections are looked for only in a JSON that is not empty)."""
    probe = _Reads({"train_batch_size": 1})
    parsed = _deepspeed_parses(probe)
    parsed._configure_train_batch_size()
    parsed._do_sanity_check()  # its warnings read one more key (vocabulary_size)
    return frozenset(probe.asked) | frozenset(_READ_BY_INITIALIZE)


def deepspeed_json_problem(data: dict[str, Any]) -> tuple[tuple, str] | None:
    """The first key of a DeepSpeed JSON that the installed DeepSpeed does not know (a typo it
    would ignore, or refuse deep in ``deepspeed.initialize``), or value its config models refuse:
    (the key path, why); None when it reads the whole JSON (or DeepSpeed is not installed)."""
    try:
        from deepspeed.runtime.config import DeepSpeedConfigError, _reject_removed_config_keys
    except ImportError:
        return optimizer_problem(data.get("optimizer"))  # ours to honour, DeepSpeed or not
    try:
        _reject_removed_config_keys(data)
    except DeepSpeedConfigError as err:  # a section DeepSpeed removed: its own message
        return _removed_key(data), str(err).split(" See ")[0]
    known = _top_level_keys()
    for key in data:
        if key not in known and not key.startswith(_COMMENT):
            return (key,), unknown_key(did_you_mean(key, known))
    problem = optimizer_problem(data.get("optimizer"))
    if problem is not None:
        return problem
    autos = [
        p for p in _paths(data) if _at(data, p) == "auto" and (len(p) > 1 or not _filled_auto(p))
    ]
    for sentinel in (None, *autos):  # each "auto" asked alone: a key DeepSpeed knows, filled
        problem = _parse_problem(_without_autos(data, keep=sentinel), sentinel)
        if problem is not None:
            return problem
    return handed_on_problem(data) or _dtype_problem(data)


# The "auto" values ``deepspeed_config`` fills (or drops for DeepSpeed's default): a key path,
# or a section whose every "auto" it fills. DeepSpeed's own "auto" (its default) passes too.
_FILLED_AUTOS = (
    *((k,) for k in (*OWNED_BATCH_KEYS, "gradient_clipping", "steps_per_print",
                     "wall_clock_breakdown", "communication_data_type")),
    ("bf16", "enabled"), ("fp16", "enabled"), ("data_types", "grad_accum_dtype"),
    ("zero_optimization",), ("optimizer",), ("scheduler",),
)  # fmt: skip
_DEEPSPEEDS_OWN_AUTOS = (("pipeline", "stages"), ("data_types", "keep_in_fp32_modules"))


def _filled_auto(path: tuple) -> bool:
    return any(path[: len(p)] == p for p in (*_FILLED_AUTOS, *_DEEPSPEEDS_OWN_AUTOS))


# The data_types keys DeepSpeed resolves to a torch dtype once the engine runs, and the names
# it takes for each (its DtypeEnum's, less int8, which no gradient or weight runs in)
_DTYPE_KEYS = ("grad_accum_dtype", "param_dtype", "buffer_dtype")
_DTYPE_NAMES = ("fp32", "float32", "torch.float32", "float", "bf16", "bfloat16",
                "torch.bfloat16", "fp16", "float16", "torch.float16", "half")  # fmt: skip


def _dtype_problem(data: dict[str, Any]) -> tuple[tuple, str] | None:
    """A ``data_types`` dtype DeepSpeed would refuse only once the engine runs."""
    for key, value in _mapping(data.get("data_types")).items():
        if key in _DTYPE_KEYS and value not in (*_DTYPE_NAMES, None, "auto"):
            return ("data_types", key), f"{value!r} is not a dtype; one of fp32, bf16, fp16"
    return None


_ASKED = object()  # an "auto" value under test: any value the key's model refuses

# JSON has no comments: a top-level "_comment" key (LLaMA-Factory's ds_z2_autotp_config.json),
# which DeepSpeed ignores, is one
_COMMENT = "_"


def _removed_key(data: dict[str, Any]) -> tuple:
    """The key of ``data`` that DeepSpeed refuses as removed: the first one it refuses alone
    (its message may name another section, as "amp"'s names "fp16")."""
    from deepspeed.runtime.config import DeepSpeedConfigError, _reject_removed_config_keys

    zero = data.get("zero_optimization")
    keys = [(k,) for k in data] + [("zero_optimization", k) for k in _mapping(zero)]
    for path in keys:
        try:
            _reject_removed_config_keys(
                {path[0]: {path[1]: None}} if len(path) > 1 else {path[0]: None}
            )
        except DeepSpeedConfigError:
            return path
    return ()


def _parse_problem(data: dict[str, Any], auto: tuple | None) -> tuple | None:
    """DeepSpeed's parser over ``data``: an extra key or bad value its models refuse, or a key
    of a section it reads key by key that it never asks for."""
    import pydantic

    reads = _Reads(data)
    try:
        _deepspeed_parses(reads)
    except pydantic.ValidationError as err:
        for error in err.errors():
            path = _error_path(data, reads.seen, tuple(error["loc"]))
            if error["input"] is _ASKED and error["type"] != "extra_forbidden":
                continue  # a key DeepSpeed knows, refusing the test value: the "auto" is fine
            if error["type"] == "extra_forbidden":
                known = _model_fields(err.title, error["loc"][:-1])
                return path, unknown_key(did_you_mean(path[-1], known, _dotted(path[:-1])))
            return path, f"{error['msg']} (got {error['input']!r})"
        return None
    except Exception as err:  # noqa: BLE001 (a value DeepSpeed refuses by other means)
        if auto is not None:  # the key is read as it is: "auto" is no value it takes
            return None if _filled_auto(auto) else (auto, _UNFILLED_AUTO)
        return (reads.log[-1], _read_failure(data, reads.log[-1], err)) if reads.log else None
    for path in reads.scalars:
        if isinstance(_at(data, path), dict | list):
            return path, _ONE_VALUE + json_kind(_at(data, path))
    for asked in _dicts(reads):
        # data_efficiency's keys: against DeepSpeed's names (a section it turns off is unread)
        if asked.path[:1] == ("data_efficiency",):
            continue
        if asked.path and asked.asked and not asked.opaque:
            extra = [k for k in dict.keys(asked) if k not in asked.asked]
            if extra and (auto is None or (*asked.path, extra[0]) == auto):
                hint = did_you_mean(extra[0], asked.asked, _dotted(asked.path))
                return (*asked.path, extra[0]), unknown_key(hint)
    # no config model took the key (they drop "auto"): DeepSpeed reads "auto" as its value
    return (auto, _UNFILLED_AUTO) if auto is not None and not _filled_auto(auto) else None


_ONE_VALUE = "expected a single value (a number, a string, true/false or null), got "


def _read_failure(data: dict[str, Any], path: tuple, err: Exception) -> str:
    """Why DeepSpeed's parser stopped at the key read last: an object or a list where it reads
    one value (its own message names a Python attribute), else its message."""
    value = _at(data, path)
    if isinstance(value, list) and ("mapping" in str(err) or "'list' object" in str(err)):
        return f"expected a JSON object, got {json_kind(value)}"  # a section: its keys read
    return _ONE_VALUE + json_kind(value) if isinstance(value, dict | list) else str(err)


_UNFILLED_AUTO = ("'auto' is not filled for this key (DeepSpeed would take the string as its "
                  "value); give a value, or remove the key for DeepSpeed's default")  # fmt: skip


def _error_path(data: dict[str, Any], seen: list[tuple], loc: tuple) -> tuple:
    """A pydantic error's location as a path in the JSON: under the newest section read that
    holds it (DeepSpeed validates sections it took out of the JSON)."""
    for base in reversed(seen):
        if _at(data, (*base, *loc)) is not _MISSING:
            return (*base, *loc)
    return loc


def _model_fields(title: str, loc: tuple) -> set[str]:
    """The field names and aliases of DeepSpeed's config model ``title`` at ``loc``."""
    import pydantic
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel

    def subclasses(cls: type) -> list[type]:
        return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]

    for model in (c for c in subclasses(DeepSpeedConfigModel) if c.__name__ == title):
        for key in loc:
            field = model.model_fields.get(key)
            hints = (field.annotation, *typing.get_args(field.annotation)) if field else ()
            inner = [a for a in hints if isinstance(a, type) and issubclass(a, pydantic.BaseModel)]
            if not inner:
                break
            model = inner[0]
        else:
            fields = model.model_fields.items()
            return {n for name, f in fields for n in (name, f.alias) if n}
    return set()


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _paths(data: Any, path: tuple = ()) -> list[tuple]:
    if not isinstance(data, dict):
        return [path]
    return [p for key, value in data.items() for p in _paths(value, (*path, key))]


_MISSING = object()


def _at(data: Any, path: tuple) -> Any:
    """The value at ``path`` in the JSON, or ``_MISSING``."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


def _dotted(path: tuple) -> str:
    return ".".join(map(str, path))


def _dicts(reads: _Reads) -> list[_Reads]:
    inner = [d for v in dict.values(reads) if isinstance(v, _Reads) for d in _dicts(v)]
    return [reads, *inner]


def _without_autos(data: Any, keep: tuple | None, path: tuple = ()) -> Any:
    """``data`` less its "auto" values (DeepSpeed never sees them: we fill or drop them), but
    the one at ``keep``, which becomes a value no model takes (``_ASKED``)."""
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        here = (*path, key)
        if value == "auto" and here != keep:
            continue
        out[key] = _ASKED if value == "auto" else _without_autos(value, keep, here)
    return out
