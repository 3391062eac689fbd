"""``--config FILE.toml``: issue 4 promises "a YAML or TOML file plus command-line overrides"; a
TOML file was read as YAML and refused with 'expected a mapping (section: fields) at the top
level'. A TOML file now gives the same RunConfig as the same YAML, and its mistakes are located
by line and column like a YAML file's."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main
from reflectioncoder.config_loader import load_config

YAML = """\
preset: tiny
model:
  arch:
    hidden_size: 32
data:
  files: [a.jsonl, b.jsonl]
  upsample: [1, 2]
mask:
  strategies: [random_token_mask, block_mask]
  block_order: etc
optim:
  lr: 1.0e-3
  betas: [0.9, 0.95]
train:
  max_steps: 3
checkpoint:
  out_dir: runs/toml
"""

TOML = """\
preset = "tiny"  # the same run as the YAML above

[model.arch]
hidden_size = 32

[data]
files = ["a.jsonl", "b.jsonl"]
upsample = [1, 2]

[mask]
strategies = ["random_token_mask", "block_mask"]
block_order = "etc"

[optim]
lr = 1e-3
betas = [0.9, 0.95]

[train]
max_steps = 3

[checkpoint]
out_dir = "runs/toml"
"""


def test_a_toml_file_is_the_same_config_as_its_yaml(tmp_path):
    (tmp_path / "run.yaml").write_text(YAML)
    (tmp_path / "run.toml").write_text(TOML)
    from_toml = load_config(tmp_path / "run.toml", ["train.seed=7"])
    assert from_toml == load_config(tmp_path / "run.yaml", ["train.seed=7"])
    assert from_toml.mask.strategies == ("random_token_mask", "block_mask")
    assert from_toml.optim.betas == (0.9, 0.95)
    assert from_toml.train.seed == 7


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ('preset = "tiny"\n[train]\nmax_steps = "x"\n', ":3:13: train.max_steps: ",
         "expected an integer, got 'x'"),
        ('preset = "tiny"\n\n[train]\n  max_stepz = 3\n', ":4:3: train.max_stepz: ",
         "unknown field (did you mean train.max_steps?)"),
        ('preset = "tiny"\n[optim\n', ":2:7: ", "invalid TOML: Expected ']'"),
        ('preset = "tinyy"\n', ":1:10: preset: ", "unknown 'tinyy' (did you mean tiny?)"),
    ],
)  # fmt: skip
def test_a_bad_toml_file_is_one_located_line(tmp_path, capsys, text, where, message):
    config = tmp_path / "my.toml"
    config.write_text(text)
    out = tmp_path / "run"
    argv = ["train", "--config", str(config), "--set", f"checkpoint.out_dir={out}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"reflectioncoder train: {config}{where}{message}"), err
    assert len(err.splitlines()) == 1
    assert not out.exists()
