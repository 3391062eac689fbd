"""A config file's YAML mistakes an editor makes say what they are: a tab said only
``found character '\\t' that cannot start any token``, a field indented one space less than its
section's others ``expected <block end>, but found '<block mapping start>'``."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main

CASES = {
    "tab": (
        "preset: tiny\ndata:\n\tmax_len: 2048\n",
        "3:1: invalid YAML: found character '\\t' that cannot start any token (YAML indents with "
        "spaces, not tabs)",
    ),
    "indent": (
        "preset: tiny\ndata:\n  files: [a.jsonl]\n max_len: 2048\n",
        "4:2: invalid YAML: expected <block end>, but found '<block mapping start>' (this line is "
        "indented unlike the fields above it)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_yaml_mistakes_say_what_they_are(tmp_path, capsys, case):
    text, said = CASES[case]
    config = tmp_path / "my.yaml"
    config.write_text(text)
    assert main(["train", "--config", str(config)]) == 2
    assert capsys.readouterr().err == f"reflectioncoder train: {config}:{said}\n"
