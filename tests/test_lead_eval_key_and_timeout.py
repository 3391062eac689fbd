"""Two leftovers of the second red-team round (redteam2):

- ``evaluate --backend openai`` takes its key from ``$OPENAI_API_KEY`` as build-data does, and
  only from there: a key on a command line is readable by every process on the machine, so
  ``--api-key`` is refused in one line naming the variable;
- a MultiPL-E run that coreutils' ``timeout`` killed is a timeout at every sandbox level: the
  fallback level sees the kill as exit -9, bubblewrap's shell as 137 (Go's timing-out sample was
  labelled "fail" under ``REFLECTIONCODER_SANDBOX=rlimits``).
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
from test_eval_generate import _Stub

from reflectioncoder.cli import main as cli_main
from reflectioncoder.eval import multiple as ml
from reflectioncoder.eval.cli import add_arguments, main
from reflectioncoder.testing.http_stub import serving


class _Recorder(_Stub):
    """The openai stub of test_eval_generate, keeping each request's Authorization header."""

    keys: list[str | None] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        _Recorder.keys.append(self.headers.get("Authorization"))
        super().do_POST()


def _evaluate_through_stub(tmp_path, shared_dir, *extra: str) -> list[str | None]:
    _Recorder.keys = []
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    kept = list(_Stub.requests)  # test_eval_generate counts the requests its stub saw
    try:
        with serving(_Recorder, threaded=False) as base:
            argv = ["--task", "mbpp", "--model", "stub", "--backend", "openai", "--limit", "1"]
            argv += ["--base-url", base + "/v1", "--base-only", "--data-dir"]
            argv += [str(shared_dir / "evaldata"), "--json", str(tmp_path / "r.json")]
            assert main(parser.parse_args([*argv, *extra, "--no-progress"])) == 0
    finally:
        _Stub.requests[:] = kept
    return _Recorder.keys


def test_the_key_comes_from_the_environment(tmp_path, shared_dir, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert _evaluate_through_stub(tmp_path, shared_dir) == ["Bearer sk-from-env"]


@pytest.mark.parametrize("flag", [["--api-key", "sk-flag"], ["--api-key=sk-flag"], ["--api-key"]])
def test_a_key_on_the_command_line_is_refused_naming_the_variable(flag, capsys):
    """A command line is readable by every process on the machine: --api-key is gone, and
    giving it says, in one line that does not repeat the key, where the key goes."""
    argv = ["evaluate", "--task", "mbpp", "--model", "stub", "--backend", "openai", *flag]
    with pytest.raises(SystemExit) as exited:  # argparse's exit, as for any bad flag
        cli_main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sk-flag" not in err[0], err
    assert err[0].startswith("reflectioncoder evaluate: --api-key is no longer taken")
    assert "set OPENAI_API_KEY" in err[0]


def test_no_key_sends_no_header(tmp_path, shared_dir, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert _evaluate_through_stub(tmp_path, shared_dir) == [None]


@pytest.mark.parametrize("exit_code", [137, -9])
def test_a_run_timeout_killed_is_a_timeout_at_every_level(exit_code):
    lang = ml.LANGUAGES["go"]
    killed = SimpleNamespace(
        timed_out=False,
        exit_code=exit_code,
        ok=False,
        ending=None,
        stdout="",
        stderr=f"{ml._RUN_TIMEOUT_NOTE}\n",
    )
    assert ml.verdict(lang, killed, "nonce")[0] == "timeout"
    # a program that was killed without `timeout`'s note is not a timeout
    other = SimpleNamespace(**{**vars(killed), "stderr": "Killed\n"})
    assert ml.verdict(lang, other, "nonce")[0] == "fail"
