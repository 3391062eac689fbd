"""Config paths of the wrong kind, refused when the config is read with the field and where it
was given: data.cache_dir naming a file failed after tokenising as '...: File exists' (no
field); distributed.deepspeed_config naming a folder said 'file not found'."""

from __future__ import annotations

from reflectioncoder.cli import main


def _train(tmp_path, setting):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--set", "data.files=[tests/data/reflection_small.jsonl]",
            "--set", f"checkpoint.out_dir={out}", "--set", setting]  # fmt: skip
    code = main(args)
    assert not out.exists()
    return code


def test_a_cache_dir_that_is_a_file(tmp_path, capsys):
    taken = tmp_path / "cache"
    taken.write_text("")
    assert _train(tmp_path, f"data.cache_dir={taken}") == 2
    assert capsys.readouterr().err == (
        f"reflectioncoder train: --set data.cache_dir={taken}: data.cache_dir: {taken} is a "
        "file; give a folder\n"
    )


def test_a_deepspeed_config_that_is_a_folder(tmp_path, capsys):
    assert _train(tmp_path, f"distributed.deepspeed_config={tmp_path}") == 2
    assert capsys.readouterr().err.endswith(
        f"distributed.deepspeed_config: a folder, not a file: {tmp_path}\n"
    )
