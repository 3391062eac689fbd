"""A model folder that is damaged or not one model: each command that takes one names the file
(and line, column) and the flag in one line, exit 1, and writes nothing; found before hours of
work, never as safetensors' or transformers' own error ("an internal error") or an index error
in the middle of generating."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reflectioncoder.testing.tiny_model import save_tiny_model

TEXTS = ["def add(x, y):\n    return x + y\n", "Write a complete Python function."] * 10


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", TEXTS)


def _copy(model: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(model, tmp_path / name))


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reflectioncoder.cli", *argv, "--no-progress"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_line(proc: subprocess.CompletedProcess, command: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"reflectioncoder {command}: "), proc.stderr
    assert "internal error" not in lines[0] and "Traceback" not in proc.stderr
    return lines[0]


def test_evaluate_names_weights_cut_short_and_writes_nothing(model, tmp_path):
    """A copy cut short (the header says more bytes than the file has)."""
    bad = _copy(model, tmp_path, "cut")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "out" / "he.json"
    proc = _run(
        "evaluate", "--task", "humaneval", "--model", str(bad), "--limit", "1", "--json", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    line = _one_line(proc, "evaluate")
    assert f"{weights}: --model: unreadable weights" in line
    assert not (tmp_path / "out").exists()


def test_a_damaged_tokenizer_is_named_with_line_and_column(model, tmp_path, capsys):
    """inspect (a tokenizer folder) and train (model.name_or_path) alike."""
    from reflectioncoder.cli import main

    bad = _copy(model, tmp_path, "badtok")
    (bad / "tokenizer.json").write_text('{"version": "1.0",\n  "model": {,}}\n')
    data = tmp_path / "data.jsonl"
    data.write_text("")  # never read: the folder is checked first
    assert main(["inspect", "--data", str(data), "--tokenizer", str(bad)]) == 1
    line = capsys.readouterr().err.strip()
    assert line == (
        f"reflectioncoder inspect: {bad / 'tokenizer.json'}:2:13: --tokenizer: invalid JSON: "
        "Expecting property name enclosed in double quotes (a damaged file?)"
    )
    sets = [f"data.files=[{data}]", f"checkpoint.out_dir={tmp_path / 'run'}"]
    sets.append(f"model.name_or_path={bad}")
    assert main(["train", "--preset", "tiny", *(a for s in sets for a in ("--set", s))]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{bad / 'tokenizer.json'}:2:13: model.name_or_path: invalid JSON" in line
    assert not (tmp_path / "run").exists()


def test_build_data_checks_its_model_folder(model, tmp_path):
    """--backend transformers --model: a missing folder is not taken for a hub name; a
    tokenizer of another model is refused at load, before any problem is run."""
    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        '{"id": "add", "prompt": "Write add(a, b).", "tests": ["assert add(1, 2) == 3"]}\n'
    )
    out = tmp_path / "data" / "out.jsonl"
    argv = ["build-data", "--problems", str(problems), "--out", str(out)]
    argv += ["--backend", "transformers", "--max-new-tokens", "4"]
    missing = tmp_path / "nowhere"
    proc = _run(*argv, "--model", str(missing), cwd=tmp_path)
    assert _one_line(proc, "build-data").endswith(f"{missing}: --model: folder not found")
    other = _copy(model, tmp_path, "other")
    save_tiny_model(tmp_path / "big", TEXTS + ["a wider vocabulary " * 3], hidden_size=16)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "big")
    tok.add_tokens([f"<extra_{i}>" for i in range(50)])
    tok.save_pretrained(other)  # more ids than the model has rows
    proc = _run(*argv, "--model", str(other), cwd=tmp_path)
    line = _one_line(proc, "build-data")
    assert f"{other}: its tokenizer has {len(tok)} tokens" in line
    assert "not this model's tokenizer" in line
    assert not out.parent.exists()


def test_the_smollm2_preset_without_its_model_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    """README's `train --preset smollm2` and `evaluate --model ~/.cache/.../smollm2-...`
    before `install-model`: the one command that installs it, not a bare "folder not found"."""
    from reflectioncoder.cli import main

    monkeypatch.setenv("REFLECTIONCODER_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data.jsonl"
    data.write_text("")
    argv = ["train", "--preset", "smollm2", "--set", f"data.files=[{data}]"]
    assert main([*argv, "--set", f"checkpoint.out_dir={tmp_path / 'run'}"]) == 1
    folder = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    hint = "folder not found: install it with `reflectioncoder install-model smollm2-135m-instruct`"
    assert capsys.readouterr().err.strip().endswith(f"{folder}: model.name_or_path: {hint}")
    assert main(["evaluate", "--task", "mbpp", "--model", str(folder)]) == 1
    assert capsys.readouterr().err.strip().endswith(f"{folder}: --model: {hint}")


def test_inspect_json_into_a_folder_is_one_line(model, tmp_path, capsys):
    """`--json` given a folder: named as such (it said "/.tmp.tmpPID: Is a directory", a file
    written into the folder's parent and removed again)."""
    from reflectioncoder.cli import main
    from reflectioncoder.testing.toy_jsonl import write_toy_jsonl

    data = write_toy_jsonl(tmp_path / "data.jsonl", 2, seed=0)
    folder = tmp_path / "views"
    folder.mkdir()
    argv = ["inspect", "--data", str(data), "--tokenizer", str(model), "--limit", "1"]
    assert main([*argv, "--json", str(folder)]) == 2  # found before tokenising (journey5)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"reflectioncoder inspect: {folder}: --json: is a folder; give a file name"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "views"]
