"""A path that exists but is not a regular file (/dev/null, a named pipe) given where a file is
expected is named as such, in one line, not as "not found" (which sends the user hunting a typo)."""

import os
import subprocess
import sys

import pytest

CASES = [
    ["train", "--preset", "tiny", "--config", "{path}", "--print-config"],
    ["evaluate", "--task", "humaneval", "--samples", "{path}"],
    ["inspect", "--data", "{path}", "--tokenizer", "{path}"],
]


def _run(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "reflectioncoder.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "REFLECTIONCODER_DEBUG": ""},
    )


@pytest.mark.parametrize("argv", CASES, ids=lambda a: a[0])
@pytest.mark.parametrize("kind", ["devnull", "fifo"])
def test_a_non_regular_file_is_named_not_missing(argv, kind, tmp_path):
    if kind == "devnull":
        path = os.devnull
    else:
        path = str(tmp_path / "pipe.jsonl")
        os.mkfifo(path)
    proc = _run([a.format(path=path) for a in argv], tmp_path)
    err = proc.stderr.strip()
    assert proc.returncode in (1, 2), err
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, err
    assert "not found" not in err and "not a regular file" in err, err
    assert path in err, err
