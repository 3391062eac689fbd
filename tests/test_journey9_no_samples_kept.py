"""A run whose every sample is dropped says why and what to change: it said ``data.files: no
training samples (all dropped or none given)``, which sent the user looking for a missing file
when data.max_len was below every sample (the counts were in a warning lines above)."""

from __future__ import annotations

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl


def _train(tmp_path, data, **sets) -> int:
    sets = {"data.files": f"[{data}]", "checkpoint.out_dir": tmp_path / "run", **sets}
    return main(train_argv({"model.tokenizer_vocab_size": 300, **sets}, "--no-progress"))


def test_every_sample_over_max_len_says_raise_it(tmp_path, capsys):
    data = write_toy_jsonl(tmp_path / "d.jsonl", 6, seed=1)
    assert _train(tmp_path, data, **{"data.max_len": 30}) == 1
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(
        "reflectioncoder train: data.files: no training samples: 6 longer than data.max_len 30 "
        "(up to "
    ), line
    assert line.endswith(" ids): raise data.max_len"), line
    assert not (tmp_path / "run").exists()


def test_bad_samples_skipped_are_named_too(tmp_path, capsys):
    data = write_toy_jsonl(tmp_path / "d.jsonl", 3, seed=1)
    with data.open("a") as file:
        file.write('{"type": "generation", "messages": []}\n')
    assert _train(tmp_path, data, **{"data.max_len": 30, "data.skip_bad": "true"}) == 1
    line = capsys.readouterr().err.splitlines()[-1]
    assert "no training samples: 3 longer than data.max_len 30 (up to " in line, line
    assert f" ids): raise data.max_len; 1 bad skipped (data.skip_bad), e.g. {data}:4:" in line
