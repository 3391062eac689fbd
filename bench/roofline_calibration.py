"""The roofline against published runs of others (``python -m bench.roofline --calibrate``):
each run's shape and schedule, its published time and source, and the model's error."""

from __future__ import annotations

from bench.roofline_kernels import (
    CARDS,
    CUBLAS_H200_MS,
    PR1356,
    PUBLISHED_RATES,
    Schedule,
    _gemm,
    evaluate,
)
from bench.roofline_schedules import cce, chunked, cutedsl_flce, liger_flce, torch_unfused

# Published figures of others: (label, card, schedule, N, D, V, published ms, source).
LIGER_CUTEDSL = (
    "Liger-Kernel PR commit 8ca11b28 (feat(cutedsl): Hopper CuTe DSL FLCE), "
    "benchmark/data/all_benchmark_data.csv, provider liger-cutedsl, full (fwd+bwd), "
    "H=4096 V=128256 bf16, NVIDIA H200, Liger 0.8.0"
)
TORCH_H200 = LIGER_CUTEDSL.replace("provider liger-cutedsl", "provider torch (unfused)")
LIGER_TRITON_A100 = (
    "Liger-Kernel main, benchmark/data/all_benchmark_data.csv, fused_linear_cross_entropy, "
    "provider liger, full, H=4096 V=128256 bf16, NVIDIA A100-SXM4-80GB, Liger 0.4.2 (2024-11-22)"
)
LIGER_TRITON_H200 = LIGER_CUTEDSL.replace("provider liger-cutedsl", "provider liger (Triton)")
LIGER_TP_H200 = (
    "Liger-Kernel PR #1422 (merged; Hopper tensor-parallel fused linear cross entropy), its "
    "benchmark table: H200 SXM, CUDA 12.9, TP=1, backward pass p50 (one persistent kernel: "
    "recomputed logits, dX and dW, 6 M H V FLOPs)"
)
LIGER_TP_H200_FW = LIGER_TP_H200.replace(
    "backward pass p50 (one persistent kernel: recomputed logits, dX and dW, 6 M H V FLOPs)",
    "forward pass p50 (one persistent kernel: logits GEMM with the softmax statistics in its "
    "epilogue, logits never written, 2 M H V FLOPs); ms = FLOPs / its TF/GPU",
)
PR1356_GEMMS = PR1356 + ', "GEMMs versus cuBLAS" at M = 4096, cuBLAS column, one GEMM each'
PR1356_PAIRED = PR1356 + ", paired optimisation result at M = 4096 (persistent logits + dW)"
PR1356_SWEEP = PR1356 + ", token-length sweep, CuTe DSL column (QuACK: 73.709 ms at BT = 16384)"
OURS_H200 = (
    "this repository, bench/RESULTS.md (H200 section): the chunked schedule (the default before "
    "pipelined), commit 3d82f92, 2026-11-30, CE + KL forward + backward, median of 5"
)
CCE_A100 = (
    "apple/ml-cross-entropy README, benchmark table (A100-SXM4 80 GB, PyTorch 2.4.1, CUDA 12.4; "
    "paper: 8,192 tokens, Gemma 2 2B: D=2304, V=256000, bf16), method cce"
)
CALIBRATION = (
    [
        ("Liger CuTe DSL FLCE", "H200", "cutedsl", bt, 4096, 128256, ms, LIGER_CUTEDSL)
        for bt, ms in ((1024, 6.553), (2048, 11.082), (4096, 21.216), (8192, 40.368))
    ]
    + [
        (
            "unfused torch (Liger's baseline)",
            "H200",
            "torch",
            bt,
            4096,
            128256,
            ms,
            TORCH_H200,
        )
        for bt, ms in ((1024, 5.511), (2048, 10.741), (4096, 21.353), (8192, 42.092))
    ]
    + [
        ("Liger FLCE (Triton) 0.4.2", "A100", "liger_0.4", bt, 4096, 128256, ms, LIGER_TRITON_A100)
        for bt, ms in ((4096, 121.431), (8192, 166.709), (16384, 277.117), (32768, 511.064))
    ]
    + [
        ("Liger FLCE (Triton) 0.8.0", "H200", "liger_0.8", bt, 4096, 128256, ms, LIGER_TRITON_H200)
        for bt, ms in ((1024, 138.541), (2048, 138.785), (4096, 140.765), (8192, 153.635))
    ]
    + [
        ("Liger Hopper FLCE, backward", "H200", "fused_bwd", m, 4096, v, ms, LIGER_TP_H200)
        for m, v, ms in ((2048, 131072, 8.589), (2048, 262144, 16.842))
    ]
    + [
        ("Cut Cross-Entropy, forward", "A100", "cce_fw", 8192, 2304, 256000, 46.4, CCE_A100),
        ("Cut Cross-Entropy, fwd+bwd", "A100", "cce", 8192, 2304, 256000, 134.8, CCE_A100),
    ]
    + [
        (f"cuBLAS {key} GEMM alone", "H200", f"gemm_{key}", 4096, 4096, 128256, ms, PR1356_GEMMS)
        for key, ms in CUBLAS_H200_MS.items()
    ]
    + [
        ("Liger CuTe DSL FLCE (PR #1356)", "H200", "cutedsl", bt, 4096, 128256, ms, src)
        for bt, ms, src in ((4096, 18.340, PR1356_PAIRED), (16384, 73.722, PR1356_SWEEP))
    ]
    + [
        (
            f"Liger Hopper FLCE, {what}",
            "H200",
            sched,
            8192,
            4096,
            v,
            round(flops / tf / 1e9, 2),
            src,
        )
        for what, sched, v, flops, tf, src in (
            ("backward", "fused_bwd", 131072, 6.0 * 8192 * 4096 * 131072, 762.8, LIGER_TP_H200),
            ("forward", "cce_fw", 262144, 2.0 * 8192 * 4096 * 262144, 788.3, LIGER_TP_H200_FW),
        )
    ]
    + [
        (f"ours, chunked, {label}", "H200", sched, 16384, 4096, v, ms, OURS_H200)
        for v, ms in ((128256, 79.06), (32000, 20.00))
        for label, sched in (("model's 75%", "ours_chunked"), ("PR #1356 rates", "ours_at_1356"))
    ]
)
SCHEDULES = {
    "cutedsl": cutedsl_flce,
    "torch": torch_unfused,
    "liger_0.4": lambda n, d, v, e: liger_flce(n, d, v, e, dw_add_fp32=False),
    "liger_0.8": liger_flce,
    "cce": cce,
    "fused_bwd": lambda n, d, v, e: Schedule(cce(n, d, v, e).kernels[1:]),
    "cce_fw": lambda n, d, v, e: cce(n, d, v, e, backward=False),
    "gemm_logits": lambda n, d, v, e: Schedule([_gemm("z = h W^T", n, v, d, e)]),
    "gemm_dh": lambda n, d, v, e: Schedule([_gemm("dh = dz W", n, d, v, e)]),
    "gemm_dw": lambda n, d, v, e: Schedule([_gemm("dW = dz^T h", v, d, n, e)]),
    "ours_chunked": chunked,
    "ours_at_1356": lambda n, d, v, e: chunked(n, d, v, e, rates=PUBLISHED_RATES),
}


def calibration_rows() -> list[dict]:
    rows = []
    for label, card, sched, n, d, v, published, source in CALIBRATION:
        predicted = evaluate(sched, SCHEDULES[sched](n, d, v, 2), CARDS[card], n, d, v, "bf16")
        err = predicted.predicted_ms / published - 1
        rows.append(
            {
                "what": label,
                "card": card,
                "N": n,
                "D": d,
                "V": v,
                "published_ms": published,
                "predicted_ms": round(predicted.predicted_ms, 2),
                "error_pct": round(100 * err, 1),
                "within_25pct": abs(err) <= 0.25,
                "source": source,
            }
        )
    return rows


def calibration_markdown(rows: list[dict]) -> str:
    lines = [
        "| published run | card | N | D | V | published ms | model ms | error | within 25% |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['what']} | {r['card']} | {r['N']} | {r['D']} | {r['V']} | "
            f"{r['published_ms']} | {r['predicted_ms']} | {r['error_pct']:+.1f}% | "
            f"{'yes' if r['within_25pct'] else 'NO'} |"
        )
    sources = sorted({r["source"] for r in rows})
    return "\n".join(lines + ["", "Sources:"] + [f"- {s}" for s in sources])
