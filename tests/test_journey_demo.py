"""``make demo``'s module behind the same error boundary as every command: a bad option is one
line (exit 2), Ctrl-C prints ``interrupted`` and exits 130; neither shows a traceback. A second
demo started where a run trains is refused instead of deleting that run's folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from reflectioncoder import demo
from reflectioncoder.testing.cli import ctrl_c_reaches, train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl


def test_a_bad_option_is_one_line(tmp_path, capsys):
    assert demo.main(["--n", "1", "--out", str(tmp_path / "demo")]) == 2
    assert capsys.readouterr().err == (
        "python -m reflectioncoder.demo: --n: the demo needs at least 2 samples, got 1\n"
    )
    assert not (tmp_path / "demo").exists()


def test_ctrl_c_while_the_demo_builds_its_data(tmp_path):
    argv = [sys.executable, "-m", "reflectioncoder.demo", "--out", str(tmp_path / "demo")]
    argv += ["--n", "40", "--workers", "2", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True, preexec_fn=ctrl_c_reaches,
    )  # fmt: skip
    for line in proc.stdout:  # the first step's header: the sandboxed runs start
        if line.startswith("[1/5]"):
            break
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err == "python -m reflectioncoder.demo: interrupted\n"


@pytest.mark.slow  # ~30 s: a run trains in the demo's folder while the demo builds its data
def test_a_demo_does_not_delete_a_run_training_in_its_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    data = write_toy_jsonl(tmp_path / "data.jsonl", 16, seed=0)
    sets = {"data.files": f"[{data}]", "checkpoint.out_dir": out / "train"}
    sets.update({"train.samples_per_step": 1, "train.epochs": 100, "logging.print_every": 1})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    first = subprocess.Popen(  # an earlier `make demo` still training, say
        [sys.executable, "-m", "reflectioncoder.cli", *train_argv(sets)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
        preexec_fn=ctrl_c_reaches,
    )  # fmt: skip
    try:
        for line in first.stderr:
            if line.startswith("train: "):
                break
        assert first.poll() is None
        # a run of other data than the demo's: refused before any work (journey5), and a
        # demo's own run still training there by the run folder's lock
        assert demo.main(["--out", str(out), "--n", "20", "--workers", "2", "--no-progress"]) == 2
        assert capsys.readouterr().err == (
            f"python -m reflectioncoder.demo: --out: {out / 'train'} holds a training run that "
            "is not a demo's; the demo would delete it: choose another --out\n"
        )
        assert first.poll() is None and (out / "train" / "config.yaml").is_file()
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    steps = [json.loads(line)["step"] for line in (out / "train" / "metrics.jsonl").open()]
    assert steps == list(range(1, len(steps) + 1))  # one run's rows, none lost or mixed
