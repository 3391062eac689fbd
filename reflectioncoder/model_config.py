"""A model's folder and its Hugging Face config as the run trains it: the folder found locally
(``resolve_model_path``, never downloaded), its config.json read and the run's
``model.config_overrides`` applied (``read_model_config``, ``apply_config_overrides``) before
the model is built from it. A released checkpoint (StarCoder2's ``"attention_dropout": 0.1``)
trains without the user editing the files they downloaded; an override naming a field the
config lacks, or a value of another type, is refused in one line naming it."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reflectioncoder.errors import ConfigError, did_you_mean

FIELD = "model.config_overrides"


def resolve_model_path(
    name: str | Path, field: str = "model.name_or_path", need: str = "model"
) -> Path:
    """A local model (or tokenizer: ``need``) folder: ``name`` itself, or a hub name's snapshot
    already in the local Hugging Face cache. Never downloads: training machines are often
    offline, and a 34B download inside a 64-rank launch would be repeated by every node."""
    from reflectioncoder.errors import UserError, require_model_folder

    path = Path(name)
    if not path.exists() and _HUB_ID.fullmatch(str(name)):
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(str(name), local_files_only=True))
        except Exception as err:  # not in the cache (or no such repo): say what to do
            raise UserError(
                f"{name}: a hub name not in the local Hugging Face cache (nor a folder here); "
                f"download it first (e.g. `huggingface-cli download {name} --local-dir "
                f"/models/{path.name}`) and set {field} to that folder",
                field=field,
            ) from err
    return require_model_folder(path, field, need)


# A hub repo id, ``org/name``: what is not one (``./x``, ``../runs/x``, ``~/m``, ``a/b/c``) is a
# path, and a missing path is "folder not found", not a download to suggest.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def read_model_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Any:
    """The ``PretrainedConfig`` of the model folder ``path`` with ``overrides`` applied (none
    that resizes its weights: ``WEIGHT_SHAPES``)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)  # a bad one: one line
    _refuse_new_shapes(config, overrides or {}, FIELD)
    apply_config_overrides(config, overrides or {})
    return config


# Config fields that size the weights (as the config names them, or its ``attribute_map``'s
# standard name: GPT-2's n_embd is hidden_size): the folder's weights are of its config.json's.
# GPT-2's n_positions sizes its learned position table (a rotary model's limit sizes nothing).
WEIGHT_SHAPES = (
    "hidden_size", "intermediate_size", "n_inner", "n_positions", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "num_local_experts",
    "num_experts", "moe_intermediate_size", "n_routed_experts", "kv_lora_rank", "q_lora_rank",
)  # fmt: skip


def _refuse_new_shapes(config: Any, overrides: Mapping[str, Any], where: str) -> None:
    """A ConfigError naming the first override that resizes the weights loaded from the folder:
    transformers then fails with "an internal error" (a size mismatch) or, for the layer count,
    loads some layers and draws the others at random."""
    standard = {real: name for name, real in getattr(config, "attribute_map", {}).items()}
    for key, value in overrides.items():
        current = getattr(config, key, None)
        if _is_config(current) and isinstance(value, Mapping):
            _refuse_new_shapes(current, value, f"{where}.{key}")
        elif {key, standard.get(key)} & set(WEIGHT_SHAPES) and value != current:
            raise ConfigError(
                f"{type(config).__name__}.{key} is {current!r} in the model's config.json, the "
                f"size of its weights; an override cannot resize them, got {value!r} (a model "
                "of other sizes is built from scratch: model.arch)",
                field=f"{where}.{key}",
            )


def check_config_overrides(config: Any, overrides: Mapping[str, Any], where: str = FIELD) -> None:
    """The ConfigError ``apply_config_overrides`` would raise for ``overrides`` on ``config``,
    without setting anything (a model.arch run's LlamaConfig, checked when the config is read)."""
    for key, value in overrides.items():
        _check_override(config, key, value, where)


def apply_config_overrides(config: Any, overrides: Mapping[str, Any], where: str = FIELD) -> None:
    """Set each of ``overrides`` on ``config`` (in place): a field the config has, to a value of
    its type (a mapping for a nested config such as a composite's ``text_config``, or for a
    dict field such as ``rope_parameters``: the keys it names, the others kept). Raises a
    ConfigError naming ``where.field`` otherwise, before anything is set."""
    check_config_overrides(config, overrides, where)
    for key, value in overrides.items():
        current = getattr(config, key, None)
        if _is_config(current) and isinstance(value, Mapping):
            apply_config_overrides(current, value, f"{where}.{key}")
            continue
        if isinstance(current, dict) and isinstance(value, Mapping):
            value = {**current, **value}  # the keys named: rope_parameters.factor keeps rope_type
        if _fits(value, int) and _float_only(config, key, current):
            value = float(value)  # YAML's 1 for a field declared float
        try:
            setattr(config, key, value)
        except (TypeError, ValueError) as err:  # transformers' own check of the field
            reason = str(err).strip().splitlines()[-1].strip()
            raise ConfigError(reason, field=f"{where}.{key}") from None


def _check_override(config: Any, key: str, value: Any, where: str) -> None:
    name = f"{where}.{key}"
    known = _field_names(config)
    if key not in known:
        # config.json's rope_theta is rope_parameters' now (transformers 5 moved it there)
        inside = [f for f in known if isinstance(getattr(config, f, None), dict)
                  and key in getattr(config, f)]  # fmt: skip
        hint = f" (did you mean {where}.{inside[0]}.{key}?)" if inside else ""
        raise ConfigError(
            f"{type(config).__name__} has no field {key!r}"
            f"{hint or did_you_mean(key, known, where)} "
            "(config_overrides set fields of the model's config.json)",
            field=name,
        )
    current = getattr(config, key, None)
    if _is_config(current):
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping of {type(current).__name__}'s fields, "
                              f"got {value!r}", field=name)  # fmt: skip
        for sub_key, sub_value in value.items():
            _check_override(current, sub_key, sub_value, name)
        return
    hint = _declared_type(config, key)
    expected = hint if hint is not None else _type_of(current)
    if expected is not None and not _fits(value, expected):
        raise ConfigError(
            f"expected {_type_name(expected)} ({type(config).__name__}.{key} is "
            f"{current!r}), got {value!r}",
            field=name,
        )


def _field_names(config: Any) -> list[str]:
    names = set(config.to_dict())
    if dataclasses.is_dataclass(config):
        names |= {f.name for f in dataclasses.fields(config)}
    return sorted(n for n in names if not n.startswith("_"))


def _is_config(value: Any) -> bool:
    return hasattr(value, "to_dict") and hasattr(value, "model_type")


def _declared_type(config: Any, key: str) -> Any:
    """The field's annotation in the config class (transformers 5.2x declares them), when it
    is a type this module can check; None otherwise."""
    if not dataclasses.is_dataclass(config):
        return None
    hint = next((f.type for f in dataclasses.fields(config) if f.name == key), None)
    return None if isinstance(hint, str) else hint


def _float_only(config: Any, key: str, current: Any) -> bool:
    """Whether the field takes a float but not an int (transformers refuses 1 for 1.0)."""
    hint = _declared_type(config, key)
    if hint is None:
        return isinstance(current, float)
    members = typing.get_args(hint) if typing.get_origin(hint) else (hint,)
    return float in members and int not in members


def _type_of(current: Any) -> Any:
    """The type a value must have to replace ``current`` (None: any, ``current`` is unset)."""
    if current is None:
        return None
    if isinstance(current, bool | int | str | list | dict):
        return type(current)
    return float | int if isinstance(current, float) else None


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as YAML reads it) is a ``hint``; types not known here pass (transformers
    checks them as they are set)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, list | tuple)
    if origin is dict or hint is dict or typing.is_typeddict(hint):
        return isinstance(value, Mapping)
    return True


def _type_name(hint: Any) -> str:
    """``float | int`` for a hint; a class by its name."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(origin or hint, "__name__", str(hint))
