"""The step model's prediction (bench/step_model.py): one optimizer step's time, FLOPs and
memory per GPU from an architecture, a card, a GPU count, an engine, the levers and the
workload (bench/step_inputs.py).

Time of a micro-batch on one GPU = the sum of (no overlap between them but comm):
- decoder GEMMs: 6 x body params x T, plus the recompute of flops.py (``full`` layers: 2 x their
  parameters but down_proj's; ``mlp_rerun`` layers: 2 x their gate and up parameters, the
  GEMMs their backward runs again, counted against torch's FLOP counter in
  tests/test_mlprerun_policy.py), at GEMM_EFF = 0.60 of the
  dense bf16 peak, FITTED to one published row (llm-foundry MPT-7B, 8 x H100, seq 2048, no
  checkpointing: its error is 0 by construction and it checks nothing); with bench/roofline.py's
  0.75 (isolated large GEMMs) every end-to-end row came out fast (our step times 23-37%
  short, the published throughputs and MFU 6-36% high; ``--calibrate`` shows the rows that
  remain checks). Forward, data-gradient and weight-gradient GEMMs of the decoder
  shapes, between element-wise kernels, reach less than one large isolated GEMM. A GEMM
  under 275 GFLOP (2MNK) runs slower again, at its share of the large-GEMM rate in a
  PUBLISHED cuBLAS sweep on an H100 (``GEMM_SWEEP_H100``, triton-lang/triton#2339: 0.71 at
  2048^3, 0.85 at 2048 x 4096 x 4096; ``gemm_shape_factor``): 1 for every GEMM of the
  headline rows' 16K-token micro-batches and of MPT-7B's fit, 0.93 for the recipe's 4K-token
  q / k / v / o projections at 7B (its rows 1.7-1.9% slower, our ratio over it up 0.03-0.04),
  0.81-0.86 for the 1.5B step's 2.5-3.5K-token micro-batches, 0.91 for the CLI step's;
- attention: 12 x layers x width x sum L^2 (the count's full square), plus 4 x that per
  recomputed layer, and 4 x that again per compiled layer (every layer but the offloaded,
  which run eagerly) whose op reruns it: a compiled layer's attention is our custom op
  (varlen_attention_op), whose backward calls the kernel's own backward with the forward's
  out and log-sum-exp (``attention_op: kernel``, as shipped, for ``varlen`` (torch 2.13's
  torch_attn ops, the lock's), ``fa2`` (flash-attn 2.7+, the ``gpu`` extra's
  floor) and ``fa4``: no rerun) and runs the forward again for ``fa3`` (and SDPA, off these
  rows), as every backend did before (``attention_op: rerun``, a lever row for comparison), at
  ATTN_EFF of the peak in those units: ``varlen`` (torch's varlen_attn,
  FA2-class, the default without flash-attn) 0.325, FITTED to our one H200 attention row (so
  that row is no check); ``fa2`` (flash-attn 2, the recipe's) the same; ``fa3`` 1.6x it (the
  FA3 paper's forward + backward gain over FA2 on H100 at head size 128: published, not ours);
  ``fa4`` (FlashAttention-4, CuTe DSL: the ``hopper`` extra) FA3's rate, a STAND-IN: no
  published kernel rate of FA4 on H100 / H200 at head size 128 was found. What is published on
  Hopper: FA4 and FA3 "perform very similarly" end to end on a GH200 (torchtitan PR 4413, a
  debug model with varlen attention; a PyTorch maintainer there: the varlen gap to FA3 was
  not fully closed), and FA4's SM90 backward at head size 256 reaches 373 TFLOP/s against
  FA3's 480 on an H200 (flash-attention PR 2889, which takes it to 530). So ``fa4`` rows are
  no better than FA3 and may be slower; they are not default rows, and a GPU measurement
  (bench/gpu_step_call.py's ``attention flash_attn_4`` case) is owed;
- the loss: bench/roofline.py's own model (``pipelined`` for our fused loss, ``torch`` for full
  logits), on the loss rows; full logits with the reflection loss's KL add its separate pass,
  KL_BYTES_PER_LOGIT = 70 (roofline's Liger + KL estimate);
- element-wise ops at HBM bandwidth x BW_EFF (0.85): per token and layer, forward, in bf16:
  2 RMSNorms (4D each way), RoPE on q and k, SwiGLU (read 2I, write I), two residual adds,
  q/k/v layout copies = 28 D + 12 D_kv + 6 I bytes; backward twice that; recomputed forwards
  add it again (full 1, alternate 0.5, save_gemms and mlp_rerun 1: their reruns include these
  ops; the host's rerun time HOST_RERUN_S the same share); compiled layers
  move EW_COMPILED = 0.5 of those bytes (fusion); fp32 weights under autocast (``autocast``):
  x 1.5 for the fp32 residual stream and casts, plus every weight cast to bf16 (6 bytes a
  parameter) in each forward and recompute (of ``mlp_rerun`` layers, gate's and up's); Hugging
  Face's eager ops (the recipe: RMSNorm in fp32 in five passes, rotate_half's slices and cat,
  SiLU and the product apart) EW_HF = 2.5x the bytes of Liger's fused RMSNorm / RoPE / SwiGLU;
- summing gradients in fp32 (``distributed.fp32_grad_accum: auto``, on at every engine; fp32
  sums over micro-batches and over ranks, measured on the CPU by tests/test_zero_fp32_sums.py):
  GRAD_SUM_BYTES of HBM traffic a parameter per micro-batch, as each engine runs it (10 in one
  process; 18 at ZeRO-1; 24 + 18/n at ZeRO-2 and 22 + 12/n at ZeRO-3, the bucket copies, casts
  and averaging of DeepSpeed's reduction included);
- collectives at NCCL_BUS = 360 GB/s bus bandwidth (nccl-tests on 8 x H100 SXM, NVLink 4;
  H200 the same), ring volumes ((n-1)/n of the bytes; all-reduce twice): ZeRO-2 all-reduces
  each micro-batch's gradients in fp32 (DeepSpeed's default ``use_multi_rank_bucket_allreduce``
  all-reduces each bucket and keeps the rank's slice: twice a reduce-scatter's volume, and fp32
  twice bf16's bytes); ZeRO-3 all-gathers bf16 weights for the forward, each recomputed forward
  (``mlp_rerun`` layers: gate's and up's; the weights of GEMMs whose kept outputs a recompute
  takes, which DeepSpeed's hooks gather too, are not counted, for ``save_gemms`` either)
  and the backward, and reduce-scatters fp32 gradients; with overlap (ZeRO-2's overlap_comm,
  ZeRO-3's prefetch) OVERLAP = 0.8 of it hides behind compute (never more than the compute);
- activation offload (``offload`` layers, reflectioncoder/activation_offload.py): a layer's
  time is that of ``save_gemms`` (its element-wise ops rerun) plus what the compute stream waits
  for the copies (``offload_exposed_s``): one side stream a GPU, each offloaded layer's bytes
  (``memory_plan.offloaded_bytes``: in bf16 20.8 D a token at 7B, 17.3 D at
  34B, from the widths, the CPU's measure at four shapes the check)
  out in the forward and back in the backward at ``link_bytes_s``: the GPU's PCIe link (PCIE,
  ASSUMED) or its share of the host's DRAM, ``HOST_DMA_BYTES_S`` = 307 GB/s shared by all
  ranks' offload streams on a host (a two-socket DDR5-4800 server's 614 GB/s taken at half,
  ASSUMED: 38.4 GB/s a GPU on 8); copies out never stall the compute, what is still leaving at
  the forward's end delays the copies back, a copy back starts when the offloaded layer above
  starts its backward (the highest one with the decoder's backward), and the compute waits
  where a copy has not arrived when its layer's backward is due; a layer's forward and
  backward times are this model's (GEMMs, attention, element-wise), the backward twice the
  forward plus the rerun;
- the host: the GPU cannot run ahead of the CPU that issues its kernels, so a micro-batch takes
  at least layers x (HOST_LAYER_S + the recomputed share x HOST_RERUN_S), the CPU time of one
  eager decoder layer's forward + backward (1.2 ms) and of its recomputed forward (1.5 ms),
  MEASURED on this project's CPU (bench/bench_host_overhead.py: transformers' layer at tiny
  widths, where the kernels cost nothing, attention one op as one varlen launch; one thread;
  the mean of the Liger / Hugging Face and bf16 / autocast variants, 0.9-1.4 ms and 2.0-3.2
  ms with the rerun; it was 4.5 and 1.9 ms while a CPU SDPA's own compute was counted as
  host time); a LOWER bound: the replayed steps' layers below issue 1.75x (bf16) and 2.0x
  (autocast, recomputed) the same variant's figure, with their attention path's Python; the
  H200 machine's host ran such work 1.26x slower than this CPU (below); compiled layers are
  given the eager figure. It binds where the kernels are small (micro-batches of a few
  hundred tokens at 1-2B) and in no row of the table (with both constants x 4 no row moves).
  The calibration's two measured steps are modelled from their whole step's host time
  instead (``_replayed_host``): each replayed with the code of the commit that ran it
  (bench/bench_host_replay.py, results/host_replay.json: the run's data, packing, model depth,
  micro-batches, loss, clipping, AdamW and logging at tiny widths, one thread, CUDA-only
  kernels as one-op CPU stand-ins), between its host syncs, extrapolated to width 0, times
  the H200 host's measured slowness against this CPU (1.26: the suite's host-only packing
  rows timed there and here); combined with the modelled GPU time by ``simulate_stream``
  (below, "Calibration").
Per optimizer step: fused AdamW reads and writes OPT_BYTES = 30 bytes a parameter (fp32 master,
grad, m, v in and out, bf16 weight out; 28 with fp32 weights) over its 1/n shard; ZeRO-1
all-reduces fp32 gradients (``communication_data_type`` fp32: DeepSpeed's own would cast them
to bf16) and all-gathers bf16 weights at the boundary, not overlapped;
ZeRO-2 all-gathers the weights. With the optimizer offloaded (ZeRO-Offload) instead: the fp32
gradient shard to the host and the bf16 weights back over each GPU's PCIe link (PCIE), and the
host's CPU Adam over all P parameters (CPU_ADAM_PARAMS_S, the host shared by every rank), not
overlapped; both rates ASSUMED (constants' comments), not measured. The one-process engine
(``local``) pipelines the same three in buckets of HOST_BUCKET_BYTES (200 MiB of fp32 sums,
reflectioncoder/train/host_optimizer.py ``HostPipeline.step``): the slowest of the three
(the host's AdamW at 7B) plus one bucket through the other two, its fill and drain
(``pipelined_boundary_s``); the device's norm and clip of the sums (12P bytes of HBM, about
30 ms at 7B on an H100) are counted in neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench import roofline
from bench.step_inputs import (
    ATTN_EFF,
    BF16_SUM_BYTES,
    BW_EFF,
    CARDS,
    CPU_ADAM_PARAMS_S,
    EW_COMPILED,
    EW_HF,
    FSDP_OPT_BYTES,
    GEMM_EFF,
    GRAD_SUM_BYTES,
    HOST_LAYER_S,
    HOST_RERUN_S,
    NCCL_BUS,
    OP_KERNEL_BACKWARD,
    OPT_BYTES,
    OVERLAP,
    PCIE,
    Arch,
    Levers,
    Workload,
    _stage,
    gemm_shape_factor,
)
from bench.step_memory import _loss, _params, layer_plan, memory
from reflectioncoder import memory_plan as mp
from reflectioncoder.train.flops import ModelShape, Recompute, packed_flops, recomputed_share
from reflectioncoder.train.host_optimizer import HOST_BUCKET_BYTES


def offload_exposed_s(
    plan: tuple[str, ...],
    tokens: int,
    shape: ModelShape,
    gpus: int,
    forward_s: float,
    backward_s: float,
) -> float:
    """Seconds a micro-batch's compute stream waits on activation offload (docstring), one side
    stream carrying each offloaded layer's bytes out, then back: a copy out starts with its
    layer's forward and never stalls the compute; what is still leaving at the forward's end
    delays the copies back; the copy back of the highest offloaded layer starts with the
    decoder's backward, each other one as the offloaded layer above it starts its backward;
    the compute waits where a layer's copy has not arrived when its backward is due."""
    offloaded = [i for i, p in enumerate(plan) if p == "offload"]
    if not offloaded:
        return 0.0
    one = mp.offloaded_bytes(tokens, shape) / mp.link_bytes_s(gpus)
    free = 0.0
    for i in offloaded:
        free = max(free, i * forward_s) + one
    free = max(0.0, free - len(plan) * forward_s)  # backward starts at 0
    clock = waited = issued = 0.0
    for i in reversed(range(len(plan))):
        if plan[i] == "offload":
            ready = max(issued, free) + one
            free = ready
            waited += max(0.0, ready - clock)
            clock = max(clock, ready)
            issued = clock  # its hook: the next one down starts back now
        clock += backward_s
    return waited


@dataclass
class Prediction:
    micro_s: float
    boundary_s: float
    step_s: float
    model_flops: float
    hardware_flops: float
    memory_bytes: float
    split_s: dict
    plan: tuple[str, ...]


def _ring(bytes_: float, gpus: int) -> float:
    return bytes_ * (gpus - 1) / gpus / NCCL_BUS


def _ew_rerun(plan: tuple[str, ...]) -> float:
    """The share of layers whose element-wise ops run again (save_gemms too, not only full)."""
    return sum(p != "none" for p in plan) / len(plan)


def pipelined_boundary_s(params: int) -> float:
    """The one-process engine's offloaded boundary (module docstring): fp32 sums out, the
    host's AdamW and bf16 weights back, each bucket of HOST_BUCKET_BYTES of sums going through
    the three in turn while the others run: the slowest stage's whole time, plus one bucket
    through the other two."""
    stages = (4 * params / PCIE, params / CPU_ADAM_PARAMS_S, 2 * params / PCIE)
    bucket = min(1.0, HOST_BUCKET_BYTES / (4 * params))  # one bucket's share of each stage
    return max(stages) + bucket * (sum(stages) - max(stages))


@dataclass(frozen=True)
class _Step:
    """One prediction's inputs, with the engine as run and each layer's policy settled."""

    arch: Arch
    card: roofline.Card
    gpus: int
    engine: str
    levers: Levers
    work: Workload
    plan: tuple[str, ...]

    @property
    def shape(self) -> ModelShape:
        return self.arch.shape()

    @property
    def params(self) -> int:
        return _params(self.arch)

    @property
    def peak(self) -> float:
        return self.card.bf16_tflops * 1e12

    @property
    def hbm(self) -> float:
        return self.card.hbm_tbs * 1e12 * BW_EFF

    @property
    def rerun(self) -> Recompute:
        """GEMMs and attention run again on full layers, the MLP's gate and up on mlp_rerun."""
        return recomputed_share(self.plan)

    @property
    def grad_bytes(self) -> int:
        return 4 if self.levers.fp32_sums else 2  # DeepSpeed's communication_data_type


def _engine_as_run(engine: str, levers: Levers) -> str:
    """The trainer runs an offloaded ZeRO-1 as ZeRO-2 (offloaded_stage), whatever the sums;
    with bf16 sums this stays DeepSpeed's own ZeRO-1, as the authors' code runs it (the recipe
    made runnable with ZeRO-Offload; the 1-GPU zero1 fp32_sums=off row too)."""
    if engine == "zero1" and levers.offload and levers.fp32_sums:
        return "zero2"
    return engine


def _gemm_eff(s: _Step) -> float:
    """Small GEMMs run slower (GEMM_SWEEP_H100)."""
    return GEMM_EFF * gemm_shape_factor(s.arch, s.work.tokens)


def _attention_square(s: _Step) -> int:
    return s.arch.layers * s.shape.attn_width * sum(n * n for n in s.work.seq_lens)


def _gemm_s(s: _Step) -> float:
    """The decoder's GEMMs, forward and backward, and those recomputed layers run again."""
    rerun, shape = s.rerun, s.shape
    again = rerun.layers * shape.recomputed_params
    again += rerun.mlp * shape.mlp_in_params
    return (6 * shape.body_params + 2 * again) * s.work.tokens / (s.peak * _gemm_eff(s))


def _attention_s(s: _Step) -> float:
    """Attention, its recomputed layers' again, and compiled layers' (offloaded ones run
    eagerly) where the custom op's backward reruns the forward instead of calling the
    kernel's own backward."""
    levers = s.levers
    kernel = levers.attention_op == "kernel" and levers.attention in OP_KERNEL_BACKWARD
    reruns_op = levers.compiled and not kernel
    op_rerun = sum(p != "offload" for p in s.plan) / s.arch.layers if reruns_op else 0.0
    rerun = s.rerun.layers + op_rerun
    return (12 + 4 * rerun) * _attention_square(s) / (s.peak * ATTN_EFF[levers.attention])


def _elementwise_s(s: _Step) -> float:
    """The element-wise ops' HBM traffic (module docstring)."""
    levers, rerun = s.levers, s.rerun
    ew_bytes = s.arch.ew_bytes() * s.work.tokens * s.arch.layers * (3 + _ew_rerun(s.plan))
    ew_bytes *= EW_COMPILED if levers.compiled else EW_HF if levers.kernels == "hf" else 1.0
    if levers.precision == "autocast":  # fp32 weights: each cast to bf16, again if recomputed
        mlp_in = s.shape.mlp_in_params
        ew_bytes = ew_bytes * 1.5 + 6 * s.params * (1 + rerun.layers) + 6 * rerun.mlp * mlp_in
    return ew_bytes / s.hbm


def _offload_s(s: _Step, elementwise: float) -> float:
    """What activation offload exposes, from one layer's forward and backward (its
    element-wise rerun included)."""
    layers, t = s.arch.layers, s.work.tokens
    ew_layer = elementwise / (layers * (3 + _ew_rerun(s.plan)))
    attn_rate = s.peak * ATTN_EFF[s.levers.attention]
    fwd_layer = (2 * s.shape.body_params * t / (s.peak * _gemm_eff(s))) / layers
    fwd_layer += 4 * _attention_square(s) / layers / attn_rate + ew_layer
    bwd_layer = 2 * fwd_layer + (1 if "offload" in s.plan else 0) * ew_layer
    return offload_exposed_s(s.plan, t, s.shape, s.gpus, fwd_layer, bwd_layer)


def _accumulation_s(s: _Step) -> float:
    """Summing gradients over micro-batches (GRAD_SUM_BYTES, BF16_SUM_BYTES)."""
    whole, owned = (GRAD_SUM_BYTES if s.levers.fp32_sums else BF16_SUM_BYTES)[s.engine]
    if s.engine == "fsdp" and s.levers.precision == "autocast":
        whole -= 6
    shard = s.gpus if _stage(s.engine) >= 2 else 1
    return (whole + owned / shard) * s.params / s.hbm


def _micro_comm_s(s: _Step) -> float:
    """A micro-batch's collectives: ZeRO-2 all-reduces each bucket (module docstring); ZeRO-3
    gathers the bf16 weights (gate / up again on mlp_rerun layers) and reduce-scatters the
    gradients."""
    params, gpus = s.params, s.gpus
    if s.engine == "zero2":
        return 2 * _ring(s.grad_bytes * params, gpus)
    if _stage(s.engine) != 3:
        return 0.0
    comm = _ring(2 * params, gpus) * (2 + s.rerun.layers) + _ring(s.grad_bytes * params, gpus)
    return comm + _ring(2 * s.rerun.mlp * s.shape.mlp_in_params, gpus)


def _boundary_s(s: _Step) -> float:
    """The optimizer step and the collectives at the step's boundary (module docstring)."""
    params, gpus, engine = s.params, s.gpus, s.engine
    opt_shard = 1 if engine == "local" else gpus
    if s.levers.offload and engine == "local":  # one process, the boundary pipelined
        boundary = pipelined_boundary_s(params)
    elif s.levers.offload:  # fp32 gradients out, the host's AdamW, bf16 weights back, in turn
        # each GPU its own PCIe link; the host's DRAM shared by every rank's CPU Adam
        boundary = (4 + 2) * params / opt_shard / PCIE + params / CPU_ADAM_PARAMS_S
    else:
        opt_bytes = FSDP_OPT_BYTES if engine == "fsdp" else OPT_BYTES[s.levers.precision]
        boundary = opt_bytes * params / opt_shard / s.hbm
    if engine == "zero1":
        boundary += 2 * _ring(s.grad_bytes * params, gpus) + _ring(2 * params, gpus)
    elif engine == "zero2":
        boundary += _ring(2 * params, gpus)
    return boundary


def _micro_batch_s(s: _Step, loss: roofline.Row) -> tuple[float, dict[str, float]]:
    """A micro-batch's time, and by part: the GPU's compute, bounded below by the host that
    issues its kernels (module docstring), then the collectives it does not hide and what the
    activation offload exposes."""
    gemm, attn, elementwise = _gemm_s(s), _attention_s(s), _elementwise_s(s)
    accum = _accumulation_s(s)
    compute = gemm + attn + loss.predicted_ms / 1e3 + elementwise + accum
    layers = s.arch.layers
    busy = max(compute, layers * (HOST_LAYER_S + _ew_rerun(s.plan) * HOST_RERUN_S))
    comm = _micro_comm_s(s)
    exposed = comm if not s.levers.overlap else max(comm * (1 - OVERLAP), comm - busy)
    offload = _offload_s(s, elementwise)
    return busy + exposed + offload, {
        "gemm": gemm,
        "attention": attn,
        "loss": loss.predicted_ms / 1e3,
        "elementwise": elementwise,
        "grad_accumulation": accum,
        "host_bound": busy - compute,
        "comm_exposed": exposed,
        "activation_offload_exposed": offload,
    }


def predict(
    arch: Arch, card_name: str, gpus: int, engine: str, levers: Levers, work: Workload
) -> Prediction:
    """One optimizer step of ``work.samples_per_step`` samples (module docstring)."""
    engine = _engine_as_run(engine, levers)
    plan = layer_plan(arch, card_name, gpus, engine, levers, work)
    s = _Step(arch, CARDS[card_name], gpus, engine, levers, work, plan)
    loss = _loss(arch, card_name, levers, work)
    micro, split = _micro_batch_s(s, loss)
    boundary = _boundary_s(s)
    micro_batches = work.samples_per_step / (work.samples * gpus)
    flops = packed_flops(s.shape, work.seq_lens, work.loss_rows, s.rerun)
    return Prediction(
        micro_s=micro,
        boundary_s=boundary,
        step_s=micro_batches * micro + boundary,
        model_flops=flops.model * micro_batches * gpus,
        hardware_flops=flops.hardware * micro_batches * gpus,
        memory_bytes=memory(arch, gpus, engine, levers, plan, work, loss.workspace_bytes),
        split_s=split,
        plan=plan,
    )
