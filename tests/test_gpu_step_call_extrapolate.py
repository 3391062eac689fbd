"""bench/gpu_step_call.py's 32-layer figures (issue 19, item 5): linear in the layers from the
2- and 4-layer rows, MFU / HFU from the extrapolated FLOPs and time, samples/s against the
recipe's; and a case whose 4 layers were not slower than its 2 (noise, as in a toy dry run)
gets no figure rather than a negative time or a ratio of -50x."""

from __future__ import annotations

import pytest

from bench.gpu_step_call import extrapolate, markdown


def _row(case: str, layers: int, step_s: float, flops: float, samples: int = 8) -> dict:
    return {
        "case": case,
        "layers": layers,
        "step_s": step_s,
        "samples_per_s": samples / step_s,
        "model_flops": flops,
        "hardware_flops": 1.5 * flops,
        "profile_s": {"gemm": 0.1},
        "peak_mib": None,
        "syncs_in_a_step": 1,
    }


def test_linear_in_the_layers_and_against_the_recipe():
    rows = [_row("trainer", 2, 1.0, 10.0), _row("trainer", 4, 1.5, 18.0),
            _row("recipe", 2, 2.0, 12.0), _row("recipe", 4, 3.0, 22.0)]  # fmt: skip
    trainer, recipe = extrapolate(rows, peak_flops=100.0)
    assert trainer["step_s"] == pytest.approx(1.0 + 15 * 0.5)  # 8.5 s at 32 layers
    assert trainer["model_flops"] == pytest.approx(10.0 + 15 * 8.0)
    assert trainer["mfu"] == pytest.approx(130.0 / (8.5 * 100.0))
    assert trainer["hfu"] == pytest.approx(195.0 / (8.5 * 100.0))
    assert recipe["step_s"] == pytest.approx(17.0)
    assert trainer["samples_per_s_vs_recipe"] == pytest.approx(17.0 / 8.5)
    assert recipe["samples_per_s_vs_recipe"] == pytest.approx(1.0)


def test_a_case_not_slower_at_four_layers_gets_no_figure():
    rows = [_row("trainer", 2, 1.0, 10.0), _row("trainer", 4, 0.9, 18.0),
            _row("recipe", 2, 2.0, 12.0), _row("recipe", 4, 3.0, 22.0)]  # fmt: skip
    trainer, recipe = extrapolate(rows, peak_flops=100.0)
    assert trainer["step_s"] is None and "not extrapolated" in trainer["note"]
    assert "mfu" not in trainer and "samples_per_s_vs_recipe" not in trainer
    assert recipe["samples_per_s_vs_recipe"] == pytest.approx(1.0)
    text = markdown(rows, [trainer, recipe], "CPU", {})
    assert "| trainer | not extrapolated: 4 layers not slower than 2 | - | - | - |" in text


def test_a_case_cut_short_after_one_depth_gets_no_figure():
    rows = [_row("trainer", 2, 1.0, 10.0), _row("recipe", 2, 2.0, 12.0),
            _row("recipe", 4, 3.0, 22.0)]  # fmt: skip
    trainer, recipe = extrapolate(rows, peak_flops=100.0)
    assert trainer["step_s"] is None and "one depth measured" in trainer["note"]
    assert recipe["step_s"] == pytest.approx(17.0)


def test_the_call_keeps_its_table_when_a_case_is_stopped_or_not_started(tmp_path):
    """A case stopped at its limit, and cases the budget leaves no room for, are listed in the
    JSON and the table the call writes (never an empty or missing file)."""
    import json

    from bench.gpu_step_call import main

    out = tmp_path / "step_call.json"
    args = ["--dry-run", "--steps", "1", "--out", str(out), "--cases", "recipe"]
    assert main([*args, "--case-limit-s", "0.5"]) == 1  # its process cannot even start
    result = json.loads(out.read_text())
    assert result["rows"] == [] and "stopped at its limit" in result["stopped"]["recipe"]
    assert "cut short, recipe: stopped at its limit" in out.with_suffix(".md").read_text()
    assert main([*args, "--budget-s", "5"]) == 1
    assert "not started" in json.loads(out.read_text())["stopped"]["recipe"]
