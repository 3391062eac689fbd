"""The summariser: verdicts to pass@k per benchmark row and the per-sample details table (one
path for HumanEval, MBPP and each MultiPL-E language), and the table ``evaluate`` prints."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["estimate_pass_at_k", "print_table", "summarise"]


def estimate_pass_at_k(n: Sequence[int], c: Sequence[int], k: int) -> np.ndarray:
    """Unbiased pass@k per task: 1 - C(n - c, k) / C(n, k) (Chen et al. 2021)."""
    out = []
    for ni, ci in zip(n, c, strict=True):
        if ci < 0 or ci > ni:
            raise ValueError(f"c must be in [0, n], got n={ni}, c={ci}")
        if ni - ci < k:
            out.append(1.0)
        else:
            out.append(1.0 - float(np.prod(1.0 - k / np.arange(ni - ci + 1, ni + 1))))
    return np.array(out, dtype=np.float64)


def _detail(result: Any) -> dict:
    """A verdict's row of the details table: its fields but the task's id, the run time last
    as ``seconds`` (verdicts are dataclasses that end with ``duration_s``)."""
    row = dataclasses.asdict(result)
    del row["task_id"]
    row["seconds"] = round(row.pop("duration_s"), 3)
    return row


def summarise(
    results: Iterable[Any],
    rows: dict[str, Callable[[Any], bool]],
    ks: Iterable[int],
    *,
    prefix: str = "",
) -> tuple[dict[str, dict[str, float]], dict[str, list[dict]]]:
    """``(scores, details)`` of one benchmark's verdicts: for each row name, pass@k of the
    verdicts ``rows[name]`` says passed (for each k that every task's samples allow), and the
    details table, task id (after ``prefix``) to its samples' rows."""
    per_task: dict[str, list] = {}
    for r in results:
        per_task.setdefault(r.task_id, []).append(r)
    n = [len(v) for v in per_task.values()]
    scores = {}
    for name, passed in rows.items():
        c = [sum(map(passed, v)) for v in per_task.values()]
        scores[name] = {
            f"pass@{k}": float(estimate_pass_at_k(n, c, k).mean()) for k in ks if min(n) >= k
        }
    details = {prefix + tid: [_detail(r) for r in v] for tid, v in per_task.items()}
    return scores, details


def print_table(result: dict) -> None:
    """A short table: one row per benchmark, one column per pass@k."""
    scores = result["scores"]
    ks = sorted({k for v in scores.values() for k in v}, key=lambda s: int(s.split("@")[1]))
    width = max(len(name) for name in scores) + 2
    print(f"{'benchmark':<{width}}" + "".join(f"{k:>10}" for k in ks))
    for name, vals in scores.items():
        print(
            f"{name:<{width}}"
            + "".join(f"{100 * vals[k]:>10.1f}" if k in vals else f"{'-':>10}" for k in ks)
        )
    n_samples = sum(len(v) for v in result["details"].values())
    print(
        f"{len(result['details'])} tasks, {n_samples} samples, {result['seconds']} s, "
        f"sandbox: {result['isolation']}"
    )
