"""A number field given inf or nan is refused by name, in YAML and --set alike (issue 11: every
config field checked by type and range). `optim.lr=inf` passed `> 0` and trained on inf."""

from __future__ import annotations

import pytest

from reflectioncoder.config_loader import load_config
from reflectioncoder.errors import ConfigError


@pytest.mark.parametrize(
    "override",
    ["optim.lr=inf", "optim.lr=-inf", "optim.weight_decay=.inf", "train.epochs=inf",
     "optim.eps=nan", "optim.betas=[0.9, .inf]", "logging.peak_tflops=inf"],
)  # fmt: skip
def test_set_refuses_a_number_that_is_not_finite(override):
    field = override.split("=", 1)[0]
    with pytest.raises(ConfigError, match=r"expected a finite number") as err:
        load_config(base="tiny", overrides=[override])
    assert field in str(err.value)


def test_yaml_refuses_inf_naming_file_line_and_field(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\noptim:\n  lr: .inf\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:3:7: optim.lr: expected a finite number")


def test_finite_numbers_still_load():
    cfg = load_config(base="tiny", overrides=["optim.lr=1e-3", "train.epochs=2.5"])
    assert cfg.optim.lr == 1e-3 and cfg.train.epochs == 2.5
