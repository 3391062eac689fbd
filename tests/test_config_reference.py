"""The config reference agrees with the dataclasses: every shipped config and every
``section.field`` a document names exists, docs/training.md's table lists each field of each
section (and nothing else), the choices it lists are accepted (and are all of them), and every
field carries a docstring."""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from reflectioncoder import config as rc
from reflectioncoder.config import RunConfig
from reflectioncoder.config_loader import load_config
from reflectioncoder.train import config as train_config

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {f.name: typing.get_type_hints(RunConfig)[f.name] for f in dataclasses.fields(RunConfig)}
DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")]
    + list((ROOT / "configs").glob("*.yaml"))
)
# The fields whose docs list their choices, and every value each accepts.
CHOICES = {
    "model.checkpointing_policy": rc.CHECKPOINTING_POLICIES,
    "model.compile": ("auto", "true", "false"),
    "model.mixed_precision": rc.MIXED_PRECISIONS,
    "model.attention": rc.ATTENTION,
    "optim.schedule": train_config.SCHEDULES,
    "distributed.backend": train_config.BACKENDS,
    "distributed.offload_optimizer": ("auto", "true", "false"),
    "distributed.fp32_grad_accum": ("auto", "true", "false"),
    "logging.report_to": train_config.REPORTERS,
}


def _fields(section: str) -> set[str]:
    return {f.name for f in dataclasses.fields(SECTIONS[section])}


def _table() -> dict[str, str]:
    """docs/training.md's config table: section -> its "main fields" cell."""
    rows = {}
    for line in (ROOT / "docs" / "training.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        section = cells[0].strip("`") if len(cells) == 3 else None
        if section in SECTIONS:
            rows[section] = cells[2]
    return rows


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    """Every key of a shipped config is a field (the loader refuses unknown ones)."""
    assert isinstance(load_config(path), RunConfig)


# Functions the documents name in the same form (the train room's setup, transformers',
# reflectioncoder.model.logit_scale).
CODE_NAMES = {"distributed.setup", "model.generate", "model.logit_scale"}


def test_every_field_a_document_names_exists():
    """``section.field=`` (an override) and `` `section.field` `` name real fields."""
    sections = "|".join(SECTIONS)
    override = re.compile(rf"\b({sections})\.([a-z_0-9]+)=")
    quoted = re.compile(rf"`({sections})\.([a-z_0-9]+)`")
    refused = re.compile(rf"\b((?:{sections})\.[a-z_0-9]+): unknown field \(did you mean")
    named = set()
    for path in DOCUMENTS:
        # a misspelling shown with its refusal (``optim.lrr: unknown field (did you mean
        # optim.lr?)``) is named on purpose, in that line and in the command that made it
        whole = path.read_text()
        on_purpose = set(refused.findall(whole))
        text = "\n".join(line for line in whole.splitlines() if "did you mean" not in line)
        for section, name in override.findall(text) + quoted.findall(text):
            if f"{section}.{name}" not in on_purpose:
                named.add((path.relative_to(ROOT), f"{section}.{name}"))
    assert len(named) > 20
    unknown = sorted(
        f"{doc}: {key}"
        for doc, key in named
        if key not in CODE_NAMES and key.split(".")[1] not in _fields(key.split(".")[0])
    )
    assert not unknown


def test_config_blocks_in_documents_use_real_fields():
    """A ```yaml block whose top-level keys are sections holds only their fields."""
    blocks = 0
    for path in DOCUMENTS:
        for block in re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S):
            data = yaml.safe_load(block)
            if not isinstance(data, dict) or not set(data) <= set(SECTIONS) | {"preset"}:
                continue
            blocks += 1
            for section, fields in data.items():
                if section != "preset":
                    assert set(fields) <= _fields(section), (path.name, section)
    assert blocks >= 2


def test_config_table_lists_every_field_and_no_other():
    table = _table()
    assert set(table) == set(SECTIONS)
    for section, cell in table.items():
        listed = set(re.findall(r"`(\w+)`", re.sub(r"\([^()]*\)", "", cell)))
        assert listed == _fields(section), section


def test_documented_choices_are_the_accepted_ones():
    """``field`` (a, b, c) in the table: each of a, b, c is accepted, and nothing else is."""
    seen = set()
    for section, cell in _table().items():
        for name, listed in re.findall(r"`(\w+)` \(([^()]*)\)", cell):
            key = f"{section}.{name}"
            choices = [c.strip() for c in listed.split(":")[0].split(",")]
            if key not in CHOICES:
                continue
            seen.add(key)
            assert sorted(choices) == sorted(CHOICES[key]), key
            for choice in choices:
                _construct(section, name, yaml.safe_load(choice))
    assert seen == set(CHOICES)


def _construct(section: str, name: str, value: object) -> None:
    cls = SECTIONS[section]
    value = [value] if typing.get_origin(typing.get_type_hints(cls)[name]) is list else value
    extra = {"arch": {"hidden_size": 8}} if section == "model" else {}
    cls(**{name: value, **extra})  # raises ValueError on a value it does not accept


@pytest.mark.parametrize(
    "path", ["reflectioncoder/config.py", "reflectioncoder/data/config.py",
             "reflectioncoder/train/config.py", "reflectioncoder/generate/config.py"],
)  # fmt: skip
def test_every_config_field_has_a_docstring(path):
    """The house style: a docstring under each field of a config dataclass."""
    tree = ast.parse((ROOT / path).read_text())
    missing = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Config")):
        if cls.name == "RunConfig":  # its fields are the sections, documented each
            continue
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                doc = body[i + 1] if i + 1 < len(body) else None
                if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)):
                    missing.append(f"{cls.name}.{node.target.id}")
    assert not missing
