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
import math
import sys
from dataclasses import asdict, dataclass, field

from reflectioncoder.kernels.fused_loss_schedule import GPU_BUDGET, ChunkBudget

TC_EFF = 0.75
BW_EFF = 0.85
LAUNCH_S = 5e-6
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class Card:
    name: str
    bf16_tflops: float  # dense tensor-core peak
    hbm_tbs: float  # HBM bandwidth, TB/s
    sms: int
    atomic_rate: float  # fenced fp32 atomic adds per second at L2 (assumed)
    fp32_tflops: float | None = None  # dense FP32 peak without tensor cores (TF32 off)

    def peak_tflops(self, dtype: str) -> float:
        """The dense peak a GEMM in ``dtype`` runs against."""
        if dtype != "fp32":
            return self.bf16_tflops
        if self.fp32_tflops is None:
            raise ValueError(f"roofline: no FP32 peak for {self.name}")
        return self.fp32_tflops


CARDS = {
    "H100": Card("H100", 989.0, 3.35, 132, 4e11, 67.0),  # SXM5 80 GB
    "H200": Card("H200", 989.0, 4.8, 132, 4e11, 67.0),  # SXM 141 GB
    "A100": Card("A100", 312.0, 2.039, 108, 2.5e11, 19.5),  # SXM4 80 GB
}


@dataclass
class Kernel:
    name: str
    flops: float = 0.0
    hbm: float = 0.0
    l2: float = 0.0
    atomics: float = 0.0
    count: int = 1  # launches of this kernel
    tc_eff: float = TC_EFF  # the share of the tensor-core peak its FLOPs run at

    def seconds(self, card: Card, dtype: str = "bf16") -> float:
        return self.count * LAUNCH_S + max(
            self.flops / (card.peak_tflops(dtype) * 1e12 * self.tc_eff),
            self.hbm / (card.hbm_tbs * 1e12 * BW_EFF),
            self.atomics / card.atomic_rate,
        )


@dataclass
class Schedule:
    kernels: list[Kernel]
    workspace: dict[str, int] = field(default_factory=dict)


def _gemm(name, m, n, k, e, *, read_c=False, count=1, tc_eff=TC_EFF) -> Kernel:
    """C (m, n) = A (m, k) B (k, n) with e-byte operands and output, each read once from HBM."""
    bytes_ = (m * k + k * n + m * n * (2 if read_c else 1)) * e
    return Kernel(name, 2.0 * m * n * k, bytes_, bytes_, count=count, tc_eff=tc_eff)


def _stream(name, bytes_, count=1) -> Kernel:
    return Kernel(name, hbm=bytes_, l2=bytes_, count=count)


@dataclass(frozen=True)
class GemmRates:
    """The share of the tensor-core peak each of the loss's three GEMMs runs at."""

    logits: float = TC_EFF  # z = h W^T: (rows, V) from K = D
    dh: float = TC_EFF  # dh = dz W: (rows, D) from K = V
    dw: float = TC_EFF  # dW += dz^T h: (V, D) from K = rows


# cuBLAS's bf16 GEMMs at the headline shape, one 4096-row chunk (H = 4096, V = 128256), on an
# H200 with a hot cache, as Liger's PR #1356 publishes them ("GEMMs versus cuBLAS", cuBLAS
# column): logits 6.313 ms, dX 6.144 ms, dW 6.422 ms, 2 x 4096 x 4096 x 128256 FLOPs each.
# Liger's persistent CuTe DSL GEMMs of the same PR ran within 0.1-1.8% of them.
PR1356 = (
    "Liger-Kernel PR #1356 (merged, commit 9d045718; [Hopper] Add CuTe DSL and cuTile fused "
    "linear cross entropy), its H200 tables: BF16 full eager forward + backward, medians, hot "
    "cache"
)
CUBLAS_H200_MS = {"logits": 6.313, "dh": 6.144, "dw": 6.422}
PUBLISHED_RATES = GemmRates(
    **{
        k: 2.0 * 4096 * 4096 * 128256 / (ms * 1e-3) / (CARDS["H200"].bf16_tflops * 1e12)
        for k, ms in CUBLAS_H200_MS.items()
    }
)


def chunked(
    n, d, v, e, budget=GPU_BUDGET, dh_slots=True, grads=True, rates: GemmRates = GemmRates()
) -> Schedule:
    """Ours: chunks of R slots; per chunk GEMM -> logits, row kernel (3 passes), 2 GEMMs.
    ``grads=False``: the forward-only path (GEMM -> logits, one read by the row kernel)."""
    r = budget.rows(v, e)
    ks = []
    for a in range(0, n, r):
        c = min(r, n - a)
        z = _gemm("z = h W^T", c, v, d, e, tc_eff=rates.logits)
        ks += [_stream("gather h", 2 * c * d * e), z]
        if not grads:
            ks.append(_stream("row kernel (loss only)", c * v * e))
            continue
        ks += [
            _stream("row kernel", 3 * c * v * e),
            _gemm("dh = dz W", c, d, v, e, tc_eff=rates.dh),
            _gemm("dW += dz^T h", v, d, c, e, read_c=True, tc_eff=rates.dw),
        ]
    if grads:
        ks += [_stream("zero dW", v * d * e), _stream("dW *= g", 2 * v * d * e)]
    if grads and dh_slots:
        ks.append(_stream("sum slots -> dh", 2 * n * d * e + 16 * n))
    # The tensors alive at the peak (the forward's chunk loop; backward needs less).
    r = min(r, n)
    workspace = {
        "logits (rows, V)": r * v * e,
        "gathered h (rows, D)": r * d * e,
        "plan: rows, targets, CE weight, CE out (S,); KL out (P,)": n * (8 + 8 + 4 + 4)
        + n // 2 * 4,
    }
    if grads and dh_slots:
        workspace["per-slot dh (S, D)"] = n * d * e
    return Schedule(ks, workspace)


EPILOGUE_TILE_V = 256  # vocabulary columns per GEMM output tile: one (max, sum, target) each


def _overlapped(name: str, gemm: Kernel, other: Kernel) -> Kernel:
    """Two kernels on two streams at once, taken as one roofline: their FLOPs against the
    tensor cores, their bytes against HBM together. It assumes the streaming kernel finds SM
    slots beside the GEMM's, so it bounds the gain from above."""
    return Kernel(
        name, gemm.flops + other.flops, gemm.hbm + other.hbm, gemm.l2 + other.l2, 0, 2, gemm.tc_eff
    )


def pipelined(
    n, d, v, e, budget: ChunkBudget = GPU_BUDGET, epilogue=False, rates: GemmRates = GemmRates()
) -> Schedule:
    """The chunks of ``chunked`` (same buffers, same d W roundings), each run as two halves
    whose row passes sit on a side stream: half a's beside half b's logits GEMM, half b's beside
    half a's d h GEMM; then one d W GEMM over the whole chunk (the first writes d W instead of
    adding to a zeroed one). ``epilogue`` (modelled, not built): the logits GEMM also writes each
    row's (max, sum exp, target logit) per vocabulary tile, so the row pass reads the logits
    once and writes d z (2 passes instead of 3). ``rates``: the GEMMs' tensor-core efficiency."""
    r = budget.rows(v, e)
    stats = 12 * math.ceil(v / EPILOGUE_TILE_V) if epilogue else 0  # bytes per row
    passes = 2 if epilogue else 3

    def logits(c):
        k = _gemm("z = h W^T" + (" + row stats" if epilogue else ""), c, v, d, e)
        k.tc_eff = rates.logits
        k.hbm += c * stats
        return k

    def row_pass(c):
        return _stream("row pass", passes * c * v * e + c * stats)

    def dh(c):
        return _gemm("dh = dz W", c, d, v, e, tc_eff=rates.dh)

    ks = [_stream("gather h", 2 * n * d * e)]
    for i, a in enumerate(range(0, n, r)):
        c = min(r, n - a)
        ca, cb = c - c // 2, c // 2
        ks += [
            logits(ca),
            _overlapped("z(b) || row pass(a)", logits(cb), row_pass(ca)),
            _overlapped("dh(a) || row pass(b)", dh(ca), row_pass(cb)),
            dh(cb),
            _gemm("dW (+)= dz^T h", v, d, c, e, read_c=i > 0, tc_eff=rates.dw),
        ]
    ks += [_stream("dW *= g", 2 * v * d * e), _stream("sum slots -> dh", 2 * n * d * e + 16 * n)]
    workspace = dict(chunked(n, d, v, e, budget).workspace)
    if epilogue:
        workspace["row stats per vocabulary tile"] = min(r, n) * stats
    return Schedule(ks, workspace)


# Liger's fused persistent Hopper kernels on an H200, TP = 1 (PR #1422's table, TF/GPU over the
# dense peak): the forward (logits GEMM, softmax statistics in its epilogue, logits never
# written) 788.3 TF at M = 8192, H = 4096, V = 262144; the backward (one kernel: recomputed
# logits, dX, dW) 762.8 TF at M = 8192, H = 4096, V = 131072.
PR1422_FORWARD_EFF = 788.3 / CARDS["H200"].bf16_tflops
PR1422_BACKWARD_EFF = 762.8 / CARDS["H200"].bf16_tflops


def fused_persistent(n, d, v, e, budget: ChunkBudget = GPU_BUDGET) -> Schedule:
    """Modelled, not built (it needs persistent WGMMA/TMA kernels: CUTLASS or CuTe DSL, not
    cuBLAS, and a GPU to develop on): per chunk one kernel writes the logits and their row
    statistics (2 R D V FLOPs at PR #1422's fused-forward rate), a small kernel finishes lse,
    CE and KL, and one backward kernel forms d z as it loads the logits and does d h and d W
    (4 R D V FLOPs at PR #1422's fused-backward rate). Both rates are borrowed from kernels
    that do not write logits (forward) or recompute them (backward): an optimistic bound."""
    r = budget.rows(v, e)
    ks = [_stream("gather h", 2 * n * d * e)]
    for i, a in enumerate(range(0, n, r)):
        c = min(r, n - a)
        fwd = _gemm("z = h W^T + row stats (persistent)", c, v, d, e, tc_eff=PR1422_FORWARD_EFF)
        fwd.hbm += c * 12 * math.ceil(v / EPILOGUE_TILE_V)
        bytes_ = (c * v + 2 * v * d + 2 * c * d) * e + (v * d * e if i > 0 else 0)
        bwd = Kernel(
            "dz on load; dh = dz W, dW (+)= dz^T h (persistent)",
            *(4.0 * c * d * v, bytes_, bytes_),
            tc_eff=PR1422_BACKWARD_EFF,
        )
        ks += [fwd, _stream("lse, CE, KL from the statistics", 12 * c * v // EPILOGUE_TILE_V), bwd]
    ks += [_stream("dW *= g", 2 * v * d * e), _stream("sum slots -> dh", 2 * n * d * e + 16 * n)]
    return Schedule(ks, dict(chunked(n, d, v, e, budget).workspace))


# Triton's own Hopper GEMMs (no published Triton bf16 GEMM at this loss's shapes runs faster
# than cuBLAS's rates above): tritonbench's TMA-persistent Triton matmul (the tutorial
# 09-persistent-matmul kernel, added to tritonbench as a bf16 GEMM by pytorch/benchmark PR
# #2373) at M = N = 8192, K = 4096: 665.886 TFLOP/s, 0.8256 ms +-0.36% (meta-pytorch/tritonbench
# PR #894, "Before" table; the PR does not name the card: taken as a dense Hopper peak of 989).
# Without TMA descriptors the same persistent kernel runs 13.4% slower in fp16 at that shape on
# an H100 (triton-lang/triton PR #5461: "13% uplift from tensor descriptor vs. 13.4% from
# host-side TMA"); fused_loss_stats.py's kernel loads through pointers and is not persistent,
# so that rate bounds it from above.
TRITONBENCH_894 = (
    "meta-pytorch/tritonbench PR #894 ([ci] Fix gemm TMA API upgrade), test plan, Before: "
    "triton_tma_persistent_matmul, (8192, 8192, 4096), 665.886 TFLOP/s; card not named"
)
TRITON_TMA_PERSISTENT_EFF = 665.886 / CARDS["H200"].bf16_tflops
TRITON_POINTER_EFF = TRITON_TMA_PERSISTENT_EFF / 1.134  # PR #5461: TMA's 13.4% uplift removed
TRITON_EPILOGUE_RATES = GemmRates(TRITON_TMA_PERSISTENT_EFF, PUBLISHED_RATES.dh, PUBLISHED_RATES.dw)
STATS_TILE_V = 128  # fused_loss_stats.GEMM_TILES.block_v: one statistics column per tile


def loss_alone(n, d, v, e, budget: ChunkBudget = GPU_BUDGET, rates=None, epilogue=False):
    """The forward alone (no gradient wanted), per chunk of R slots: ``gemm_rows`` (the
    launcher's default) gathers h, runs the logits GEMM into the buffer and reads it once in
    the row kernel; ``epilogue`` (kernels/fused_loss_stats.py) runs one Triton GEMM whose
    epilogue writes 7 / 2 fp32 statistics per slot and vocabulary tile of STATS_TILE_V
    (logits never stored), then folds them (a few reads of the statistics). ``rates``: the
    logits GEMM's share of the peak."""
    r = budget.rows(v, e) // 2  # the plan's halves: one chunk of the plan each
    ks = []
    for a in range(0, n, r):
        c = min(r, n - a)
        ks.append(_stream("gather h", 2 * c * d * e))
        if epilogue:
            stats = 14 * c * math.ceil(v / STATS_TILE_V)  # 7 fp32 per pair and tile
            k = _gemm("z tiles -> row stats (Triton)", c, v, d, e, tc_eff=rates)
            k.hbm += stats - c * v * e  # the logits are never written
            ks += [k, _stream("fold the tile statistics", 4 * stats, count=8)]
        else:
            ks += [_gemm("z = h W^T", c, v, d, e, tc_eff=rates), _stream("row kernel", c * v * e)]
    plan = chunked(n, d, v, e, budget, grads=False).workspace
    plan = {k: b for k, b in plan.items() if k.startswith("plan")}
    if epilogue:  # fused_loss_stats.stats_loss: one h and one statistics buffer for all chunks
        c = min(r, n)
        nt = math.ceil(v / STATS_TILE_V)
        workspace = {"gathered h (rows, D)": c * d * e, "tile statistics": 14 * c * nt}
        workspace["fold temporaries (2 of 7 statistics planes)"] = 4 * c * nt
    else:  # run_chunks: two halves share the logits and h buffers
        c = min(2 * r, n)
        workspace = {"logits (rows, V)": c * v * e, "gathered h (rows, D)": c * d * e}
    return Schedule(ks, workspace | plan)


def gemm_ceiling(n, d, v, e) -> Schedule:
    """The bound of any schedule built on GEMMs at TC_EFF: 6 N D V FLOPs and nothing else."""
    return Schedule([Kernel("6 N D V on tensor cores", flops=6.0 * n * d * v, count=0)])


def atomic_tiles(n, d, v, e, card: Card, block_rows=128, block_v=128) -> Schedule:
    """The previous kernel: forward one program per 128-slot block streaming all of W; backward
    one program per (V tile, block) recomputing logits and atomically adding into fp32 dh, dW."""
    blocks = math.ceil(n / block_rows)
    vtiles = math.ceil(v / block_v)
    waves = math.ceil(blocks / card.sms)
    h_block = block_rows * d * e
    fwd = Kernel(
        "forward (online lse, KL)",
        flops=2.0 * n * d * v,
        hbm=waves * v * d * e + blocks * vtiles * h_block,  # h re-read for every V tile
        l2=blocks * v * d * e + blocks * vtiles * h_block,
    )
    atomics = 2.0 * blocks * vtiles * block_rows * d  # dh and dW tile of every program
    bwd = Kernel(
        "backward (recompute, atomic dh, dW)",
        flops=6.0 * n * d * v,
        # h twice per program; W about twice; every V-tile wave read-modify-writes all of dh
        hbm=2 * blocks * vtiles * h_block + 2 * v * d * e + vtiles * 2 * n * d * 4,
        l2=2 * blocks * vtiles * h_block + 2 * blocks * v * d * e + atomics * 4,
        atomics=atomics,
    )
    casts = _stream("zero + cast fp32 grads", (n * d + v * d) * (4 + 4 + e), count=4)
    workspace = {
        "fp32 dW (V, D)": v * d * 4,
        "fp32 dh (N, D)": n * d * 4,
        "slots, lse": n * (8 + 8 + 4 + 4 + 4),
    }
    return Schedule([fwd, bwd, casts], workspace)


def liger_flce(n, d, v, e, kl_pairs=0, dw_add_fp32=True) -> Schedule:
    """Liger's fused linear CE (Triton, chunk = next_pow2(N / ceil(V / D)) rows), plus, with
    kl_pairs, a separate KL on the full logits of the 2P pair rows (fp32 log-softmax).
    d W per chunk: Liger 0.8 ``grad_weight += mm(dz^T, h).float()`` (dw_add_fp32: a new (V, D)
    product, an fp32 copy of it, then the add); Liger 0.4 one in-place addmm."""
    chunk = 2 ** math.ceil(math.log2(max(1, math.ceil(n / math.ceil(v / d)))))
    ks = [_stream("zero dW", v * d * e)]
    for a in range(0, n, chunk):
        c = min(chunk, n - a)
        ks += [
            _gemm("logits", c, v, d, e),
            _stream("CE kernel", 3 * c * v * e),
            _gemm("grad input", c, d, v, e),
        ]
        if dw_add_fp32:
            ks += [
                _gemm("grad weight (mm)", v, d, c, e),
                _stream(".float() + add into grad_weight", v * d * (e + 4 + e + 4 + e), count=2),
            ]
        else:
            ks.append(_gemm("grad weight (addmm)", v, d, c, e, read_c=True))
    workspace = {"logits chunk (chunk, V)": chunk * v * e}
    if dw_add_fp32:
        workspace["grad weight product + fp32 copy (V, D)"] = v * d * (e + 4)
    if kl_pairs:
        r = 2 * kl_pairs
        # fwd: bf16 logits, fp32 upcast, log_softmax x2, softmax, kl_div, sum; bwd: kl_div and
        # log_softmax backward, cast to bf16: about 70 bytes of HBM traffic per logit
        ks += [
            _gemm("KL: pair logits", r, v, d, e),
            _stream("KL: softmax / kl_div fwd + bwd", 70 * r * v, count=12),
            _gemm("KL: grad input", r, d, v, e),
            _gemm("KL: grad weight", v, d, r, e, read_c=True),
        ]
        workspace["KL: logits bf16 + 4 fp32 (2P, V)"] = r * v * (e + 16)
    return Schedule(ks, workspace)


def cutedsl_flce(n, d, v, e) -> Schedule:
    """Liger's CuTe DSL FLCE (Hopper): chunks of up to 2 GiB of logits, 3 cuBLAS GEMMs per
    chunk and a CE kernel (3 passes over the chunk's logits)."""
    big = ChunkBudget(logits_bytes=2 * 2**30, max_rows=1 << 20, row_multiple=1)
    return chunked(n, d, v, e, big, dh_slots=False)


def torch_unfused(n, d, v, e) -> Schedule:
    """logits = h W^T in bf16, F.cross_entropy(logits.float()), backward through both: the
    logits' HBM traffic (bf16 write, fp32 upcast, log-softmax fwd and bwd, bf16 cast) is about
    30 bytes per logit."""
    ks = [
        _gemm("logits", n, v, d, e),
        _stream("fp32 CE fwd + bwd", 30 * n * v, count=6),
        _gemm("grad input", n, d, v, e),
        _gemm("grad weight", v, d, n, e),
    ]
    return Schedule(ks, {"logits bf16 + fp32 copies": n * v * (e + 8)})


def cce(n, d, v, e, backward=True) -> Schedule:
    """Cut Cross-Entropy: forward one fused GEMM + online lse kernel (2 N D V); backward
    recomputes the logits and forms both gradients (6 N D V), counted with no gradient
    filtering (CCE skips blocks whose softmax is negligible, which the model cannot know)."""
    ks = [Kernel("lse forward (fused GEMM)", flops=2.0 * n * d * v, hbm=(n + v) * d * e)]
    if backward:
        ks.append(
            Kernel(
                "backward (recompute + dE + dC)",
                flops=6.0 * n * d * v,
                hbm=4 * (n + v) * d * e,
            )
        )
    return Schedule(ks, {})


@dataclass
class Row:
    schedule: str
    default: bool
    card: str
    N: int
    D: int
    V: int
    dtype: str
    useful_flops: float
    executed_flops: float
    hbm_bytes: float
    l2_bytes: float
    atomic_ops: float
    workspace_bytes: int
    workspace: dict[str, int]
    kernel_launches: int
    predicted_ms: float
    pct_of_peak: float
    gemm_eff_for_75pct: float | None  # what every GEMM would need for 75% of peak (None: > 1)


def gemm_eff_for(sched: Schedule, card: Card, useful: float, dtype: str, pct=75.0) -> float:
    """The one tensor-core efficiency that, given to every kernel with FLOPs, brings ``sched``
    to ``pct`` % of the peak (bisection); None where even the whole peak would not."""
    lo, hi = 0.01, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        at = [Kernel(k.name, k.flops, k.hbm, k.l2, k.atomics, k.count, mid) for k in sched.kernels]
        seconds = sum(k.seconds(card, dtype) for k in at)
        lo, hi = (mid, hi) if useful / seconds < pct / 100 * card.bf16_tflops * 1e12 else (lo, mid)
    return None if hi > 0.999 else hi


def evaluate(name, sched: Schedule, card: Card, n, d, v, dtype, default=False, passes=3) -> Row:
    """``passes``: useful GEMMs of 2 N D V FLOPs (3: forward + backward; 1: the loss alone)."""
    seconds = sum(k.seconds(card, dtype) for k in sched.kernels)
    useful = passes * 2.0 * n * d * v
    return Row(
        schedule=name,
        default=default,
        card=card.name,
        N=n,
        D=d,
        V=v,
        dtype=dtype,
        useful_flops=useful,
        executed_flops=sum(k.flops for k in sched.kernels),
        hbm_bytes=sum(k.hbm for k in sched.kernels),
        l2_bytes=sum(k.l2 for k in sched.kernels),
        atomic_ops=sum(k.atomics for k in sched.kernels),
        workspace_bytes=sum(sched.workspace.values()),
        workspace=sched.workspace,
        kernel_launches=sum(k.count for k in sched.kernels),
        predicted_ms=seconds * 1e3,
        pct_of_peak=100.0 * useful / seconds / (card.bf16_tflops * 1e12),
        gemm_eff_for_75pct=gemm_eff_for(sched, card, useful, dtype),
    )


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
