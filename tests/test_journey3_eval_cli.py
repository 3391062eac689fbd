"""What `reflectioncoder evaluate` tells a user: its help says what `--prompt-format chat`
sends (docs/evaluation.md), and `--task multiple --model`'s generation line counts every
language it generated, not the last one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reference.serialise import SPECIALS

from reflectioncoder.cli import main
from reflectioncoder.generate import vllm_available
from reflectioncoder.testing.tiny_model import save_tiny_model


def test_help_says_what_the_chat_format_sends(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    chat = text[text.rindex("--prompt-format {spec,chat}") :][:400]
    assert "repeats the signature" not in chat  # the reply opens with the fence only
    assert "the model writes the whole function" in chat


def test_multiple_generation_line_counts_every_language(tmp_path, shared_dir, capsys):
    texts = ["def add(x, y):\n    return x + y\n", "echo hi\n"] * 20
    model = save_tiny_model(tmp_path / "model", texts, special_tokens=SPECIALS)
    out = tmp_path / "ml.json"
    argv = ["evaluate", "--task", "multiple", "--languages", "python", "sh", "--limit", "1"]
    argv += ["--model", str(model), "--max-new-tokens", "8", "--device", "cpu"]
    argv += ["--data-dir", str(shared_dir / "evaldata"), "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    samples = [json.loads(x) for x in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert [s["language"] for s in samples] == ["python", "sh"]
    generation = json.loads(Path(out).read_text())["generation"]
    assert generation["new_tokens"] > 8, generation  # one language gives 8 at most
    printed = capsys.readouterr().out
    assert f"generation: {generation['new_tokens']} tokens" in printed


def test_an_unknown_multiple_language_is_a_bad_argument(tmp_path, capsys):
    """Exit 3 means "its toolchain is not installed here" (scripts skip it); a misspelt
    language is a bad --task: exit 2, the languages listed."""
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval_23_strlen", "completion": "x"}\n')
    assert main(["evaluate", "--task", "multiple-cobol", "--samples", str(samples)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reflectioncoder evaluate: --task: no MultiPL-E language 'cobol'")
    assert "python, cpp, cs" in err


@pytest.mark.skipif(vllm_available(), reason="vllm is installed here")
def test_vllm_backend_without_vllm_is_a_bad_argument(tmp_path, capsys):
    """Refused with the flag before anything loads (it was a RuntimeError reported as "an
    internal error: rerun with --debug")."""
    model = save_tiny_model(tmp_path / "model", ["def f():\n    return 1\n"] * 5)
    argv = ["evaluate", "--task", "humaneval", "--model", str(model), "--backend", "vllm"]
    capsys.readouterr()
    assert main([*argv, "--json", str(tmp_path / "he.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "reflectioncoder evaluate: --backend vllm: vllm is not installed (pip install vllm)"
    )
    assert not (tmp_path / "he.json").exists()


def test_a_damaged_benchmark_file_is_named(tmp_path, shared_dir, capsys):
    """--data-dir holding a benchmark file cut short (a copy that stopped) or not gzip at all:
    the file and the line, not EOFError as "an internal error" or a bare "Not a gzipped file"."""
    source = shared_dir / "evaldata/humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz"
    data = tmp_path / "evaldata/humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz"
    data.parent.mkdir(parents=True)
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "    return True"}\n')
    argv = ["evaluate", "--task", "humaneval", "--samples", str(samples), "--limit", "1"]
    argv += ["--data-dir", str(tmp_path / "evaldata"), "--no-progress"]
    for damaged, where in ((source.read_bytes()[:300_000], ":54: "), (b"garbage", ":1: ")):
        data.write_bytes(damaged)
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"reflectioncoder evaluate: {data}{where}damaged gzip file"), err


def test_a_run_folder_model_keeps_its_result_beside_its_samples(tmp_path, shared_dir):
    """`evaluate --model RUN/final` with no --json (docs/training.md's command): the samples
    went to RUN/eval/, the verdicts were only printed; the result goes beside them now."""
    run = tmp_path / "run"
    save_tiny_model(run / "final", ["def f():\n    return 1\n"] * 5, special_tokens=SPECIALS)
    (run / "config.yaml").write_text("preset: tiny\n")
    argv = ["evaluate", "--task", "humaneval", "--model", str(run / "final"), "--limit", "1"]
    argv += ["--max-new-tokens", "4", "--data-dir", str(shared_dir / "evaldata"), "--no-progress"]
    assert main(argv) == 0
    result = json.loads((run / "eval" / "result-humaneval.json").read_text())
    assert set(result["scores"]) == {"HumanEval", "HumanEval+"}
    assert list(result["details"]) == ["HumanEval/0"]
    assert (run / "eval" / "samples-humaneval.jsonl").is_file()


def test_json_naming_the_samples_file_is_refused_before_it_is_overwritten(tmp_path, capsys):
    """`--json` given the samples file (tab completion): refused at once; it replaced the
    user's samples with the result, and the next run read the result as samples."""
    samples = tmp_path / "s.jsonl"
    text = '{"task_id": "HumanEval/0", "completion": "    return True"}\n'
    samples.write_text(text)
    argv = ["evaluate", "--task", "humaneval", "--limit", "1", "--no-progress"]
    assert main([*argv, "--samples", str(samples), "--json", f"{tmp_path}/./s.jsonl"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--json: is the --samples file: the output would overwrite it" in err
    assert samples.read_text() == text
    model = save_tiny_model(tmp_path / "model", ["def f():\n    return 1\n"] * 5)
    out = str(tmp_path / "gen.jsonl")
    capsys.readouterr()
    assert main([*argv, "--model", str(model), "--save-samples", out, "--json", out]) == 2
    assert "--json: is the --save-samples file" in capsys.readouterr().err


def test_several_greedy_samples_name_the_flags(tmp_path, capsys):
    """`--n-samples 2` without a temperature: a bad argument naming both flags (exit 2), before
    the model loads (it said "n > 1 needs temperature > 0", exit 1, flags unnamed)."""
    model = save_tiny_model(tmp_path / "model", ["def f():\n    return 1\n"] * 5)
    argv = ["evaluate", "--task", "humaneval", "--model", str(model), "--n-samples", "2"]
    capsys.readouterr()
    assert main([*argv, "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "reflectioncoder evaluate: --n-samples 2 needs --temperature > 0 "
        "(greedy decoding gives 2 identical samples)"
    )
