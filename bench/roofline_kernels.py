"""The roofline's primitives (bench/roofline.py's docstring states the model): the cards, a
kernel's time on a card, a schedule as a list of kernels, the GEMM rates cited from published
runs, and a schedule's row at one shape (``evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass, field

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


def _overlapped(name: str, gemm: Kernel, other: Kernel) -> Kernel:
    """Two kernels on two streams at once, taken as one roofline: their FLOPs against the
    tensor cores, their bytes against HBM together. It assumes the streaming kernel finds SM
    slots beside the GEMM's, so it bounds the gain from above."""
    return Kernel(
        name, gemm.flops + other.flops, gemm.hbm + other.hbm, gemm.l2 + other.l2, 0, 2, gemm.tc_eff
    )


# Liger's fused persistent Hopper kernels on an H200, TP = 1 (PR #1422's table, TF/GPU over the
# dense peak): the forward (logits GEMM, softmax statistics in its epilogue, logits never
# written) 788.3 TF at M = 8192, H = 4096, V = 262144; the backward (one kernel: recomputed
# logits, dX, dW) 762.8 TF at M = 8192, H = 4096, V = 131072.
PR1422_FORWARD_EFF = 788.3 / CARDS["H200"].bf16_tflops
PR1422_BACKWARD_EFF = 762.8 / CARDS["H200"].bf16_tflops

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
