"""A path field written with `~` (YAML `files: [~/data/reflection.jsonl]`, where no shell
expands it) names the user's home: it was read as a folder named `~`, so an existing file was
'data file not found' (issue 11: a config a user writes)."""

from __future__ import annotations

from reflectioncoder.config_loader import load_config


def test_tilde_paths_are_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tmp_path / "run.yaml"
    config.write_text(
        "preset: tiny\n"
        "data:\n  files: [~/data/a.jsonl, b.jsonl]\n  cache_dir: ~/cache\n"
        "model:\n  name_or_path: ~/models/m\n  tokenizer: ~/models/m\n"
        "checkpoint:\n  out_dir: ~/runs/r\n"
    )
    cfg = load_config(config, overrides=["data.validation_files=~/data/v.jsonl"])
    assert cfg.data.files == [f"{tmp_path}/data/a.jsonl", "b.jsonl"]
    assert cfg.data.validation_files == [f"{tmp_path}/data/v.jsonl"]
    assert cfg.data.cache_dir == f"{tmp_path}/cache"
    assert cfg.model.name_or_path == cfg.model.tokenizer == f"{tmp_path}/models/m"
    assert cfg.checkpoint.out_dir == f"{tmp_path}/runs/r"


def test_other_strings_keep_their_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(base="tiny", overrides=["logging.run_name=~mine"])
    assert cfg.logging.run_name == "~mine"
