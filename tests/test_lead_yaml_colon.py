"""A YAML flow mapping written without a space after a colon (``--set optim={lr:0.1}``) is read
by YAML as the key "lr:0.1": the one line says so instead of only "unknown field"."""

from __future__ import annotations

import pytest

from reflectioncoder.config_loader import load_config
from reflectioncoder.errors import ConfigError, did_you_mean


@pytest.mark.parametrize(
    "override, field, fix",
    [
        ("optim={lr:0.1}", "optim.lr:0.1", "lr: 0.1"),
        (
            "model.arch={hidden_size:32, num_layers: 1}",
            "model.arch.hidden_size:32",
            "hidden_size: 32",
        ),
    ],
)
def test_a_missing_space_after_a_colon_is_named(override, field, fix):
    with pytest.raises(ConfigError) as err:
        load_config(base="tiny", overrides=[override])
    line = str(err.value)
    assert field in line and f"YAML needs a space after the colon: {fix}" in line


def test_other_keys_keep_their_hints():
    assert did_you_mean("max_step", {"max_steps"}, "train") == " (did you mean train.max_steps?)"
    assert did_you_mean("nope:1", {"max_steps"}) == ""  # no field before the colon: no hint
