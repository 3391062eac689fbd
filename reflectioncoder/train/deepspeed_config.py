"""DeepSpeed's JSON config, the reference's format with its "auto" values filled from ours
(``deepspeed_config``, ``optim_with_deepspeed_section``), and the ZeRO-3 helpers that build and
load a model into partitions (``zero3_partitioning``, ``zero3_local_piece``,
``zero3_transformers_config``)."""

from __future__ import annotations

import collections.abc
import contextlib
import copy
import dataclasses
import functools
import json
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from reflectioncoder.config import OptimConfig, RunConfig
from reflectioncoder.errors import ConfigError, did_you_mean
from reflectioncoder.train.deepspeed_sections import (
    OPTIM_PARAMS,
    handed_on_problem,
    json_kind,
    optimizer_problem,
    unknown_key,
)
from reflectioncoder.train.distributed import DistInfo, resolve_dtype


@contextlib.contextmanager
def zero3_partitioning(run: RunConfig, info: DistInfo) -> Iterator[None]:
    """Inside, each module's parameters are partitioned over the ranks as it is built, holding
    no values yet (``zero3_load.load_model_into_partitions`` reads them next). DeepSpeed's broadcast
    of rank 0's values is skipped: it would make every parameter whole on every rank for a
    moment. The whole tensors, never written, are never resident."""
    import deepspeed
    from transformers.modeling_utils import set_zero3_state

    try:  # transformers >= 5.2x: RoPE's buffers keep their dtype under zero.Init
        from transformers.integrations.deepspeed import prevent_arange_dtype_change
    except ImportError:
        prevent_arange_dtype_change = contextlib.nullcontext

    class EmptyPartitions(deepspeed.zero.Init):
        def _zero_init_param(self, param: torch.nn.Parameter) -> None:
            self._convert_to_deepspeed_param(param)  # as DeepSpeed's, less the broadcast
            param.partition()

    with (
        prevent_arange_dtype_change(),
        EmptyPartitions(config_dict_or_path=deepspeed_config(run, info)),
        set_zero3_state(),  # tells transformers a zero.Init is open: it must not open its own
    ):
        yield


def zero3_local_piece(param: torch.nn.Parameter) -> tuple[torch.Tensor, int]:
    """This rank's piece of a ZeRO-3 parameter (1-D) and where it starts in the flattened
    parameter: rank r holds elements [r * n, (r + 1) * n), the last rank's padded past the end."""
    piece = param.ds_tensor
    return piece, piece.ds_numel * param.ds_zero_partition_rank


def uses_zero3(run: RunConfig, info: DistInfo) -> bool:
    return info.deepspeed and zero_stage_of(run) == 3


def zero3_transformers_config(run: RunConfig, info: DistInfo) -> Any:
    """Under ZeRO-3 with a model loaded from disk, transformers' DeepSpeed integration object
    (``HfDeepSpeedConfig``). A checkpoint that is not safetensors needs it: while it lives,
    ``from_pretrained`` builds the model under ``deepspeed.zero.Init``, rank 0 loads each
    module's weights into the partitions (gathering it), and ``resize_token_embeddings``
    gathers and re-partitions. Keep it alive as long as the model. (Safetensors checkpoints
    load through ``zero3_partitioning`` and ``zero3_local_piece`` without gathering.) None
    otherwise: a small model built from ``model.arch`` (tests, demo) is built whole, so that its
    random init equals one process's, and ``deepspeed.initialize`` partitions it."""
    if not uses_zero3(run, info) or run.model.name_or_path is None:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(deepspeed_config(run, info))


def _user_json(run: RunConfig) -> dict[str, Any]:
    path = run.distributed.deepspeed_config
    return read_deepspeed_json(path) if path else {}


def read_deepspeed_json(path: str | Path) -> dict[str, Any]:
    """The user's DeepSpeed JSON, checked against what the installed DeepSpeed reads: a key it
    does not know (a typo it would ignore, or stop on deep in ``deepspeed.initialize``), or a
    value its config models refuse, is one ``ConfigError`` naming the file, the line and the key
    path, with the key meant when one is close. Read once per file version."""
    stat = Path(path).stat()
    return copy.deepcopy(_checked_json(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _checked_json(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    field = "distributed.deepspeed_config"
    try:
        data = _parse(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"not valid JSON: {err.msg}", file=path, line=err.lineno,
                          column=err.colno, field=field) from None  # fmt: skip
    except _DuplicateKey as err:  # DeepSpeed refuses a file with one; a dict keeps the last
        line, column = _line_of(text, err.key, nth=2)
        raise ConfigError("given twice (DeepSpeed refuses duplicate keys)", file=path,
                          line=line, column=column, field=err.key) from None  # fmt: skip
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON object, got {type(data).__name__}", file=path,
                          field=field)  # fmt: skip
    problem = deepspeed_json_problem(data)
    if problem is not None:
        keys, reason = problem
        line, column = _line_of_path(text, keys)
        raise ConfigError(reason, file=path, line=line, column=column,
                          field=".".join(map(str, keys)) or field)  # fmt: skip
    return data


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _parse(text: str) -> Any:
    """The JSON as DeepSpeed reads its config file: hjson (// and # comments, trailing commas)
    when it is not plain JSON; a key given twice in one object raises ``_DuplicateKey``."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError:
        try:
            import hjson  # DeepSpeed's own dependency

            return hjson.loads(text, object_pairs_hook=_no_duplicates)
        except _DuplicateKey:
            raise
        except (ImportError, ValueError):  # not hjson either (HjsonDecodeError is a ValueError)
            pass
        raise  # the JSON parser's error: its line and message


def _line_of(text: str, key: object, nth: int = 1) -> tuple[int | None, int | None]:
    """Where ``"key"`` appears in the JSON text the ``nth`` time (1-based line and column)."""
    at = -1
    for _ in range(nth):
        at = text.find(json.dumps(str(key)), at + 1)
    if at < 0:
        return None, None
    return text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)


def _line_of_path(text: str, keys: tuple) -> tuple[int | None, int | None]:
    """Where the key path ``keys`` appears in the JSON text: each key looked for after the
    section before it (``flops_profiler.enabled``, not the first "enabled" of the file)."""
    at = 0
    for key in keys:
        found = text.find(json.dumps(str(key)), at)
        if found < 0:
            break
        at = found
    else:
        if keys:
            return text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
    return _line_of(text, keys[-1]) if keys else (None, None)


def zero_stage_of(run: RunConfig) -> int:
    stage = _user_json(run).get("zero_optimization", {}).get("stage", "auto")
    return run.distributed.zero_stage if stage == "auto" else int(stage)


def optim_with_deepspeed_section(run: RunConfig) -> OptimConfig:
    """``run.optim`` with the DeepSpeed JSON's optimizer section applied: an Adam/AdamW section's
    explicit params (lr, betas, eps, weight_decay) win over the config's, "auto" keeps ours. The
    JSON's reader refused anything else (``optimizer_problem``), naming its line."""
    section = _user_json(run).get("optimizer")
    if not section:
        return run.optim
    params = section.get("params", {})
    chosen = {OPTIM_PARAMS[k]: v for k, v in params.items() if k in OPTIM_PARAMS and v != "auto"}
    try:
        return dataclasses.replace(run.optim, **chosen)
    except ValueError as err:
        where = f"{run.distributed.deepspeed_config}: optimizer"
        raise ConfigError(str(err), field=where) from err


def offloaded_stage(stage: int) -> int:
    """The ZeRO stage an offloaded optimizer runs at: DeepSpeed 0.19.8's ZeRO-1 offloaded keeps
    a whole fp32 gradient per parameter beside the fp32 partition it offloads (4 bytes a
    parameter more, 27 GB at 7B: tests/test_zero_fp32_sums.py), where ZeRO-2 offloads the same
    partitioned optimizer without it; so an offloaded ZeRO-1 runs as ZeRO-2."""
    return 2 if stage == 1 else stage


def offloads_optimizer(config: dict[str, Any]) -> bool:
    """Whether a (filled) DeepSpeed config puts the optimizer on the CPU or NVMe."""
    device = config["zero_optimization"].get("offload_optimizer", {}).get("device", "none")
    return device in ("cpu", "nvme")


# ZeRO's bucket sizes from the model's hidden size D, as transformers' DeepSpeed integration
# fills its "auto" values: buckets of about one D x D matrix, parameters under 10 D kept whole.
BUCKETS_FROM_HIDDEN = {
    "reduce_bucket_size": lambda d: d * d,
    "stage3_prefetch_bucket_size": lambda d: int(0.9 * d * d),
    "stage3_param_persistence_threshold": lambda d: 10 * d,
}


# The batch keys our trainer owns, and what DeepSpeed is given for each from the world size:
# micro-batch 1 and one accumulation step (the trainer packs each step and sets the boundary)
BATCH_FROM_WORLD = {
    "train_micro_batch_size_per_gpu": lambda world: 1,
    "gradient_accumulation_steps": lambda world: 1,
    "train_batch_size": lambda world: world,
}
OWNED_BATCH_KEYS = tuple(BATCH_FROM_WORLD)


def overridden_batch_keys(run: RunConfig, info: DistInfo) -> list[str]:
    """The user's JSON's batch keys given a number we do not use, as ``key=value`` (for the
    start-up warning: the step's size comes from ``train.samples_per_step`` and packing)."""
    raw, ours = _user_json(run), deepspeed_config_batch(info)
    unused = [k for k in OWNED_BATCH_KEYS if raw.get(k, "auto") not in ("auto", ours[k])]
    return [f"{k}={raw[k]}" for k in unused]


def deepspeed_config_batch(info: DistInfo) -> dict[str, int]:
    return {key: size(info.world_size) for key, size in BATCH_FROM_WORLD.items()}


def deepspeed_config(
    run: RunConfig, info: DistInfo, hidden_size: int | None = None
) -> dict[str, Any]:
    """The DeepSpeed config dict: the user's JSON (if any) with its "auto" values filled.

    Our trainer owns packing, accumulation, AdamW and the schedule: DeepSpeed sees micro-batch 1,
    one accumulation step (we set the boundary by hand), and no optimizer or scheduler section
    (the optimizer section's values reach AdamW through ``optim_with_deepspeed_section``).
    ZeRO-2 overlaps its gradient reduction with the backward (``overlap_comm``) unless the JSON
    says otherwise. With ``hidden_size`` (the engine's model), ZeRO's bucket sizes given as
    "auto" or left out (the stage-3 ones at stage 3) are sized from it (``BUCKETS_FROM_HIDDEN``).
    bf16 weights sum their gradients in fp32 unless told otherwise (``_fp32_sums``).
    """
    raw = _user_json(run)
    dtype = resolve_dtype(run.model.dtype, info.device)
    fill: dict[str, Any] = {
        **deepspeed_config_batch(info),
        "gradient_clipping": run.optim.grad_clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    cfg = {k: v for k, v in raw.items() if k not in ("optimizer", "scheduler")}
    for key, value in fill.items():
        if cfg.get(key, "auto") == "auto" or key in OWNED_BATCH_KEYS:
            cfg[key] = value
    zero = _zero_section(run, dict(cfg.get("zero_optimization", {})), hidden_size)
    cfg["zero_optimization"] = zero
    bf16 = dict(cfg.get("bf16", {}))
    fp16 = dict(cfg.get("fp16", {}))
    if bf16.get("enabled", "auto") == "auto":
        bf16["enabled"] = dtype == torch.bfloat16
    if fp16.get("enabled", "auto") == "auto":
        fp16["enabled"] = dtype == torch.float16
    # A NaN/inf gradient must skip the update in bf16 too (fp16 does through its loss scaler).
    bf16.setdefault("check_grad_overflow", run.train.skip_nonfinite)
    cfg["bf16"], cfg["fp16"] = bf16, fp16
    fp32_accum = run.distributed.fp32_grad_accum
    if fp32_accum == "auto":
        fp32_accum = zero["stage"] >= 1
    if fp32_accum and bf16["enabled"]:
        if zero["stage"] == 0:
            raise ConfigError(
                "needs ZeRO stage 1-3 under DeepSpeed (its stage 0 sums in the weights' dtype)",
                field="distributed.fp32_grad_accum",
            )
        _fp32_sums(cfg, bf16, stage=zero["stage"], offload=offloads_optimizer(cfg))
    _drop_unfilled_dtype_autos(cfg)
    cfg["zero_allow_untested_optimizer"] = True
    leftover = [k for k, v in cfg.items() if v == "auto"]
    if leftover:
        raise ValueError(f"distributed.deepspeed_config: cannot fill 'auto' for {leftover}")
    return cfg


def _drop_unfilled_dtype_autos(cfg: dict[str, Any]) -> None:
    """The dtype keys left "auto" (no fp32 sums to fill them with) take DeepSpeed's default."""
    if cfg.get("communication_data_type") == "auto":
        del cfg["communication_data_type"]
    data_types = cfg.get("data_types")
    if isinstance(data_types, dict) and data_types.get("grad_accum_dtype") == "auto":
        cfg["data_types"] = {k: v for k, v in data_types.items() if k != "grad_accum_dtype"}


def _zero_section(run: RunConfig, zero: dict[str, Any], hidden_size: int | None) -> dict[str, Any]:
    """The user's ``zero_optimization`` with its stage, offload and bucket sizes filled."""
    if zero.get("stage", "auto") == "auto":
        zero["stage"] = run.distributed.zero_stage
    if run.distributed.offload_optimizer is True and "offload_optimizer" not in zero:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offloads_optimizer({"zero_optimization": zero}):
        zero["stage"] = offloaded_stage(zero["stage"])
    for key, size in BUCKETS_FROM_HIDDEN.items():
        stage3_key, stage3 = key.startswith("stage3_"), zero["stage"] == 3
        # DeepSpeed's own reduce bucket (5e8 elements) is 1 GB of bf16 twice over at ZeRO-2
        # (overlap_comm), and 2 GB of fp32 at ZeRO-1 offloaded (tests/test_zero_fp32_sums.py)
        reduce = key == "reduce_bucket_size" and zero["stage"] >= 1
        wanted = zero.get(key) == "auto" or (key not in zero and (stage3 or reduce))
        if hidden_size and wanted and (stage3 or not stage3_key):
            zero[key] = size(hidden_size)
    for key, value in list(zero.items()):
        if value == "auto":  # no model to size it from (set-up before it is built): DeepSpeed's
            del zero[key]
    if zero["stage"] == 2:
        zero.setdefault("overlap_comm", True)
    return zero


def _fp32_sums(cfg: dict[str, Any], bf16: dict[str, Any], stage: int, offload: bool) -> None:
    """bf16 weights, fp32 gradient sums (tests/test_zero_fp32_sums.py measures each stage).

    ``grad_accum_dtype`` fp32: ZeRO-1 runs DeepSpeed's BF16 optimizer (a full fp32 gradient per
    rank); ZeRO-2 adds each micro-batch's reduced gradient into an fp32 partition
    (stage_1_and_2.py, the "compact grad partition buffer"), ZeRO-3 its reduce-scattered one
    (stage3.py ``partition_grads``), so both sum micro-batches in fp32 over 1/ranks. Without it
    ZeRO-2/3 sum in bf16. ``communication_data_type`` fp32: the cross-rank sum, which DeepSpeed
    otherwise runs in bf16 at every stage (ZeRO-1 too: its fp32 sums are cast to bf16 for the
    all-reduce); twice the bytes, overlapped with the backward at ZeRO-2/3."""
    data_types = dict(cfg.get("data_types", {}))
    if data_types.get("grad_accum_dtype", "auto") == "auto":  # the JSON's own wins
        data_types["grad_accum_dtype"] = "fp32"
    cfg["data_types"] = data_types
    if cfg.get("communication_data_type", "auto") == "auto":
        cfg["communication_data_type"] = "fp32"
    if stage == 1 and not offload and data_types["grad_accum_dtype"] == "fp32":
        # each bf16 gradient added to the fp32 sums as backward makes it, then freed: 2
        # bytes a parameter less at the peak (activation_checkpointing.resident_bytes)
        bf16.setdefault("immediate_grad_update", True)


# ---------------------------------------------------------------------------------------------
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
