"""Bad input, per command: exit code, ONE line naming the problem, no traceback, and nothing
created or changed in the output folder. Ctrl-C, a closed pipe and --debug through real processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import ctrl_c_reaches
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer

SAMPLE = {"task_id": "HumanEval/0", "completion": "    return True\n"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good and bad inputs, and a run folder as a finished run leaves it."""
    root = tmp_path_factory.mktemp("inputs")
    good = write_toy_jsonl(root / "good.jsonl", 4, seed=0)
    tok = root / "tok"
    train_tokenizer([good.read_text()], 300, tok)
    bad_col = root / "badcol.jsonl"
    bad_col.write_text('{"type": "reflection", "messages": [1,,]}\n')  # col 39
    (root / "empty.jsonl").write_text("")
    (root / "null.jsonl").write_text(json.dumps({"task_id": "HumanEval/0", "completion": None}))
    (root / "notjson.jsonl").write_text("this is not json\n")
    (root / "one.jsonl").write_text(json.dumps(SAMPLE) + "\n")
    run = root / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    (run / "config.yaml").write_text("preset: tiny\n")
    (root / "lr.yaml").write_text("preset: tiny\noptim:\n  lr: fast\n")
    (root / "unknown.yaml").write_text("preset: tiny\ntrain:\n  sed: 1\n")
    (root / "broken.yaml").write_text("preset: tiny\noptim: [1\n")
    return {
        "good": good,
        "tok": tok,
        "bad_col": bad_col,
        "empty": root / "empty.jsonl",
        "null": root / "null.jsonl",
        "notjson": root / "notjson.jsonl",
        "one": root / "one.jsonl",
        "run": run,
        "lr": root / "lr.yaml",
        "unknown": root / "unknown.yaml",
        "broken": root / "broken.yaml",
        "missing": root / "missing.jsonl",
    }


def _snapshot(folder: Path) -> dict[str, tuple[int, int]] | None:
    if not folder.exists():
        return None
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def _one_line_error(capfd, argv: list[str], code: int, out: Path, *words: str) -> str:
    """Run the command in-process; check the exit code, the single line, the output folder."""
    before = _snapshot(out)
    rc = main(argv)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"reflectioncoder {argv[0]}: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert rc == code, (rc, lines[0])
    assert _snapshot(out) == before, f"{out} changed"
    return lines[0]


TRAIN_CASES = {
    # name: (extra argv, exit code, words the line must hold)
    "missing data file": (["--set", "data.files=[{missing}]"], 1, ["missing.jsonl", "not found"]),
    "malformed line": (["--set", "data.files=[{bad_col}]"], 1, ["badcol.jsonl:1", "col 39"]),
    "empty data file": (["--set", "data.files=[{empty}]"], 1, ["empty.jsonl", "empty"]),
    "no model folder": (
        ["--set", "model.name_or_path={missing}", "--set", "data.files=[{good}]"],
        1,
        ["missing.jsonl", "model.name_or_path", "not found"],
    ),
    "run folder as tokenizer": (
        ["--set", "model.tokenizer={run}", "--set", "data.files=[{good}]"],
        1,
        ["model.tokenizer", "run folder", "final"],
    ),
    "lr not a number": (["--set", "optim.lr=fast"], 2, ["optim.lr", "'fast'", "a number"]),
    "seed not an int": (["--set", "train.seed=abc"], 2, ["train.seed", "'abc'", "integer"]),
    "bool maybe": (["--set", "logging.tensorboard=maybe"], 2, ["logging.tensorboard", "maybe"]),
    "fractional batch": (["--set", "train.samples_per_step=4.5"], 2, ["samples_per_step", "4.5"]),
    "attention kernel not installed": (
        ["--set", "model.attention=flash_attn_4"],
        2,
        ["model.attention", "flash-attn-4 is not installed", "reflectioncoder[hopper]"],
    ),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_bad_input(case, files, tmp_path, capfd):
    extra, code, words = TRAIN_CASES[case]
    out = tmp_path / "out"
    argv = ["train", "--preset", "tiny", "--set", f"checkpoint.out_dir={out}"]
    argv += [a.format(**files) for a in extra]
    _one_line_error(capfd, argv, code, out, *words)
    assert not out.exists()


def test_train_bad_input_leaves_an_existing_folder_as_it_was(files, tmp_path, capfd):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["train", "--preset", "tiny", "--set", f"checkpoint.out_dir={out}"]
    _one_line_error(capfd, [*argv, "--set", f"data.files=[{files['empty']}]"], 1, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "name, code, words",
    [
        ("lr", 2, [":3:7: optim.lr", "'fast'"]),
        ("unknown", 2, [":3:3: train.sed", "unknown field"]),
        ("broken", 2, ["broken.yaml:", "invalid YAML"]),
        ("missing", 2, ["missing.jsonl", "not found"]),
    ],
)
def test_train_bad_config_file(name, code, words, files, tmp_path, capfd):
    out = tmp_path / "out"
    argv = ["train", "--config", str(files[name]), "--set", f"checkpoint.out_dir={out}"]
    _one_line_error(capfd, argv, code, out, *words)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_cuda_on_a_cpu_build(files, tmp_path, capfd):
    out = tmp_path / "out"
    argv = ["train", "--preset", "tiny", "--set", f"checkpoint.out_dir={out}"]
    argv += ["--set", "train.device=cuda", "--set", f"data.files=[{files['good']}]"]
    _one_line_error(capfd, argv, 2, out, "--set train.device=cuda: train.device", "cuda")


EVAL_CASES = {
    "samples missing": (["--samples", "{missing}"], 1, ["missing.jsonl", "not found"]),
    "samples not JSON": (["--samples", "{notjson}"], 1, ["notjson.jsonl:1:1", "invalid JSON"]),
    "null completion": (["--samples", "{null}"], 1, ["null.jsonl:1", "completion", "null"]),
    "bad data dir": (["--samples", "{one}", "--data-dir", "{missing}"], 2, ["--data-dir"]),
    "limit 0": (["--samples", "{one}", "--limit", "0"], 2, ["--limit", "0"]),
    "limit -1": (["--samples", "{one}", "--limit", "-1"], 2, ["--limit", "-1"]),
    "k over samples": (["--samples", "{one}", "--limit", "1", "--k", "5"], 2, ["--k 5", "1"]),
    "no model folder": (["--model", "{missing}"], 1, ["--model", "not found"]),
    "run folder as model": (["--model", "{run}"], 1, ["--model", "run folder", "final"]),
    "n-samples 0": (["--model", "{tok}", "--n-samples", "0"], 2, ["--n-samples"]),
    "k over n-samples": (["--model", "{tok}", "--k", "10"], 2, ["--k 10", "--n-samples"]),
    "top-p 0": (["--model", "{tok}", "--top-p", "0"], 2, ["--top-p"]),
}


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_evaluate_bad_input(case, files, tmp_path, capfd, shared_dir):
    extra, code, words = EVAL_CASES[case]
    out = tmp_path / "out"
    argv = ["evaluate", "--task", "humaneval", "--json", str(out / "r.json")]
    argv += [a.format(**files) for a in extra]
    argv += ["--data-dir", str(shared_dir / "evaldata")] if "--data-dir" not in argv else []
    _one_line_error(capfd, argv, code, out, *words)
    assert not out.exists()


def test_evaluate_never_writes_samples_into_the_current_folder(
    files, tmp_path, capfd, monkeypatch, shared_dir
):
    """A model outside a run folder, no --json, no --save-samples: asked where, nothing made."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    argv = ["evaluate", "--task", "humaneval", "--model", str(model), "--limit", "1"]
    _one_line_error(capfd, argv, 2, tmp_path, "--json", "--save-samples")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_evaluate_cuda_on_a_cpu_build(files, tmp_path, capfd):
    out = tmp_path / "out"
    argv = ["evaluate", "--task", "humaneval", "--model", str(files["run"] / "final")]
    argv += ["--device", "cuda", "--json", str(out / "r.json")]
    (files["run"] / "final" / "tokenizer.json").write_text("{}")
    _one_line_error(capfd, argv, 2, out, "--device cuda")


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--n", "0"], ["--n", "0"]),
        (["--n", "2", "--generation-fraction", "2"], ["--generation-fraction", "2"]),
        (["--n", "2", "--timeout", "0"], ["--timeout", "0"]),
        (["--n", "2", "--workers", "0"], ["--workers", "0"]),
        (["--n", "2", "--two-bug-rate", "-0.5"], ["--two-bug-rate"]),
    ],
)
def test_build_data_bad_arguments(extra, words, files, tmp_path, capfd):
    out = tmp_path / "out"
    argv = ["build-data", "--out", str(out / "data.jsonl"), *[a.format(**files) for a in extra]]
    _one_line_error(capfd, argv, 2, out, *words)
    assert not out.exists()


def test_build_data_missing_problems_file(files, tmp_path, capfd):
    out = tmp_path / "out"
    argv = ["build-data", "--out", str(out / "data.jsonl"), "--problems", str(files["missing"])]
    _one_line_error(capfd, argv, 1, out, "--problems", "missing.jsonl", "not found")
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, code, words",
    [
        (["--data", "{good}", "--tokenizer", "{missing}"], 1, ["--tokenizer", "not found"]),
        (["--data", "{good}", "--tokenizer", "{run}"], 1, ["--tokenizer", "run folder"]),
        (["--data", "{missing}", "--tokenizer", "{tok}"], 1, ["missing.jsonl", "not found"]),
        (["--data", "{bad_col}", "--tokenizer", "{tok}"], 1, ["badcol.jsonl:1", "col 39"]),
        (["--data", "{good}", "--tokenizer", "{tok}", "--limit", "0"], 2, ["--limit"]),
    ],
)
def test_inspect_bad_input(extra, code, words, files, tmp_path, capfd):
    out = tmp_path / "out"
    argv = ["inspect", *[a.format(**files) for a in extra], "--json", str(out / "v.json")]
    _one_line_error(capfd, argv, code, out, *words)


@pytest.mark.parametrize(
    "extra, code, words",
    [
        (["--in", "{missing}", "--no-decontaminate"], 1, ["missing.jsonl"]),
    ],
)
def test_prepare_data_bad_input(extra, code, words, files, tmp_path, capfd):
    out = tmp_path / "out"
    argv = ["prepare-data", *[a.format(**files) for a in extra], "--out", str(out / "d.jsonl")]
    _one_line_error(capfd, argv, code, out, *words)


def test_eval_setup_unknown_language(tmp_path, capfd):
    _one_line_error(capfd, ["eval-setup", "--languages", "klingon", "--print"], 2, tmp_path,
                    "--languages", "klingon")  # fmt: skip


def test_evaluate_multiple_bad_samples(files, tmp_path, capfd, shared_dir):
    out = tmp_path / "out"
    argv = ["evaluate", "--task", "multiple", "--samples", str(files["one"])]
    argv += ["--data-dir", str(shared_dir / "evaldata"), "--json", str(out / "r.json")]
    _one_line_error(capfd, argv, 1, out, "one.jsonl:1", "language")


def test_usage_errors_are_one_line(capfd):
    for argv in (["nonsense"], ["evaluate", "--task"], ["build-data", "--n", "x", "--out", "o"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capfd.readouterr().err
        assert len(err.splitlines()) == 1 and "--help" in err and "Traceback" not in err


# -- real processes: Ctrl-C, a closed pipe, --debug ----------------------------------------------


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "reflectioncoder.cli", *argv]


ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _interrupt_when(argv: list[str], ready: str, timeout: float = 120.0):
    """Start the command in its own process group, send Ctrl-C (SIGINT to the group, as a
    terminal does) once ``ready`` appears in its stderr; returns (exit code, stderr)."""
    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=ENV,
        start_new_session=True, preexec_fn=ctrl_c_reaches,
    )  # fmt: skip
    seen = []
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        seen.append(line)
        if ready in line or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.stderr.read()
    return proc.wait(timeout=60), "".join(seen) + rest


def test_ctrl_c_in_build_data_leaves_no_half_file(tmp_path):
    out = tmp_path / "data.jsonl"
    argv = _cli("build-data", "--n", "60", "--workers", "2", "--out", str(out))
    rc, err = _interrupt_when(argv, "reflection samples:")
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == "reflectioncoder build-data: interrupted"
    assert "Traceback" not in err
    assert not out.exists()


def test_ctrl_c_in_evaluate_writes_no_result(tmp_path, shared_dir):
    samples = shared_dir / "reference-samples" / "ReflectionCoder-DS-6.7B" / "humaneval.jsonl"
    if not samples.is_file():
        pytest.skip(f"{samples} not found")
    out = tmp_path / "out" / "result.json"
    argv = _cli("evaluate", "--task", "humaneval", "--samples", str(samples), "--json", str(out),
                "--data-dir", str(shared_dir / "evaldata"))  # fmt: skip
    rc, err = _interrupt_when(argv, "outputs:")
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == "reflectioncoder evaluate: interrupted"
    assert "Traceback" not in err
    assert not out.parent.exists()


@pytest.mark.slow  # ~30 s: imports torch and trains until the first progress line
def test_ctrl_c_in_train_keeps_what_it_wrote_whole(files, tmp_path):
    out = tmp_path / "run"
    data = write_toy_jsonl(tmp_path / "d.jsonl", 40, seed=1)
    argv = _cli(
        "train", "--preset", "tiny", "--set", f"data.files=[{data}]",
        "--set", f"checkpoint.out_dir={out}", "--set", "logging.print_every=1",
        "--set", "train.samples_per_step=2", "--set", "model.tokenizer_vocab_size=300",
    )  # fmt: skip
    rc, err = _interrupt_when(argv, "train: 2/")
    assert rc == 130, err
    assert err.strip().splitlines()[-1].startswith("reflectioncoder train: interrupted; --resume")
    assert "Traceback" not in err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))


@pytest.mark.slow  # ~20 s on a busy machine: inspect imports torch
def test_closed_pipe_is_quiet(files):
    cmd = " ".join(_cli("inspect", "--data", str(files["good"]), "--tokenizer", str(files["tok"])))
    proc = subprocess.run(
        f"{cmd} | head -1", shell=True, capture_output=True, text=True, env=ENV, timeout=120
    )
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_debug_shows_the_traceback(files):
    argv = _cli("evaluate", "--task", "humaneval", "--samples", str(files["missing"]))
    quiet = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120)
    loud = subprocess.run([*argv, "--debug"], capture_output=True, text=True, env=ENV, timeout=120)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr
