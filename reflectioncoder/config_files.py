"""Reading a config file for ``config_loader``: its text (UTF-8, a byte-order mark allowed), YAML
or TOML (``*.toml``) parsed, and where each ``section.field`` value stands in it (``Origins``:
file, line, column), so that an error names the place the user wrote it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from reflectioncoder.errors import ConfigError, UsageError, not_a_file_state

Origins = dict[str, tuple[str, int | None, int | None]]  # "optim.lr" -> (file, line, column)


def _yaml_origins(text: str, file: str) -> Origins:
    """Where each ``section.field`` value is in a YAML text: (file, line, column), 1-based."""
    origins: Origins = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{prefix}.{key.value}" if prefix else str(key.value)
                if name + "@key" in origins:  # PyYAML keeps the last silently: a lost section
                    line = origins[name + "@key"][1]
                    raise ConfigError(
                        f"given twice (first at line {line}); merge the two into one",
                        file=file,
                        line=key.start_mark.line + 1,
                        column=key.start_mark.column + 1,
                        field=name,
                    )
                mark = value.start_mark
                origins[name] = (file, mark.line + 1, mark.column + 1)
                at_key = key.start_mark  # where an unknown field is pointed at
                origins[name + "@key"] = (file, at_key.line + 1, at_key.column + 1)
                walk(value, name)

    walk(yaml.compose(text), "")
    return origins


_TOML_TABLE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_TOML_KEY = re.compile(r"^(\s*)([A-Za-z0-9_\-.\s\"']+?)\s*=\s*")


def _toml_name(dotted: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in dotted.split("."))


def _toml_origins(text: str, file: str) -> Origins:
    """Where each ``section.field`` value is in a TOML text, for the usual layout (``[section]``
    headers, one ``key = value`` a line); keys it cannot place are named without a line."""
    origins: Origins = {}
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TOML_TABLE.match(line)
        if header:
            table = _toml_name(header.group(1))
            origins.setdefault(table, (file, number, 1))
            continue
        key = _TOML_KEY.match(line)
        if key:
            name = f"{table}.{_toml_name(key.group(2))}".lstrip(".")
            origins[name] = (file, number, key.end() + 1)
            origins[name + "@key"] = (file, number, len(key.group(1)) + 1)
    return origins


def _toml_module(path: Path) -> Any:
    """tomllib (Python >= 3.11), else the tomli package it came from (setup.py allows 3.10)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UsageError(
                "a TOML config needs Python >= 3.11 or `pip install tomli`; or write it as YAML",
                file=path,
                field="--config",
            ) from None
    return tomllib


def _read_toml(text: str, path: Path, origins: Origins) -> Any:
    tomllib = _toml_module(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(err))
        reason = str(err).split(" (at ")[0]
        raise ConfigError(
            f"invalid TOML: {reason}",
            file=path,
            line=int(where.group(1)) if where else None,
            column=int(where.group(2)) if where else None,
        ) from None
    origins.update(_toml_origins(text, str(path)))
    return data


def _yaml_hint(reason: str) -> str:
    """What PyYAML's words mean for a config file: a tab an editor put in, a line indented
    unlike its section's other fields."""
    if "'\\t'" in reason:
        return " (YAML indents with spaces, not tabs)"
    if "expected <block end>" in reason:
        return " (this line is indented unlike the fields above it)"
    return ""


def read_config_file(path: Path, origins: Origins) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"config file {not_a_file_state(path)}", file=path, field="--config")
    raw = path.read_bytes()
    try:  # utf-8-sig: a byte-order mark (Windows editors write one) is not TOML's first key
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ConfigError(f"not UTF-8 (byte {column})", file=path, line=line) from None
    if path.suffix.lower() == ".toml":
        return _read_toml(text, path, origins)
    try:
        data = yaml.safe_load(text) or {}
        origins.update(_yaml_origins(text, str(path)))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        reason = getattr(err, "problem", None) or str(err)
        raise ConfigError(
            f"invalid YAML: {reason}{_yaml_hint(reason)}",
            file=path,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping (section: fields) at the top level", file=path)
    return data
