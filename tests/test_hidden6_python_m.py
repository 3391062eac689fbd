"""``python -m reflectioncoder`` is the console script: same version, same one-line errors and
exit codes (2 for usage), not "No module named reflectioncoder.__main__"."""

import os
import subprocess
import sys


def _run(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "reflectioncoder", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "REFLECTIONCODER_DEBUG": ""},
    )


def test_python_m_reflectioncoder_is_the_cli(tmp_path):
    version = _run("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("reflectioncoder "), version
    usage = _run("train", "--set", "optim.lr", cwd=tmp_path)
    assert usage.returncode == 2, usage
    line = usage.stderr.strip()
    assert line.startswith("reflectioncoder train:") and len(line.splitlines()) == 1, line
    assert "Traceback" not in usage.stderr
    helped = _run("--help", cwd=tmp_path)
    assert helped.returncode == 0 and "evaluate" in helped.stdout
