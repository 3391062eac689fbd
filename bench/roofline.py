"""Roofline model of the fused reflection loss (forward + backward) on a GPU, no GPU needed.

    python -m bench.roofline                       # headline shape and V=32000, H100 and H200
    python -m bench.roofline --json                # the same rows as a JSON list
    python -m bench.roofline --json > bench/results/roofline.json   # the committed rows
    python -m bench.roofline --n 8192 --d 4096 --v 128256 --card H200 --dtype bf16
    python -m bench.roofline --calibrate           # the model against published figures

Schedules (rows): ``pipelined`` (ours, the launcher's default on CUDA: kernels/fused_loss.py;
each chunk in two halves whose row passes run on a side stream beside the GEMMs),
``pipelined+epilogue`` (modelled only: the row statistics written by the logits GEMM's
epilogue, so the row pass reads the logits once), ``chunked`` (the previous default: one row
pass after each chunk's GEMM), ``gemm_ceiling`` (6 N D V at TC_EFF and nothing else: the bound
of every schedule built on such GEMMs), ``cutedsl_flce (CE only)`` (Liger's Hopper FLCE, CE
alone), ``atomic_tiles`` (the first kernel: one program per (vocabulary tile, row block), fp32
atomic adds into d h and d W), ``liger_flce+kl`` (Liger's Triton fused linear CE, its
chunking rule, plus a separate KL on the full logits of the pair rows),
``pipelined @ cuBLAS rates of PR #1356`` (the default with each GEMM at the rate cuBLAS was
published at on an H200 at this shape: 67.8-70.8% of peak; it reproduces our own measured H200
run of ``chunked`` within 1%) and ``fused_persistent @ PR #1422 rates (not built)`` (persistent
Hopper kernels, logits + statistics forward and a d z-on-load backward, at the rates Liger's
fused kernels were published at: what a schedule would need to pass 75%). The batch: N loss
rows, all in teacher/student pairs (P = N / 2), as a reflection batch is. The last column,
``gemm_eff_for_75pct``, is the one GEMM efficiency at which the schedule would reach 75%.

Each schedule is a list of kernels; each kernel has FLOPs, HBM bytes, L2 bytes and atomic
operations, and takes  max(FLOPs / (peak * TC_EFF), HBM bytes / (bandwidth * BW_EFF),
atomics / ATOMIC_RATE) + LAUNCH_S. The assumptions, stated once for every schedule and card:
- TC_EFF = 0.75: a large bf16 cuBLAS GEMM reaches 75% of the dense tensor-core peak (a kernel
  may carry its own rate, ``Kernel.tc_eff``, from a cited measurement: ``GemmRates``);
- BW_EFF = 0.85: streaming kernels reach 85% of the HBM bandwidth;
- LAUNCH_S = 5 us per kernel launch;
- ATOMIC_RATE: fenced fp32 atomic adds resolved at L2 (4e11/s on H100/H200, 2.5e11/s on A100).
  No public figure calibrates it; it matters only for the old atomic kernel.
- peak and bandwidth are the vendors' dense figures (CARDS); bf16 and fp16 GEMMs run on the
  tensor cores, fp32 GEMMs on the CUDA cores at the card's FP32 peak (PyTorch's fp32 matmul
  leaves TF32 off, and so does the project): --dtype fp32 at the bf16 rate was 10x too fast.
Calibration (``--calibrate``; bench/RESULTS.md): the same model applied to published runs of
others, with their shapes and schedules, against their published times (CALIBRATION, with the
sources). Useful FLOPs are 6 N D V (an unfused forward + backward); pct_of_peak is useful FLOPs
over the predicted time, as a share of the dense bf16 peak. Workspace is the memory beyond the
inputs, the gradients' own storage (d h, d W in the inputs' dtype) and the outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

# The model's parts, each in its own module, re-exported here where callers import them.
from bench.roofline_calibration import (
    CALIBRATION,
    SCHEDULES,
    calibration_markdown,
    calibration_rows,
)
from bench.roofline_kernels import (
    BW_EFF,
    CARDS,
    CUBLAS_H200_MS,
    DTYPE_BYTES,
    LAUNCH_S,
    PR1356,
    PR1422_BACKWARD_EFF,
    PR1422_FORWARD_EFF,
    PUBLISHED_RATES,
    TC_EFF,
    TRITON_EPILOGUE_RATES,
    TRITON_POINTER_EFF,
    TRITON_TMA_PERSISTENT_EFF,
    TRITONBENCH_894,
    Card,
    GemmRates,
    Kernel,
    Row,
    Schedule,
    _gemm,
    _overlapped,
    _stream,
    evaluate,
    gemm_eff_for,
)
from bench.roofline_schedules import (
    EPILOGUE_TILE_V,
    STATS_TILE_V,
    atomic_tiles,
    cce,
    chunked,
    cutedsl_flce,
    fused_persistent,
    gemm_ceiling,
    liger_flce,
    loss_alone,
    pipelined,
    torch_unfused,
)

__all__ = [
    "BW_EFF",
    "CALIBRATION",
    "CARDS",
    "CUBLAS_H200_MS",
    "Card",
    "DTYPE_BYTES",
    "EPILOGUE_TILE_V",
    "GemmRates",
    "Kernel",
    "LAUNCH_S",
    "PR1356",
    "PR1422_BACKWARD_EFF",
    "PR1422_FORWARD_EFF",
    "PUBLISHED_RATES",
    "Row",
    "SCHEDULES",
    "STATS_TILE_V",
    "Schedule",
    "TC_EFF",
    "TRITONBENCH_894",
    "TRITON_EPILOGUE_RATES",
    "TRITON_POINTER_EFF",
    "TRITON_TMA_PERSISTENT_EFF",
    "_gemm",
    "_overlapped",
    "_stream",
    "atomic_tiles",
    "calibration_markdown",
    "calibration_rows",
    "cce",
    "chunked",
    "cutedsl_flce",
    "evaluate",
    "fused_persistent",
    "gemm_ceiling",
    "gemm_eff_for",
    "liger_flce",
    "loss_alone",
    "main",
    "markdown",
    "model_rows",
    "pipelined",
    "torch_unfused",
]


def model_rows(n, d, v, dtype, card_name) -> list[Row]:
    """The schedules at one shape on one card; ``pipelined`` is the launcher's default."""
    e = DTYPE_BYTES[dtype]
    card = CARDS[card_name]
    return [
        evaluate("pipelined", pipelined(n, d, v, e), card, n, d, v, dtype, default=True),
        evaluate("chunked", chunked(n, d, v, e), card, n, d, v, dtype),
        evaluate("pipelined+epilogue", pipelined(n, d, v, e, epilogue=True), card, n, d, v, dtype),
        evaluate(
            "pipelined @ cuBLAS rates of PR #1356",
            pipelined(n, d, v, e, rates=PUBLISHED_RATES),
            *(card, n, d, v, dtype),
        ),
        evaluate(
            "fused_persistent @ PR #1422 rates (not built)",
            fused_persistent(n, d, v, e),
            *(card, n, d, v, dtype),
        ),
        evaluate(
            "pipelined+epilogue @ Triton z rate (#894), cuBLAS dh, dW",
            pipelined(n, d, v, e, epilogue=True, rates=TRITON_EPILOGUE_RATES),
            *(card, n, d, v, dtype),
        ),
        evaluate("gemm_ceiling", gemm_ceiling(n, d, v, e), card, n, d, v, dtype),
        evaluate("cutedsl_flce (CE only)", cutedsl_flce(n, d, v, e), card, n, d, v, dtype),
        evaluate("atomic_tiles", atomic_tiles(n, d, v, e, card), card, n, d, v, dtype),
        evaluate("liger_flce+kl", liger_flce(n, d, v, e, n // 2), card, n, d, v, dtype),
    ] + [
        evaluate(name, sched, card, n, d, v, dtype, passes=1)
        for name, sched in (
            (
                "loss alone: gemm_rows @ cuBLAS rate (PR #1356)",
                loss_alone(n, d, v, e, rates=PUBLISHED_RATES.logits),
            ),
            (
                "loss alone: stats_epilogue @ Triton TMA-persistent rate (#894)",
                loss_alone(n, d, v, e, rates=TRITON_TMA_PERSISTENT_EFF, epilogue=True),
            ),
            (
                "loss alone: stats_epilogue @ Triton pointer rate (#894 / 1.134)",
                loss_alone(n, d, v, e, rates=TRITON_POINTER_EFF, epilogue=True),
            ),
        )
    ]


def markdown(rows: list[Row]) -> str:
    head = (
        "| schedule | default | card | N | D | V | dtype | useful TFLOP | executed TFLOP | "
        "HBM GB | L2 GB | atomics | workspace MiB | predicted ms | % of peak | "
        "GEMM eff for 75% |\n" + "| --- " * 16 + "|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r.schedule} | {'yes' if r.default else ''} | {r.card} | {r.N} | {r.D} | {r.V} "
            f"| {r.dtype} | {r.useful_flops / 1e12:.1f} | {r.executed_flops / 1e12:.1f} "
            f"| {r.hbm_bytes / 1e9:.1f} | {r.l2_bytes / 1e9:.1f} | {r.atomic_ops:.2e} "
            f"| {r.workspace_bytes / 2**20:.0f} | {r.predicted_ms:.1f} | {r.pct_of_peak:.1f} "
            f"| {'-' if r.gemm_eff_for_75pct is None else f'{100 * r.gemm_eff_for_75pct:.1f}%'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[16384], help="loss rows")
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--v", type=int, nargs="+", default=[128256, 32000])
    parser.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bf16")
    parser.add_argument("--card", choices=sorted(CARDS), nargs="+", default=["H100", "H200"])
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows")
    parser.add_argument("--calibrate", action="store_true", help="the published-figures table")
    args = parser.parse_args(argv)
    for name, values in (("--n", args.n), ("--v", args.v), ("--d", [args.d])):
        if any(x < 1 for x in values):
            print(f"roofline: {name} must be positive, got {values}", file=sys.stderr)
            return 2
    if args.calibrate:
        rows = calibration_rows()
        print(json.dumps(rows, indent=1) if args.json else calibration_markdown(rows))
        return 0
    rows = [
        row
        for card in args.card
        for v in args.v
        for n in args.n
        for row in model_rows(n, args.d, v, args.dtype, card)
    ]
    print(json.dumps([asdict(r) for r in rows], indent=1) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
