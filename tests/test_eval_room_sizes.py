"""Issue 21: no file in reflectioncoder/eval/ over ~450 lines (rooms of a few hundred lines
each). Round 5's sandbox additions took process.py to 454 and guards.py to 451 unnoticed."""

from __future__ import annotations

from pathlib import Path

EVAL = Path(__file__).resolve().parents[1] / "reflectioncoder" / "eval"
MOST_LINES = 450


def test_no_eval_file_is_over_the_rooms_size():
    sizes = {p: len(p.read_text().splitlines()) for p in EVAL.rglob("*.py")}
    assert len(sizes) > 20  # the package, found
    over = [f"{p.relative_to(EVAL)}: {n}" for p, n in sizes.items() if n > MOST_LINES]
    assert not over, f"over {MOST_LINES} lines: {over}"
