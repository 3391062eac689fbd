"""A user's config file with a section or key written twice, or a misspelt preset: one line
naming the file, line and column (exit 2), never a run on what PyYAML silently kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from reflectioncoder.cli import main


def _train(capsys, config: Path, out: Path) -> tuple[int, str]:
    code = main(["train", "--config", str(config), "--set", f"checkpoint.out_dir={out}"])
    return code, capsys.readouterr().err


def test_a_section_given_twice_is_refused_naming_both_lines(tmp_path, capsys):
    # The second `data:` would replace the first whole: data.files lost, the run on nothing.
    config = tmp_path / "my.yaml"
    config.write_text(
        "preset: tiny\ndata:\n  files: [data/refl.jsonl]\noptim:\n  lr: 1e-3\n"
        "data:\n  max_len: 512\n"
    )
    code, err = _train(capsys, config, tmp_path / "run")
    assert code == 2
    assert err == (
        f"reflectioncoder train: {config}:6:1: data: given twice (first at line 2); "
        "merge the two into one\n"
    )
    assert not (tmp_path / "run").exists()


def test_a_field_given_twice_is_refused(tmp_path, capsys):
    config = tmp_path / "my.yaml"
    config.write_text("preset: tiny\noptim:\n  lr: 1e-3\n  weight_decay: 0.1\n  lr: 2e-5\n")
    code, err = _train(capsys, config, tmp_path / "run")
    assert code == 2
    assert err.startswith(f"reflectioncoder train: {config}:5:3: optim.lr: given twice")
    assert "(first at line 3)" in err


@pytest.mark.parametrize(
    ("text", "shown"),
    [("preset: tinyy\n", "'tinyy' (did you mean tiny?)"), ("preset: [tiny]\n", "['tiny']")],
)
def test_an_unknown_preset_in_a_file_is_located(tmp_path, capsys, text, shown):
    config = tmp_path / "my.yaml"
    config.write_text(text)
    code, err = _train(capsys, config, tmp_path / "run")
    assert code == 2
    assert err == (
        f"reflectioncoder train: {config}:1:9: preset: unknown {shown}; "
        "known: paper, smollm2, tiny\n"
    )


def test_the_shipped_configs_still_load(capsys):
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("tiny.yaml", "paper.yaml", "paper-34b.yaml"):
        assert main(["train", "--config", str(root / name), "--print-config"]) == 0
    assert "name_or_path" in capsys.readouterr().out


def test_a_list_split_by_the_shell_says_to_quote_it(capsys):
    # what `--set data.files=[a.jsonl, b.jsonl]` typed unquoted reaches the command as
    with pytest.raises(SystemExit) as stop:
        main(["train", "--preset", "tiny", "--set", "data.files=[a.jsonl,", "b.jsonl]"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "reflectioncoder train: unrecognized arguments: b.jsonl] (a --set value with spaces "
        "needs quotes: --set 'data.files=[a.jsonl, b.jsonl]')\n"
    )
