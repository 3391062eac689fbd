"""`build-data --problems` said "0 s left" and then took 9 s more: its problems run several at a
time, and once every problem left is running the rate of those done says nothing about when the
last ones end (a hanging reference takes its whole time limit). The progress then says how many
are still running instead of a time left; a resumed run's rate counts only its own problems."""

from __future__ import annotations

import json
from pathlib import Path

import reflectioncoder.construct.from_problems as from_problems
import reflectioncoder.progress as progress
from reflectioncoder.construct.backend import MutationBackend

PROBLEMS = Path(__file__).resolve().parents[1] / "examples" / "problems.jsonl"


def _plain_lines(monkeypatch) -> None:
    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    monkeypatch.setattr(progress, "_enabled", True)


def test_no_time_left_once_every_item_left_is_running(monkeypatch, capsys):
    _plain_lines(monkeypatch)
    clock = iter([100.0, 101.0, 102.0, 103.0, 120.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    bar = progress.Progress(4, "problems", unit="problem", every=1, parallel=2)
    for _ in range(4):
        bar.update(1)
    assert capsys.readouterr().err.splitlines() == [
        "problems: 1/4 problems  (1 s, 3 s left)",  # 3 waiting, 2 running: the rate tells
        "problems: 2/4 problems  (2 s, the last 2 running)",
        "problems: 3/4 problems  (3 s, the last 1 running)",
        "problems: 4/4 problems  (20 s)",  # the last one hung: no estimate had promised less
    ]


def test_the_terminal_bar_drops_its_guess_for_the_last_items(monkeypatch):
    monkeypatch.setattr(progress, "is_terminal", lambda: True)
    monkeypatch.setattr(progress, "_enabled", True)
    bar = progress.Progress(4, "problems", unit="problem", parallel=2)
    bar.update(1)
    assert "<" in str(bar._bar)  # tqdm's "elapsed<remaining" while items wait
    bar.update(1)
    assert "<" not in str(bar._bar) and "the last 2 running" in str(bar._bar)
    bar.update(2)
    assert "running" not in str(bar._bar)
    bar.close()


def _problems(path: Path, ids: list[str]) -> Path:
    rows = [json.loads(line) for line in PROBLEMS.read_text().splitlines()[:12]]
    by_id = {row["id"]: row for row in rows}
    path.write_text("".join(json.dumps(by_id[i]) + "\n" for i in ids))
    return path


def test_build_data_promises_no_time_while_a_hanging_problem_runs(tmp_path, monkeypatch, capsys):
    _plain_lines(monkeypatch)
    problems = _problems(tmp_path / "p.jsonl", ["hangs", "sum_even"])
    out = tmp_path / "out.jsonl"
    from_problems.build_from_problems(problems, out, MutationBackend(), workers=2, timeout_s=1)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("problems: 1/2 problems  (") and "the last 1 running" in lines[0]
    assert not any(" left)" in line for line in lines), lines

    # resumed with one more problem: the rate counts only this run's problem, not the 2 before
    bars = []
    monkeypatch.setattr(from_problems, "Progress", lambda *a, **k: bars.append(k) or _Quiet())
    problems = _problems(tmp_path / "p.jsonl", ["hangs", "sum_even", "clamp"])
    from_problems.build_from_problems(problems, out, MutationBackend(), workers=2, timeout_s=1)
    assert (bars[0]["initial"], bars[0]["parallel"]) == (2, 2)


class _Quiet:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
