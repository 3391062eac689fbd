"""``evaluate --task multiple --languages d`` where D's toolchain is not installed exited 1 ("no
MultiPL-E language runs here"), where ``--task multiple-d`` exits 3, the status the docs give a
script to tell "skipped: its toolchain is missing" from a failure. Both now exit 3 with one line,
write nothing, and ``evaluate --help`` lists the exit statuses."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main
from reflectioncoder.eval import multiple as ml


@pytest.fixture
def no_d_toolchain(monkeypatch):
    real = ml.toolchain_problem

    def problem(lang: str) -> str | None:
        return f"multiple-{lang}: unavailable, ldc2 not installed" if lang == "d" else real(lang)

    monkeypatch.setattr(ml, "toolchain_problem", problem)


@pytest.mark.parametrize("task", [["multiple-d"], ["multiple", "--languages", "d"]])
def test_a_language_whose_toolchain_is_missing_exits_3(no_d_toolchain, tmp_path, capsys, task):
    samples = tmp_path / "d.jsonl"
    samples.write_text('{"language": "d", "task_id": "HumanEval_0_has_close_elements", '
                       '"completion": "}"}\n')  # fmt: skip
    argv = ["evaluate", "--task", *task, "--samples", str(samples), "--json", str(tmp_path / "r")]
    assert main(argv) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "ldc2 not installed" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_the_help_gives_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "3 nothing scored because the toolchain" in " ".join(capsys.readouterr().out.split())
