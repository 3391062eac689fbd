"""bench/roofline.py as issue 8 states it: "for any (N, D, V, dtype, card) and the schedule the
launcher would use", every row's figures agree with one another (useful FLOPs 6 N D V,
pct_of_peak = useful FLOPs over predicted time, workspace = the sum of its tensors), the
default schedule is the one the launcher runs (its chunk rows from the launcher's own budget,
no atomics, under 1 GiB at the headline shape), and a dtype's GEMMs are not timed faster than
the card can run that dtype."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
from reflectioncoder.kernels.fused_loss_schedule import GPU_BUDGET  # noqa: E402

from bench.roofline import CARDS, DTYPE_BYTES  # noqa: E402
from bench.roofline import main as roofline_main  # noqa: E402

# Dense peaks, TFLOP/s, from the vendors' data sheets: FP32 without tensor cores (PyTorch's
# fp32 matmul default: TF32 off; the project never turns it on) and 16-bit tensor cores.
FP32_TFLOPS = {"H100": 67.0, "H200": 67.0, "A100": 19.5}
HALF_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _rows(capsys, *args: str) -> list[dict]:
    assert roofline_main(["--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


SHAPES = [
    ("16384", "4096", "128256", "bf16", "H100"),
    ("1000", "512", "50000", "fp16", "A100"),
    ("3000", "2048", "32000", "fp32", "H200"),
    ("7", "64", "1000", "bf16", "H200"),
]


@pytest.mark.parametrize("n, d, v, dtype, card", SHAPES)
def test_every_row_is_consistent(capsys, n, d, v, dtype, card):
    rows = _rows(capsys, "--n", n, "--d", d, "--v", v, "--dtype", dtype, "--card", card)
    n, d, v = int(n), int(d), int(v)
    assert [r["schedule"] for r in rows if r["default"]] == ["pipelined"]
    for r in rows:
        assert (r["N"], r["D"], r["V"], r["dtype"], r["card"]) == (n, d, v, dtype, card)
        passes = 1 if r["schedule"].startswith("loss alone") else 3
        assert r["useful_flops"] == passes * 2 * n * d * v, r["schedule"]
        peak = CARDS[card].bf16_tflops * 1e12
        pct = 100 * r["useful_flops"] / (r["predicted_ms"] * 1e-3) / peak
        assert r["pct_of_peak"] == pytest.approx(pct, rel=1e-9), r["schedule"]
        assert r["workspace_bytes"] == sum(r["workspace"].values()), r["schedule"]
        assert r["predicted_ms"] > 0 and r["hbm_bytes"] > 0 or r["schedule"] == "gemm_ceiling"
    default = next(r for r in rows if r["default"])
    assert default["atomic_ops"] == 0
    assert default["executed_flops"] >= default["useful_flops"]


@pytest.mark.parametrize("dtype", sorted(DTYPE_BYTES))
@pytest.mark.parametrize("v", [128256, 32000])
def test_default_schedule_holds_the_launchers_chunk(capsys, dtype, v):
    """The logits buffer the model counts is the one the launcher allocates on CUDA: the GPU
    budget's rows at this vocabulary and element size."""
    rows = _rows(capsys, "--v", str(v), "--dtype", dtype, "--card", "H100")
    default = next(r for r in rows if r["default"])
    e = DTYPE_BYTES[dtype]
    assert default["workspace"]["logits (rows, V)"] == GPU_BUDGET.rows(v, e) * v * e
    assert default["workspace_bytes"] < 2**30


@pytest.mark.parametrize("card", sorted(CARDS))
@pytest.mark.parametrize("dtype", sorted(DTYPE_BYTES))
def test_no_dtype_runs_faster_than_its_peak(capsys, card, dtype):
    """6 N D V FLOPs cannot take less time than the card's dense peak for that dtype allows:
    fp32 GEMMs (no TF32) run on the CUDA cores, at about 1/15 of the bf16 tensor-core rate."""
    n, d, v = 16384, 4096, 128256
    rows = _rows(capsys, "--dtype", dtype, "--card", card, "--v", str(v))
    peak = (FP32_TFLOPS if dtype == "fp32" else HALF_TFLOPS)[card] * 1e12
    floor_ms = 6.0 * n * d * v / peak * 1e3
    for r in rows:
        if r["schedule"].startswith("loss alone"):
            continue
        assert r["predicted_ms"] >= floor_ms * 0.999, (r["schedule"], r["predicted_ms"], floor_ms)


def test_committed_figures_are_the_models(capsys):
    """bench/results/roofline.json (the JSON rows RESULTS.md points to) is what
    `python -m bench.roofline --json` prints today, and RESULTS.md's table holds the default
    schedule's rows as the model prints them."""
    now = _rows(capsys)
    saved = json.loads((REPO_ROOT / "bench" / "results" / "roofline.json").read_text("utf-8"))
    key = lambda r: (r["schedule"], r["card"], r["N"], r["V"])  # noqa: E731
    assert sorted(map(key, saved)) == sorted(map(key, now)), "stale bench/results/roofline.json"
    saved = {key(r): r for r in saved}
    for r in now:
        for field in ("predicted_ms", "pct_of_peak", "workspace_bytes", "atomic_ops"):
            assert saved[key(r)][field] == pytest.approx(r[field], rel=1e-9), (key(r), field)
    assert roofline_main([]) == 0
    table = capsys.readouterr().out.splitlines()
    results = (REPO_ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    defaults = [line for line in table if line.startswith("| pipelined | yes |")]
    assert len(defaults) == 4
    assert all(line in results for line in defaults), "RESULTS.md's model table is stale"
