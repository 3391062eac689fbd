"""bench/bench_engines.py's step choice (issue 19, item 1): tokens/s, samples/s, MFU and HFU of
a case all come from the same steps, every one after the first (the warm-up), never the
first step's tokens beside the last step's MFU."""

from __future__ import annotations

import pytest

from bench.bench_engines import summarise

PEAK = 1e12


def _row(step: int, tokens: int, samples: int, seconds: float, flops: float) -> dict:
    """A trainer metrics row as ``Trainer.train_step`` writes it (MFU / HFU over its seconds)."""
    return {
        "step": step,
        "tokens": tokens,
        "samples": samples,
        "time": seconds,
        "loss": 1.0 / step,
        "host_wait": 1e-3 * step,
        "mfu": flops / (seconds * PEAK),
        "hfu": 1.25 * flops / (seconds * PEAK),
    }


def test_every_figure_comes_from_the_steps_after_the_first():
    # the first step: a warm-up, slow and of other sizes; the later ones differ from each other
    rows = [_row(1, 10152, 48, 9.0, 5e12), _row(2, 7920, 48, 0.30, 6.0e12),
            _row(3, 7646, 48, 0.40, 5.8e12), _row(4, 7635, 47, 0.20, 5.7e12)]  # fmt: skip
    got = summarise(rows)
    timed = rows[1:]
    seconds = sum(r["time"] for r in timed)
    assert got["timed_steps"] == [2, 3, 4]
    assert got["step_s"] == pytest.approx(0.30)  # the median of the timed steps
    assert got["tokens"] == pytest.approx((7920 + 7646 + 7635) / 3)
    assert got["tokens_per_s"] == pytest.approx((7920 + 7646 + 7635) / seconds)
    assert got["samples_per_s"] == pytest.approx((48 + 48 + 47) / seconds)
    flops = 6.0e12 + 5.8e12 + 5.7e12
    assert got["mfu"] == pytest.approx(flops / (seconds * PEAK))  # the steps' total FLOPs
    assert got["hfu"] == pytest.approx(1.25 * flops / (seconds * PEAK))
    assert got["losses"] == [r["loss"] for r in rows]  # every step's loss, the first's too
    assert got["host_wait"] == pytest.approx(4e-3)


def test_one_step_is_its_own_figure():
    got = summarise([_row(1, 100, 2, 0.5, 1e12)])
    assert got["timed_steps"] == [1] and got["tokens_per_s"] == pytest.approx(200)
    assert got["host_wait"] is None


def test_without_a_known_peak_there_is_no_mfu():
    rows = [_row(k, 100, 2, 0.5, 1e12) for k in (1, 2)]
    for r in rows:  # the trainer's row has no mfu / hfu where the GPU's peak is unknown
        del r["mfu"], r["hfu"]
    got = summarise(rows)
    assert got["mfu"] is None and got["hfu"] is None
