"""metrics.step_rows: what the demo's and the benches' figures read from a metrics.jsonl."""

from __future__ import annotations

import json

from reflectioncoder.train.metrics import step_rows


def test_step_rows_leave_out_skipped_steps_and_held_out_rows(tmp_path):
    rows = [
        {"step": 1, "loss": 2.5, "skipped": False},
        {"step": 2, "loss": float("nan"), "skipped": True},
        {"step": 2, "val_loss": 2.4, "val_ce": 2.3},  # the held-out pass's row
        {"step": 3, "loss": 2.2, "skipped": False},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')  # torn
    assert [r["step"] for r in step_rows(path)] == [1, 3]
