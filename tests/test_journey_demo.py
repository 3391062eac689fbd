"""``make demo``'s module behind the same error boundary as every command: a bad option is one
line (exit 2), Ctrl-C prints ``interrupted`` and exits 130; neither shows a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from reflectioncoder import demo
from reflectioncoder.testing.cli import ctrl_c_reaches


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
