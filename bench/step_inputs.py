"""The step model's inputs (bench/step_model.py; what each means and where it comes from:
bench/step_predict.py's docstring and the comments here): the fitted and published constants,
the cards, the architectures (the headline CodeLlamas and the calibration's runs), the levers
a run can change, and the workloads."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench import roofline
from reflectioncoder import memory_plan as mp
from reflectioncoder.train.flops import ModelShape

# FITTED to llm-foundry's MPT-7B at seq 2048 (the calibration table): that row checks nothing
GEMM_EFF = 0.60
# cuBLAS on one H100 (torch.matmul, fp16: Hopper's bf16 tensor-core rate is the same), TF/s at
# (M, N, K), PUBLISHED: triton-lang/triton#2339 (2023-09, the cuBLAS column); the
# square sweep of triton-lang/triton#3672 (2024-04, H100) agrees within 6% at the FLOPs it
# shares (2048^3: 511 against 515; 2560^3, 2816^3, 3072^3: 533, 616, 585 against 563, 583,
# 602 interpolated). A GEMM's rate is read off this sweep by its FLOPs (2MNK, log-linear
# between points) and taken relative to the sweep's largest point (275 GFLOP): GEMM_EFF,
# fitted on MPT-7B's GEMMs (412 GFLOP and more), applies above it, a smaller GEMM runs at
# GEMM_EFF x its share (``gemm_shape_factor``). H200: the same die and clocks, the same sweep.
GEMM_SWEEP_H100 = (
    ((2048, 512, 512), 102.6),
    ((2048, 1024, 1024), 243.1),
    ((2048, 2048, 2048), 515.2),
    ((2048, 4096, 4096), 613.7),
    ((2048, 8192, 8192), 721.6),
)
BW_EFF = roofline.BW_EFF
ATTN_EFF = {"varlen": 0.325, "fa2": 0.325, "fa3": 0.52}
ATTN_EFF["fa4"] = ATTN_EFF["fa3"]  # a stand-in (step_predict.py): no published FA4 Hopper rate
# The attentions whose compiled op calls the kernel's own backward (varlen_attention_op's
# kernel_backward: torch's varlen kernel, flash-attn 2.7+, FA4); FA3's reruns the forward.
OP_KERNEL_BACKWARD = frozenset({"varlen", "fa2", "fa4"})
EW_COMPILED = 0.5
EW_HF = 2.5
KL_BYTES_PER_LOGIT = 70
NCCL_BUS = 360e9
OVERLAP = 0.8
# HBM bytes a parameter per micro-batch to sum gradients in fp32 (bf16 weights), by engine:
# (on every element, on the 1/n a rank owns), as the engines run them
# (tests/test_zero_fp32_sums.py proves the sums fp32):
# - local: the bf16 gradient added into the master's fp32 one (2 + 4 in, 4 out);
# - zero1: DeepSpeed's BF16 optimizer casts it to fp32 (2 in, 4 out), then adds (12);
# - zero2: copied into the bucket (4), averaged (4), flattened (4), cast to fp32 (6), all-reduced,
#   the fp32 result copied back (6); the owned slice added into the fp32 partition (12) and
#   into the bucket (6) (stage_1_and_2.py average_tensor / allreduce_bucket);
# - zero3: copied into the bucket, fp32 when the reduction is (6), interleaved (8) and averaged
#   (8) for the reduce-scatter; the owned piece added into the fp32 partition (12)
#   (stage3.py __add_grad_to_ipg_bucket, reduce_scatter_coalesced, partition_grads).
# - fsdp (torch's FSDP2: our ``distributed.backend: fsdp``, and the calibration's torchtitan
#   and llm-foundry runs): the bf16 gradient cast into the fp32 reduce-scatter input (6; none
#   with fp32 weights under autocast), the reduce-scattered shard added into the sharded fp32
#   gradient (12; train/fsdp_engine.py sums: no division; the calibration's runs divide inside
#   NCCL's PREMUL_SUM and accumulate nothing, 0 there, their one micro-batch taken the same).
GRAD_SUM_BYTES = {"local": (10, 0), "zero1": (18, 0), "zero2": (24, 18), "zero3": (22, 12)}
GRAD_SUM_BYTES["fsdp"] = (6, 12)
# the same in bf16 (``fp32_sums`` off): autograd's bf16 sum at ZeRO-1 (6); at ZeRO-2 the bucket
# copy, averaging and flattening (12), the owned slice copied back and added in bf16 (10); at
# ZeRO-3 the bucket copy, interleaving and averaging (12), the owned piece added (6)
BF16_SUM_BYTES = {"local": (10, 0), "zero1": (6, 0), "zero2": (12, 10), "zero3": (12, 6)}
BF16_SUM_BYTES["fsdp"] = GRAD_SUM_BYTES["fsdp"]
OPT_BYTES = {"masters": 30, "autocast": 28}
# FSDP's AdamW writes no bf16 weight (its all-gather casts the fp32 shard): 28 in both precisions
FSDP_OPT_BYTES = 28
FIXED_BYTES = mp.RESERVE_FIXED
MEMORY = {"H100": 81559 * 2**20, "H200": 143771 * 2**20}  # what nvidia-smi reports
# ZeRO-Offload (an offloaded optimizer): fp32 gradients to the host and bf16 weights back over
# PCIe 5.0 x16 (64 GB/s a direction), taken at 0.8 of it, ASSUMED (not measured here); the
# host's AdamW (DeepSpeed's CPU Adam, "5X-7X faster than the standard PyTorch
# implementation", deepspeed.ai/tutorials/zero-offload) streams 30 bytes a parameter (fp32
# weight, gradient, m, v in; weight, m, v, bf16 weight out), taken at 100 GB/s of a two-socket
# server's DRAM, ASSUMED: 3.3e9 parameters/s.
PCIE = 0.8 * 64e9
CPU_ADAM_PARAMS_S = 100e9 / 30
# torchtitan's H100s (docs/performance.md): SXM boards with 96 GB HBM2e at 2.4 TB/s, capped at
# 500 W, whose bf16 peak is "between SXM and NVL" (989 and 835 TF/s dense), exact value unknown:
# the middle of the two, ASSUMED (the calibration note gives the error at either end).
TITAN_H100 = roofline.Card("H100 96GB HBM2e 500W", (989.0 + 835.0) / 2, 2.4, 132, 4e11)
CARDS = {**roofline.CARDS, TITAN_H100.name: TITAN_H100}


def _host_rates() -> tuple[float, float]:
    """(s, s): the host time of one eager decoder layer's forward + backward, and what its
    recomputed forward adds, MEASURED (bench/bench_host_overhead.py, results/host_overhead.json):
    means over the Liger / Hugging Face kernels and bf16 / autocast variants, which differ by
    less than this shared machine's noise."""
    rows = json.loads((Path(__file__).parent / "results" / "host_overhead.json").read_text())
    rows = rows["rows"]
    plain = statistics.mean(r["host_s_per_layer"] for r in rows if r["checkpointing"] == "none")
    full = statistics.mean(r["host_s_per_layer"] for r in rows if r["checkpointing"] == "full")
    return plain, full - plain


HOST_LAYER_S, HOST_RERUN_S = _host_rates()
HOST_REPLAY = Path(__file__).parent / "results" / "host_replay.json"
SAMPLES_PER_STEP = 512
SAMPLE_LEN = 2048
PACKED_TOKENS_PER_RECIPE_TOKEN = 8857 / 11534
LOSS_ROWS_PER_TOKEN = 3704 / 8857


@dataclass(frozen=True)
class Arch:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    gelu: bool = False  # a 2-matrix GELU MLP (MPT) instead of SwiGLU

    def shape(self) -> ModelShape:
        if not self.gelu:
            return ModelShape.llama(
                self.hidden, self.intermediate, self.layers, self.heads, self.kv_heads, self.vocab
            )
        d, i = self.hidden, self.intermediate
        per_layer = 4 * d * d + 2 * d * i + 2 * d
        return ModelShape(
            layers=self.layers,
            hidden=d,
            attn_width=d,
            vocab=self.vocab,
            body_params=self.layers * per_layer + d,
            recomputed_params=self.layers * (per_layer - d * i),
            mlp_in_params=self.layers * d * i,  # up (the GELU's input)
            heads=self.heads,
            kv_heads=self.kv_heads,
            intermediate=i,
        )

    def ew_bytes(self) -> float:
        """Element-wise HBM bytes of one token through one layer's forward (step_predict.py)."""
        kv = self.hidden * self.kv_heads // self.heads
        mlp = 4 * self.intermediate if self.gelu else 6 * self.intermediate
        return 28 * self.hidden + 12 * kv + mlp


def gemm_share(flops: float) -> float:
    """A GEMM's rate over the rate of GEMM_SWEEP_H100's largest point, read off the sweep by
    its FLOPs (log-linear between points, proportional to the FLOPs below the smallest), at
    most 1."""
    points = [(2 * m * n * k, rate) for (m, n, k), rate in GEMM_SWEEP_H100]
    top = points[-1][1]
    if flops >= points[-1][0]:
        return 1.0
    if flops <= points[0][0]:
        return points[0][1] * flops / points[0][0] / top
    for (f0, r0), (f1, r1) in itertools.pairwise(points):
        if flops <= f1:
            x = math.log(flops / f0) / math.log(f1 / f0)
            return (r0 + x * (r1 - r0)) / top
    raise AssertionError("unreachable")


def gemm_shape_factor(arch: Arch, tokens: int) -> float:
    """The decoder's GEMMs at ``tokens`` rows: their FLOPs over the FLOPs they would do in the
    same time at the large-GEMM rate, each projection (q, k, v, o, the MLP's) at its
    ``gemm_share``; its data-gradient and weight-gradient GEMMs have its FLOPs, so the same
    share. 1 where every projection is 275 GFLOP or more (every headline row at 16K tokens)."""
    d, i = arch.hidden, arch.intermediate
    kv = d * arch.kv_heads // arch.heads
    mlp = [(i, d), (d, i)] if arch.gelu else [(i, d), (i, d), (d, i)]
    flops = [2 * tokens * n * k for n, k in [(d, d), (kv, d), (kv, d), (d, d), *mlp]]
    return sum(flops) / sum(f / gemm_share(f) for f in flops)


ARCHS = {
    "CodeLlama-7B": Arch("CodeLlama-7B", 4096, 11008, 32, 32, 32, 32016),
    "CodeLlama-13B": Arch("CodeLlama-13B", 5120, 13824, 40, 40, 40, 32016),
    "CodeLlama-34B": Arch("CodeLlama-34B", 8192, 22016, 48, 64, 8, 32000),
}


@dataclass(frozen=True)
class Levers:
    """The shipped default's choices (``ModelConfig`` / ``DistributedConfig``: checkpointing
    ``auto``, compile ``auto`` = on under CUDA, torch's varlen attention, the fused loss; the
    optimizer offloaded where ``offload_optimizer: auto`` says: ``default_levers``)."""

    checkpointing: str = "auto"  # auto | none | full | save_gemms | mlp_rerun | offload | alternate
    precision: str = "masters"  # masters (bf16 weights, fp32 masters) | autocast (fp32 weights)
    compiled: bool = True
    attention: str = "varlen"  # varlen | fa2 | fa3 | fa4
    loss: str = "fused"  # fused (ours) | full_logits
    overlap: bool = True
    kernels: str = "liger"  # liger (fused RMSNorm / RoPE / SwiGLU) | hf (Hugging Face's eager ops)
    offload: bool = False  # the optimizer's states and step on the host (ZeRO-Offload)
    activation_offload: bool = True  # auto may give layers `offload` (model.activation_offload)
    # our compiled layers' attention (kernels/varlen_attention_op.py): ``kernel``, as shipped,
    # its backward calls the kernel's own with the forward's out and lse (OP_KERNEL_BACKWARD;
    # FA3's reruns); ``rerun``: the backward runs the forward again (every backend before)
    attention_op: str = "kernel"
    # distributed.fp32_grad_accum under DeepSpeed: sums over micro-batches and ranks in fp32
    # (auto, as shipped) or in bf16 (the authors' DeepSpeed config, which sets no data_types);
    # memory is counted as with fp32 sums (measured: bf16 sums at ZeRO-1 hold as many bytes,
    # a bf16 gradient and a bf16 sum; at ZeRO-3 2P/n fewer)
    fp32_sums: bool = True


@dataclass(frozen=True)
class Workload:
    """One micro-batch: its segments' lengths and loss rows; samples it holds; samples a step."""

    seq_lens: tuple[int, ...]
    loss_rows: int
    samples: float
    samples_per_step: int = SAMPLES_PER_STEP
    kl: bool = True  # the reflection loss's KL term (full logits: a separate pass)

    @property
    def tokens(self) -> int:
        return sum(self.seq_lens)


def reflection_workload(tokens: int = 16384, sample_len: int = SAMPLE_LEN) -> Workload:
    """Ours: samples packed to ``tokens``, two segments each (the ratios: bench/step_model.py's
    docstring)."""
    per_sample = PACKED_TOKENS_PER_RECIPE_TOKEN * 2 * sample_len
    samples = tokens / per_sample
    segments = max(1, round(2 * samples))
    base, extra = divmod(tokens, segments)
    lens = tuple(base + (i < extra) for i in range(segments))
    return Workload(lens, round(LOSS_ROWS_PER_TOKEN * tokens), samples)


def recipe_workload(sample_len: int = SAMPLE_LEN) -> Workload:
    """The authors': one sample a micro-batch, teacher row + full-length student row."""
    return Workload((sample_len, sample_len), 2 * sample_len, 1.0)


RECIPE = Levers("full", "masters", False, "fa2", "full_logits", False, "hf", fp32_sums=False)


def _stage(engine: str) -> int:
    return {"local": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}[engine]


def default_engine(gpus: int) -> str:
    """The engine ``paper_preset`` (``backend: auto``) runs: one process on one GPU, DeepSpeed
    ZeRO-1 on several."""
    return "local" if gpus == 1 else "zero1"


# Runs measured here (bench/RESULTS.md) and published by others, each modelled with its own
# shape, workload and levers. Errors are predicted / measured - 1 of the run's own figure (a
# time: + is the model slow; a throughput or MFU: + is the model fast).
LLAMA_1B = Arch("Llama-1.5B (RESULTS' 1.5B step)", 2048, 8192, 16, 32, 8, 128256)
# bench_engines' saved model: 16 heads, num_kv_heads = heads // 4, 400 + 7 special tokens
CLI_1B = Arch("Llama-1.06B (RESULTS' CLI run)", 2048, 5504, 24, 16, 4, 407)
LLAMA31_8B = Arch("Llama-3.1-8B", 4096, 14336, 32, 32, 8, 128256)
MPT_7B = Arch("MPT-7B", 4096, 16384, 32, 32, 32, 50432, gelu=True)
