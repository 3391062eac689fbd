"""A ``RunConfig`` from a preset and/or a YAML or TOML file, then ``section.field=value``
overrides.

Sources, later ones win: a preset (``config_presets``: tiny | paper | smollm2) or a YAML file
(``*.toml``: TOML; either may name its preset with a top-level ``preset`` key), then command-line
overrides
(values parsed as YAML: ``1e-4``, ``true``, ``[a, b]``). Each value is checked against its
field's type, by name, before the dataclass checks its range; errors are ``ConfigError``s that
name the field and where its value came from (file:line:column, or the ``--set`` argument).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from reflectioncoder.config import RunConfig
from reflectioncoder.config_files import Origins, read_config_file
from reflectioncoder.config_presets import preset
from reflectioncoder.errors import ConfigError, UsageError, did_you_mean


def _from_dict(cls: type, data: Any, where: str, origins: Origins | None = None) -> Any:
    origins = origins if origins is not None else {}
    if not isinstance(data, dict):
        raise _config_error(where, f"expected a mapping, got {type(data).__name__}", origins)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            name = f"{where}.{key}" if where else key
            reason = f"unknown field{_did_you_mean(key, names, where)}; known: "
            raise _config_error(name, reason + ", ".join(sorted(names)), origins, at_key=True)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        sub = _dataclass_of(hints[key])
        if sub is not None and value is not None:
            kwargs[key] = _from_dict(sub, value, name, origins)
        else:
            kwargs[key] = _coerce(value, hints[key], name, origins)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field missing
        raise _config_error(where or "config", str(err), origins) from err
    except ValueError as err:
        # The data room's messages name the field only: add the section.
        msg = str(err)
        if where and not msg.startswith(where):
            msg = f"{where}.{msg}"
        field_name, _, reason = msg.partition(": ")
        unknown = reason.startswith("unknown field")  # pointed at its key, as _from_dict's
        raise _config_error(field_name, reason or msg, origins, at_key=unknown) from err


def _did_you_mean(key: str, names: set[str], where: str) -> str:
    """`` (did you mean train.max_steps?)`` for a misspelt field, or one put in another section
    (``train.lr``: ``optim.lr``); empty when nothing is close."""
    close = did_you_mean(key, names, where)
    if close:
        return close
    if where.count(".") == 0 and where:  # a field of a section: is it another section's?
        hints = typing.get_type_hints(RunConfig)
        for section in dataclasses.fields(RunConfig):
            sub = _dataclass_of(hints[section.name])
            if sub is not None and key in {f.name for f in dataclasses.fields(sub)}:
                return f" (did you mean {section.name}.{key}?)"
    return ""


def _config_error(name: str, reason: str, origins: Origins, at_key: bool = False) -> ConfigError:
    """A ConfigError for field ``name``, located at the value's origin (or its key's) if known."""
    if at_key and name + "@key" in origins:
        file, line, column = origins[name + "@key"]
        return ConfigError(reason, file=file, line=line, column=column, field=name)
    key = name.split("[")[0]  # a list item is located by its list
    near = [v for k, v in origins.items() if k == key or k.startswith(key + ".")]
    if not near:  # a preset's value refused beside the user's (two fields that exclude each
        # other): the user's field, named in the reason, is the one to point at and to fix
        given = [k for k in re.findall(r"\b\w+\.\w+\b", reason) if k in origins]
        if given:
            name, near = given[-1], [origins[given[-1]]]
    while not near and "." in key:  # model.arch.x of --set model.arch={x: 1}: model.arch's
        key = key.rpartition(".")[0]
        near = [origins[key]] if key in origins else []
    file, line, column = near[0] if near else (None, None, None)
    return ConfigError(reason, file=file, line=line, column=column, field=name or "config")


# The fields that name files or folders (``~`` is the user's home in them).
PATH_FIELDS = frozenset(
    {
        "data.files",
        "data.validation_files",
        "data.cache_dir",
        "model.name_or_path",
        "model.tokenizer",
        "checkpoint.out_dir",
        "distributed.deepspeed_config",
    }
)
SECTIONS = frozenset(f.name for f in dataclasses.fields(RunConfig))
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce(value: Any, hint: Any, name: str, origins: Origins) -> Any:
    """``value`` as the type ``hint`` says (YAML's ``1e-3`` string is a float), or a
    ConfigError naming the field, the value and what was expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], name, origins)
        if all(a in _EXPECTED for a in inner) and type(value) not in inner:  # 1 is no `true`
            expected = " or ".join(_EXPECTED[a] for a in inner)
            raise _config_error(name, f"expected {expected}, got {value!r}", origins)
        return value
    if hint is Any or (value is None and hint is Any):
        return value
    if origin in (list, tuple):
        any_length = origin is list or (bool(args) and args[-1] is Ellipsis)
        items = [value] if isinstance(value, str) and any_length else value  # one name: a list
        if not isinstance(items, list | tuple):
            raise _config_error(name, f"expected a list, got {value!r}", origins)
        if origin is tuple and args and args[-1] is not Ellipsis and len(items) != len(args):
            raise _config_error(name, f"expected {len(args)} values, got {value!r}", origins)
        item_hints = (
            [args[0]] * len(items)
            if args and (origin is list or args[-1] is Ellipsis)
            else list(args)
        )
        out = [
            _coerce(v, h, f"{name}[{i}]", origins) if h is not Any else v
            for i, (v, h) in enumerate(zip(items, item_hints or [Any] * len(items), strict=True))
        ]
        return out if origin is list else tuple(out)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _config_error(name, f"expected a mapping, got {value!r}", origins)
        return value
    if hint in _EXPECTED:
        coerced = _scalar(value, hint)
        if coerced is None:
            got = "nothing (null)" if value is None else repr(value)
            raise _config_error(name, f"expected {_EXPECTED[hint]}, got {got}", origins)
        if hint is float and not math.isfinite(coerced):  # YAML's .inf, --set x=inf
            raise _config_error(name, f"expected a finite number, got {value!r}", origins)
        if hint is int and not -(2**63) <= coerced < 2**63:  # torch and numpy take int64
            raise _config_error(name, f"out of range (a 64-bit integer), got {value!r}", origins)
        if hint is str and not coerced.strip():  # a path "" is the current folder
            raise _config_error(name, f"expected a non-empty string, got {value!r}", origins)
        if hint is str and name.partition("[")[0] in PATH_FIELDS:
            return os.path.expanduser(coerced)  # ~/data.jsonl: no shell expands it in YAML
        return coerced
    return value


def _scalar(value: Any, hint: type) -> Any:
    """``value`` as a bool/int/float/str, or None when it is not one."""
    if hint is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None  # true is not 1 here: a bool in a number field is a mistake
    if hint is str:
        return str(value) if isinstance(value, str | int | float) else None
    if isinstance(value, str):  # YAML's 1e-3 or 1e2 (a string to PyYAML), as --set reads it
        text = value.strip()
        try:
            value = float(text) if hint is float or _SCIENTIFIC.fullmatch(text) else int(text)
        except ValueError:
            return None
    if hint is float and isinstance(value, int | float):
        return float(value)
    if hint is int and isinstance(value, int):
        return value
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass inside a type hint (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'optim.lr=1e-4'`` -> (["optim", "lr"], 0.0001). The value is parsed as YAML (plus
    1e-4 as a float); the field's type then decides (a float field also takes a YAML file's
    ``lr: 1e-3``, which PyYAML reads as a string)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {text!r}: expected section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise UsageError(f"--set {text!r}: the value is not valid YAML ({err.problem})") from None
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 wants 1.0e-4; 1e-4 is what people write
    return key.strip().split("."), value


_SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def apply_overrides(
    data: dict[str, Any], overrides: list[str], origins: Origins | None = None
) -> dict[str, Any]:
    """Apply ``section.field=value`` overrides to a nested config dict (returns a new dict)."""
    out = _deep_merge({}, data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {text!r}: {part} is not a section")
        node[path[-1]] = value
        if origins is not None:
            origins[".".join(path)] = (f"--set {text}", None, None)
    return out


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: str | None = None
) -> RunConfig:
    """Build a ``RunConfig`` from a preset and/or a YAML (or ``*.toml``) file, then ``overrides``.

    A file may name its preset with a top-level ``preset: tiny`` key; its other keys update
    that preset. ``base`` names a preset when no file is given. Raises ``ConfigError`` (a
    ``ValueError``) naming the field, the value and where it came from.
    """
    return _load(path, overrides, base)[0]


def load_launch_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: str | None = None,
    origins: Origins | None = None,
) -> RunConfig:
    """``load_config`` for a training launch (``reflectioncoder train``): also refuses what the
    user set that the launch would drop silently (a ZeRO stage under backend ``none``). Code that
    only reads a config (tests, tools building an engine's layout) uses ``load_config``.
    ``origins``, when given, is filled with where each field came from (``errors_located``)."""
    cfg, found = _load(path, overrides, base)
    _check_zero_stage_applies(cfg, found)
    if origins is not None:
        origins.update(found)
    return cfg


@contextlib.contextmanager
def errors_located(origins: Origins) -> Iterator[None]:
    """A field refused after loading (a kernel that does not run here, eval_every without
    held-out data) is named where the user set it, file:line:column, as the loader's own."""
    try:
        yield
    except ConfigError as err:  # a value refused (a run folder's state, a tracker's: not)
        if err.file is not None or not err.field:
            raise
        raise _config_error(err.field, err.message, origins) from err


def _load(
    path: str | Path | None, overrides: list[str] | None, base: str | None
) -> tuple[RunConfig, Origins]:
    data: dict[str, Any] = {}
    origins: Origins = {}
    if path is not None:
        data = read_config_file(Path(path), origins)
        base = data.pop("preset", base)
        # a section whose fields are all commented out reads as null: it changes nothing
        data = {k: v for k, v in data.items() if not (v is None and k in SECTIONS)}
    if base is not None:
        try:
            data = _deep_merge(preset(base), data)
        except UsageError as err:  # an unknown name: point at the file's `preset:` line
            raise _config_error("preset", err.message, origins) from None
    data = apply_overrides(data, overrides or [], origins)
    if "model" not in data:
        raise ConfigError("missing section (give a preset or a model section)", field="model")
    return _from_dict(RunConfig, data, "", origins), origins


def _check_zero_stage_applies(cfg: RunConfig, origins: Origins) -> None:
    """A ZeRO stage the user gave while the backend (a preset's, or their file's) is ``none``
    would be dropped silently: every rank holding the whole state, not the sharding asked for.
    A ``--set distributed.backend=none`` is the user's last word and overrides their file."""
    dist = cfg.distributed
    given = "distributed.zero_stage" in origins
    backend_by_set = origins.get("distributed.backend", ("",))[0].startswith("--set ")
    if dist.backend == "none" and dist.zero_stage != 0 and given and not backend_by_set:
        raise _config_error(
            "distributed.zero_stage",
            f"{dist.zero_stage} does not apply to distributed.backend none (every rank holds "
            "the whole state): add --set distributed.backend=deepspeed, or remove it",
            origins,
        )
