"""A config file saved with a byte-order mark (Notepad and other Windows editors write one):
PyYAML skips it, but TOML has no such rule, so ``--config run.toml`` was 'invalid TOML:
Invalid statement' at 1:1 for a file that is valid TOML after the mark. The mark is not
part of the text, as in every other file a user hands us (data/readers.py, eval/tasks.py)."""

from __future__ import annotations

import pytest

from reflectioncoder.config_loader import load_config

BODIES = {
    "toml": 'preset = "tiny"\n\n[optim]\nlr = 0.0003\n',
    "yaml": "preset: tiny\noptim:\n  lr: 0.0003\n",
}


@pytest.mark.parametrize("suffix", sorted(BODIES))
def test_a_config_with_a_byte_order_mark_reads_as_without(tmp_path, suffix):
    path = tmp_path / f"run.{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + BODIES[suffix].encode())
    assert load_config(path).optim.lr == 0.0003


def test_a_bad_value_after_the_mark_keeps_its_line_and_column(tmp_path):
    path = tmp_path / "run.toml"
    path.write_bytes(b'\xef\xbb\xbfpreset = "tiny"\n[optim]\nlr = "fast"\n')
    with pytest.raises(ValueError, match=r"run\.toml:3:6: optim\.lr: expected a number"):
        load_config(path)
