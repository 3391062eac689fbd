"""Bad config values, a table generated from the dataclasses (every field of every section, no
hand list): a wrong type, an out-of-range value, a near-miss key, a wrong-type section and a
YAML syntax error are each refused in one line naming the file, the line and the field, through
the loader (fast, in-process) and the ``train`` command (one line on stderr, exit 2, an existing
run folder untouched)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_cli_errors import _one_line_error, _snapshot

from reflectioncoder.config import RunConfig
from reflectioncoder.config_loader import load_config
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl

SECTIONS = {f.name: typing.get_type_hints(RunConfig)[f.name] for f in dataclasses.fields(RunConfig)}
FIELDS = [
    (section, f.name, typing.get_type_hints(cls)[f.name])
    for section, cls in SECTIONS.items()
    for f in dataclasses.fields(cls)
]
SCALAR_BAD = {  # type -> (wrong types, out-of-range values) every field of that type refuses
    bool: (["maybe", 2], []),
    int: (["many", [1]], [-1, 2**64]),  # no count, size or seed below 0 means anything
    float: (["fast", {"a": 1}], [-1.0]),  # no rate, ratio or budget below 0 either
    str: ([[1, 2], {"a": 1}], [""]),  # "" is no path, name or choice
}


def _bad_values(hint: Any) -> list[tuple[str, Any]]:
    """(kind, value) pairs a field of type ``hint`` must refuse."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _bad_values(inner[0])
        assert set(inner) == {bool, str}, hint  # true | false | a named choice
        return [("wrong type", 1), ("wrong type", [True]), ("out of range", "bogus")]
    if hint in SCALAR_BAD:
        wrong, out = SCALAR_BAD[hint]
        return [("wrong type", v) for v in wrong] + [("out of range", v) for v in out]
    if origin in (list, tuple) and (origin is list or args[-1] is Ellipsis):
        items = _bad_values(args[0])
        return [("wrong type", {"a": 1})] + [(kind, [value]) for kind, value in items]
    if origin is tuple:  # a fixed number of items
        wrong = [0.5] * (len(args) - 1)  # one value short
        return [("wrong type", "fast"), ("wrong type", wrong), ("out of range", [-1] * len(args))]
    if origin is dict or hint is dict:
        return [("wrong type", [1]), ("wrong type", "x"), ("out of range", {"zzz": 1})]
    raise AssertionError(f"no bad values for {hint}: add its type to the table")


CASES = [
    pytest.param(section, name, kind, value, id=f"{section}.{name}-{kind}-{value!r}")
    for section, name, hint in FIELDS
    for kind, value in _bad_values(hint)
]


def _flow(value: Any) -> str:
    """``value`` as YAML on one line (as a user writes it after ``field:`` or ``--set f=``)."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def _refusal(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ValueError) as err:
        load_config(path, overrides)
    line = str(err.value)
    assert "\n" not in line, line
    return line


def test_the_table_covers_every_field_and_both_kinds():
    assert len(FIELDS) >= 60
    named = {(c.values[0], c.values[1]) for c in CASES}
    assert named == {(s, n) for s, n, _ in FIELDS}
    for section, name, hint in FIELDS:
        kinds = {k for k, _ in _bad_values(hint)}
        assert "wrong type" in kinds, (section, name)
        assert hint is bool or "out of range" in kinds, (section, name)


@pytest.mark.parametrize("section, name, kind, value", CASES)
def test_a_bad_value_in_a_file_names_file_line_and_field(section, name, kind, value, tmp_path):
    path = _write(tmp_path, f"preset: tiny\n\n{section}:\n  {name}: {_flow(value)}\n")
    line = _refusal(path)
    assert line.startswith(f"{path}:4:"), line
    assert f"{section}.{name}" in line, line


@pytest.mark.parametrize("section, name, kind, value", CASES)
def test_a_bad_value_set_on_the_command_line_names_it(section, name, kind, value, tmp_path):
    arg = f"{section}.{name}={_flow(value)}"
    line = _refusal(_write(tmp_path, "preset: tiny\n"), [arg])
    assert line.startswith(f"--set {arg}: "), line
    assert f"{section}.{name}" in line, line


@pytest.mark.parametrize("section, name", [(s, n) for s, n, _ in FIELDS])
def test_a_near_miss_key_is_named_with_the_field_meant(section, name, tmp_path):
    typo = name + name[-1]  # optim.lrr, train.seedd
    path = _write(tmp_path, f"preset: tiny\n{section}:\n  {typo}: 1\n")
    line = _refusal(path)
    assert line.startswith(f"{path}:3:3: {section}.{typo}: unknown field"), line
    assert f"(did you mean {section}.{name}?)" in line, line


@pytest.mark.parametrize("section", sorted(SECTIONS))
@pytest.mark.parametrize("value", ["5", "[1, 2]", "fast"])
def test_a_section_that_is_not_a_mapping_is_named(section, value, tmp_path):
    path = _write(tmp_path, f"preset: tiny\n{section}: {value}\n")
    line = _refusal(path)
    assert line.startswith(f"{path}:2:"), line
    assert f"{section}: expected a mapping" in line, line


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_a_misspelt_section_is_named_with_the_one_meant(section, tmp_path):
    path = _write(tmp_path, f"preset: tiny\n{section}s:\n  x: 1\n")
    line = _refusal(path)
    assert line.startswith(f"{path}:2:1: {section}s: unknown field (did you mean {section}?)")


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_a_section_with_every_field_commented_out_changes_nothing(section, tmp_path):
    """``optim:`` with its lines commented out is YAML's null: the preset's section stays (it
    was None, and the run failed later with an AttributeError)."""
    path = _write(tmp_path, f"preset: tiny\n{section}:\n  # lr: 1e-4\n")
    assert load_config(path) == load_config(base="tiny")


@pytest.mark.parametrize(
    "text, line",
    [
        ("preset: tiny\noptim:\n  lr: [1e-4\n", 4),  # unclosed list
        ("preset: tiny\noptim:\n\tlr: 1e-4\n", 3),  # a tab
        ("preset: tiny\noptim:\n  lr: 1e-4\n warmup_ratio: 0.1\n", 4),  # bad indent
        ("preset: tiny\ntrain: {max_steps: 3\n", 3),  # unclosed mapping
    ],
)
def test_a_yaml_syntax_error_names_file_and_line(text, line, tmp_path):
    path = _write(tmp_path, text)
    assert _refusal(path).startswith(f"{path}:{line}:")


def test_a_preset_value_beside_the_users_names_the_users_field(tmp_path):
    """The tiny preset's samples_per_step beside the file's tokens_per_step: the line named
    the preset's field, with no file or line."""
    path = _write(tmp_path, "preset: tiny\ntrain:\n  tokens_per_step: 4096\n")
    assert _refusal(path).startswith(f"{path}:3:20: train.tokens_per_step: give exactly one")


# -- the train command: one line on stderr, exit 2, the run folder as it was ----------------------

COMMAND_CASES = {  # the file's text after `checkpoint: {out_dir: RUN}`
    "wrong type": ("train:\n  max_steps: many\n", "train.max_steps"),
    "out of range": ("optim:\n  lr: -1\n", "optim.lr"),
    "near-miss key": ("optim:\n  lrr: 1e-4\n", "did you mean optim.lr?"),
    "section not a mapping": ("optim: 5\n", "optim: expected a mapping"),
    "yaml syntax": ("optim:\n  lr: [1e-4\n", "invalid YAML"),
}


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A run folder that holds a run's files."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step-2").mkdir(parents=True)
    (run / "checkpoints" / "step-2" / "state.pt").write_bytes(b"weights")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    load_config(base="tiny").save(run / "config.yaml")
    return run


@pytest.mark.parametrize("case", sorted(COMMAND_CASES))
def test_train_refuses_in_one_line_and_keeps_the_run_folder(case, run_folder, tmp_path, capfd):
    text, word = COMMAND_CASES[case]
    config = _write(tmp_path, f"preset: tiny\ncheckpoint:\n  out_dir: {run_folder}\n{text}")
    for flags in ([], ["--resume"], ["--overwrite"]):
        line = _one_line_error(capfd, ["train", "--config", str(config), *flags], 2, run_folder,
                               str(config), word)  # fmt: skip
        assert line.startswith(f"reflectioncoder train: {config}:"), line


@pytest.mark.slow
def test_train_refuses_in_one_line_as_a_process(run_folder, tmp_path):
    """The installed command as a user runs it: stderr is the one line, nothing else."""
    config = _write(tmp_path, f"checkpoint:\n  out_dir: {run_folder}\noptim:\n  lr: -1\n")
    before = _snapshot(run_folder)
    done = subprocess.run(
        [sys.executable, "-m", "reflectioncoder", "train", "--preset", "tiny", "--config",
         str(config), "--overwrite"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"reflectioncoder train: {config}:4:7: optim.lr: must be > 0, got -1.0"
    ]
    assert _snapshot(run_folder) == before


@pytest.mark.parametrize(
    "text, where",
    [
        ("train:\n  eval_every: 2\n", ":5:15: train.eval_every: no held-out data"),
        ("model:\n  attention: flash_attn_3\n", ":5:14: model.attention: 'flash_attn_3' does not"),
        ("train:\n  threads: 100000\n", ":5:12: train.threads: expected at most the"),  # torch
    ],
)
def test_a_field_refused_at_the_start_is_named_where_it_was_set(text, where, run_folder,
                                                                 tmp_path, capfd):  # fmt: skip
    """Refused once the machine is known (no held-out data, a kernel that does not run here):
    the line named the field alone, not the file and line that set it."""
    data = tmp_path / "data.jsonl"
    write_toy_jsonl(data, 4)
    config = _write(tmp_path, f"preset: tiny\ncheckpoint: {{out_dir: {run_folder}}}\n"
                              f"data: {{files: [{data}]}}\n{text}")  # fmt: skip
    line = _one_line_error(capfd, ["train", "--config", str(config), "--overwrite"], 2,
                           run_folder, f"reflectioncoder train: {config}{where}")  # fmt: skip
    assert line.startswith(f"reflectioncoder train: {config}{where}")


def _named_values() -> list[tuple[str, str, str]]:
    """(section, field, value) of each field whose default is a named value (a string, or a
    list of them): ``optim.schedule`` cosine, ``logging.report_to`` tensorboard."""
    found = []
    for section, name, _ in FIELDS:
        default = getattr(SECTIONS[section](**_required(section)), name)
        value = default[0] if isinstance(default, list | tuple) and default else default
        if isinstance(value, str) and value:
            found.append((section, name, value))
    return found


def _required(section: str) -> dict[str, Any]:
    return {"arch": {"hidden_size": 8}} if section == "model" else {}


def test_a_near_miss_value_is_named_with_the_value_meant(tmp_path):
    """``optim.schedule: cosinee`` -> ``(did you mean cosine?)``, for every field that takes
    named values (a free one, a path or a project, takes the near miss as it is)."""
    hinted = []
    for section, name, value in _named_values():
        typo = value + value[-1]  # cosinee, autoo, tcee
        path = _write(tmp_path, f"preset: tiny\n{section}:\n  {name}: {typo}\n")
        try:
            load_config(path)
        except ValueError as err:
            assert f"(did you mean {value}?)" in str(err), str(err)
            hinted.append(f"{section}.{name}")
    assert len(hinted) >= 14, hinted
