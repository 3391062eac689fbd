"""A number in scientific notation means the same in a YAML config file as in `--set`, integer
fields included (issue 11, item 2: fields checked by type and range, the same for YAML and
`--set`, scientific notation included). PyYAML reads `1e2` as a string; `--set` took it as 100
while the same line in a file was refused as not an integer."""

from __future__ import annotations

import pytest

from reflectioncoder.config_loader import load_config
from reflectioncoder.errors import ConfigError


@pytest.mark.parametrize(
    "section, field, text, value",
    [
        ("train", "max_steps", "1e2", 100),
        ("train", "samples_per_step", "1.6E1", 16),
        ("packing", "max_tokens", "4e3", 4000),
        ("optim", "lr", "1e-3", 1e-3),
    ],
)
def test_scientific_notation_reads_the_same_in_a_file_and_in_set(
    tmp_path, section, field, text, value
):
    path = tmp_path / "run.yaml"
    path.write_text(f"preset: tiny\n{section}:\n  {field}: {text}\n")
    from_file = getattr(getattr(load_config(path), section), field)
    from_set = getattr(
        getattr(load_config(base="tiny", overrides=[f"{section}.{field}={text}"]), section), field
    )
    assert from_file == from_set == value and type(from_file) is type(value)


@pytest.mark.parametrize("text", ["1e-3", "1.5"])
def test_a_fraction_in_an_integer_field_is_refused_both_ways(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(f"preset: tiny\ntrain:\n  max_steps: {text}\n")
    with pytest.raises(ConfigError, match=r"run.yaml:3:\d+: train.max_steps: expected an integer"):
        load_config(path)
    with pytest.raises(ConfigError, match="train.max_steps: expected an integer"):
        load_config(base="tiny", overrides=[f"train.max_steps={text}"])


def test_one_mask_strategy_without_brackets_is_a_list_of_one(tmp_path):
    """`mask.strategies: random_token_mask` as `data.files: a.jsonl` already was: one item."""
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\nmask:\n  strategies: random_token_mask\n")
    from_set = load_config(base="tiny", overrides=["mask.strategies=random_token_mask"])
    assert load_config(path).mask.strategies == from_set.mask.strategies == ("random_token_mask",)
