"""Under torchrun, a rank's one-line error is also written where torchrun's elastic agent reads a
failed rank's error ($TORCHELASTIC_ERROR_FILE): its failure report (``ChildFailedError``) then
ends with our line as the failure's ``traceback``, where it said "To enable traceback see:
https://pytorch.org/docs/stable/elastic/errors.html" and nothing of the error. A bad flag
(argparse's error) is said once too. A rank other than a node's local rank 0 that the launcher
ends (SIGTERM, once one rank failed) exits quietly: the error line stays the last line of ours."""

from __future__ import annotations

import pytest
from test_dsvalues_ranks import _bad_json_argv

from reflectioncoder.cli import guarded, main
from reflectioncoder.errors import Terminated

errors = pytest.importorskip("torch.distributed.elastic.multiprocessing.errors")


@pytest.mark.parametrize("local_rank", ["0", "1"])
def test_the_error_line_is_what_torchrun_reports_for_the_rank(
    tmp_path, capsys, monkeypatch, local_rank
):
    error_file = tmp_path / "attempt_0" / local_rank / "error.json"
    error_file.parent.mkdir(parents=True)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    argv, expected = _bad_json_argv(tmp_path)
    assert main(argv) == 2
    printed = capsys.readouterr().err.strip().splitlines()
    failure = errors.ProcessFailure(
        local_rank=int(local_rank), pid=1, exitcode=2, error_file=str(error_file)
    )  # what torchrun's agent makes of the rank's exit
    report = errors.ChildFailedError("reflectioncoder.cli", {0: failure}).format_msg()
    traceback = [line for line in report.splitlines() if "traceback :" in line]
    assert len(traceback) == 1 and f"reflectioncoder train: {expected}" in traceback[0], report
    assert printed == (traceback[0].split("traceback : ")[1:] if local_rank == "0" else [])


@pytest.mark.parametrize("local_rank", ["0", "1"])
def test_a_bad_flag_is_said_once_and_reported_to_torchrun(
    tmp_path, capsys, monkeypatch, local_rank
):
    """argparse's error (a mistyped flag: the same on every rank) as any other exit-2 error."""
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    with pytest.raises(SystemExit) as exited:
        main(["train", "--preset", "tiny", "--reusme"])
    line = (
        "reflectioncoder train: unrecognized arguments: --reusme (see reflectioncoder train --help)"
    )
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == ([line] if local_rank == "0" else [])
    failure = errors.ProcessFailure(local_rank=0, pid=1, exitcode=2, error_file=str(error_file))
    assert failure.message["message"] == line


def test_no_launcher_no_error_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    argv, _ = _bad_json_argv(tmp_path)
    assert main(argv) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "ds.json"]


@pytest.mark.parametrize(("local_rank", "said"), [("0", ["prog: terminated"]), ("1", [])])
def test_a_rank_the_launcher_ends_is_quiet_but_local_rank_0(capsys, monkeypatch, local_rank, said):
    monkeypatch.setenv("LOCAL_RANK", local_rank)

    def ended() -> int:
        raise Terminated

    assert guarded("prog", ended) == 143
    assert capsys.readouterr().err.strip().splitlines() == said
