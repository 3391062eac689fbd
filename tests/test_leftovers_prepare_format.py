"""A wrong value of an enumerated option is one line naming the value and the allowed ones, and
a non-zero exit: prepare-data's --format (a name it does not know, and a known format that fits
none of the file's rows, which used to write an empty output and exit 0), and every other
command's enumerated options and config fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectioncoder.cli import main as cli_main
from reflectioncoder.data.formats import FORMATS

SMALL = Path(__file__).resolve().parent / "data" / "reflection_small.jsonl"
PREPARE = ["prepare-data", "--no-decontaminate", "--no-progress"]


def _exit_code(argv: list[str]) -> int:
    """The command's exit status in-process (argparse's own errors exit through SystemExit)."""
    try:
        return cli_main(argv)
    except SystemExit as stop:
        return stop.code


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_prepare_data_unknown_format_name(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert _exit_code([*PREPARE, "--in", str(SMALL), "--out", str(out), "--format", "bogus"]) == 2
    err = _one_error_line(capsys)
    assert "'bogus'" in err and all(f"'{name}'" in err for name in FORMATS)
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["sharegpt", "codefeedback", "openai"])
def test_prepare_data_format_that_fits_no_row_keeps_the_earlier_output(tmp_path, capsys, fmt):
    """reflection_small.jsonl is ReflectionSeq: any other --format converts none of its rows."""
    out = tmp_path / "out.jsonl"
    argv = [*PREPARE, "--in", str(SMALL), "--out", str(out)]
    assert cli_main([*argv, "--format", "reflectionseq"]) == 0
    before = out.read_bytes()
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert manifest["written"] == 3
    capsys.readouterr()

    assert cli_main([*argv, "--format", fmt]) == 2
    err = _one_error_line(capsys)
    assert err.startswith("reflectioncoder prepare-data: --format: ")
    assert f"'{fmt}' converts none of the 3 rows of {SMALL}" in err
    assert "look like reflectionseq" in err
    assert "formats: " + ", ".join(FORMATS) in err
    assert out.read_bytes() == before  # the earlier output and manifest stay as they were
    assert json.loads((tmp_path / "out.manifest.json").read_text()) == manifest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_prepare_data_format_with_some_good_rows_still_writes(tmp_path, capsys):
    """A right --format with one bad row is a bad row (skipped, listed), not a wrong format."""
    src = tmp_path / "mixed.jsonl"
    good = SMALL.read_text().splitlines()[0]
    src.write_text(good + "\n" + json.dumps({"conversations": "not a list"}) + "\n")
    out = tmp_path / "out.jsonl"
    argv = [*PREPARE, "--in", str(src), "--out", str(out), "--format", "reflectionseq"]
    assert cli_main(argv) == 0
    assert len(out.read_text().splitlines()) == 1


# (argv, a word the error must name): every other enumerated option and config field
OTHERS = [
    (["evaluate", "--task", "bogus", "--samples", "s.jsonl"], "humaneval"),
    (["evaluate", "--task", "multiple-zz", "--samples", "s.jsonl"], "cpp"),
    (["evaluate", "--task", "humaneval", "--samples", "s.jsonl", "--backend", "x"], "vllm"),
    (["evaluate", "--task", "humaneval", "--samples", "s.jsonl", "--prompt-format", "x"], "'x'"),
    (["inspect", "--data", "d.jsonl", "--tokenizer", "t", "--strategy", "x"], "block_mask"),
    (["build-data", "--out", "o.jsonl", "--n", "1", "--backend", "x"], "mutation"),
    (["eval-setup", "--languages", "zz", "--print"], "cpp"),
    (["train", "--preset", "bogus"], "tiny"),
    (["install-model", "bogus"], "'bogus'"),
]
CONFIG_FIELDS = [
    "model.dtype",
    "model.checkpointing_policy",
    "model.attention",
    "model.mixed_precision",
    "model.compile",
    "optim.schedule",
    "train.device",
    "distributed.backend",
    "distributed.offload_optimizer",
    "distributed.fp32_grad_accum",
]


@pytest.mark.parametrize(("argv", "allowed"), OTHERS, ids=[" ".join(a[:3]) for a, _ in OTHERS])
def test_other_enumerated_options(tmp_path, monkeypatch, capsys, argv, allowed):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.jsonl").write_text("{}\n")  # inputs that exist: only the value is wrong
    assert _exit_code(argv) == 2
    err = _one_error_line(capsys)
    assert allowed in err


@pytest.mark.parametrize("name", CONFIG_FIELDS)
def test_enumerated_config_fields(tmp_path, capsys, name):
    assert cli_main(["train", "--preset", "tiny", "--set", f"{name}=bogus", "--print-config"]) == 2
    err = _one_error_line(capsys)
    assert f"{name}: must be" in err and "'bogus'" in err
