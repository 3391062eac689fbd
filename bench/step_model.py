"""A calibrated model of one optimizer step (issue 19, item 4), like bench/roofline.py for the loss.

    python -m bench.step_model                 # the headline rows (default config, recipe)
    python -m bench.step_model --json          # every row as a JSON list
    python -m bench.step_model --calibrate     # the model against measured and published runs

Rows: CodeLlama-7B / 13B / 34B shapes at 16K-token micro-batches, on H100 and H200, one GPU
(engine ``local``: one process; ``zero1``: DeepSpeed, nothing to partition) and 8 (``zero1``,
``zero2``, ``zero3``, and ``fsdp``: torch's FSDP2, ``distributed.backend: fsdp``, sharded as
ZeRO-3 with its own memory, 16 bytes a parameter over the GPUs, and gradient sums), each with
the shipped default config (``default``: true on the engine
``paper_preset``'s ``backend: auto`` runs, ``local`` on one GPU and ``zero1`` on 8
(``default_engine``), as it runs on CUDA: ``model.checkpointing_policy: auto`` (each layer
``none`` / ``save_gemms`` / ``offload`` / ``mlp_rerun`` / ``full``, the least recompute that
fits, costed and sized from each model's own widths (``Arch.shape``: ``rerun_cost``, the share
of a layer's forward GEMM FLOPs each policy reruns, mlp_rerun / full 0.446 / 0.777 at 7B and
13B, 0.521 / 0.739 at 34B's 8 KV heads; ``kept_per_token``), planned as
the trainer plans it: reflectioncoder/activation_checkpointing.py, ``offload`` layers as far
as ``offload_rule`` lets the host link carry them), ``model.compile: auto`` (on under CUDA),
bf16 weights + fp32 masters, fp32 gradient sums (``distributed.fp32_grad_accum: auto``: DeepSpeed's
BF16 optimizer at ZeRO-1, each bf16 gradient freed once added; an fp32 partition at ZeRO-2/3;
the cross-rank sums in fp32 too), ``offload_optimizer: auto`` (on
where weights + gradients + states leave no room for fully checkpointed activations),
torch's varlen attention (FA2-class: the default's kernel as CI installs it), the fused loss,
DeepSpeed's overlap where the stage has it), then one lever changed at a time (``lever``), then
``best`` (the default with FlashAttention-4, ``pip install 'reflectioncoder[hopper]'``, which
``model.attention: auto`` then picks on Hopper; its rate is FA3's, see ``fa4`` below).
``predicted_step_s`` is
one optimizer step of the paper's 512 samples; ``mfu`` / ``hfu`` use the one FLOP count
(reflectioncoder/train/flops.py); ``samples_per_s_vs_recipe`` divides by the authors' recipe
modelled the same way on the same card and GPU count.

The recipe on one H100 does not fit (118.8 GiB: ZeRO-1 in one process partitions nothing, so
bf16 weights, fp32 gradients and fp32 master + m + v are 18 bytes a parameter, 121 GB for
6.7B, before activations). To run it there a user would have to add DeepSpeed's ZeRO-Offload
(``"offload_optimizer": {"device": "cpu"}`` in the ZeRO-1 config: 44.5 GiB with an fp32
partition's gradient memory, an upper bound: with the recipe's bf16 sums DeepSpeed keeps them on
the host; 1.865 samples/s modelled, against 1.884 for the unrunnable recipe row, so our
default's ratio over it is 2.08x, not the 2.06x printed), or use 4 GPUs or more. The 1-H100
recipe row is kept as written (``fits`` says NO) so the ratio is the smaller one.

The workload (``reflection_workload``), stated: a sample's prompt + answer is L = 2048 tokens
(the mix goes up to 4096); the recipe computes 2L tokens a sample (teacher row + full-length
student row, one sample per micro-batch, the head on all 2L rows); ours packs 0.768 x 2L tokens
a sample (two segments) with the head on 0.418 of them, both ratios taken from the measured
H200 step (8,857 packed tokens and 3,704 loss rows for samples the recipe runs as 11,534).

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

Memory per GPU (``memory_plan.resident_bytes``, the function the trainer plans
with): bf16 weights 2P (fp32 4P under autocast; 1/n under ZeRO-3); gradients: fp32 sums 4P at
ZeRO-1 (the BF16 optimizer frees each bf16 gradient once added) and under autocast, bf16 2P +
fp32 4P for ``local``, an fp32 partition 4P/n + 1 GiB of buckets at ZeRO-2/3 and with an
offloaded optimizer (DeepSpeed's ZeRO-1 offloaded would also keep a whole fp32 sum 4P, its
``grad_accum``, so the trainer runs an offloaded ZeRO-1 as ZeRO-2, and so does this model:
``deepspeed_config.offloaded_stage``; the gradient bytes each stage holds are measured by
tests/test_zero_fp32_sums.py);
fp32 master + m + v 12P/n (m + v 8P under autocast; none on the GPU when offloaded);
activations (``activation_bytes``): the bytes per token and layer of each layer's policy
from the model's widths (``kept_per_token``: counts of D, the query width, the KV width and I,
in bf16, plus the fp32 log-sum-exp; the CPU's heap at four shapes, bench/results/
activation_memory.json, is the check), per D at 7B: none 41.5, save_gemms 22.8, mlp_rerun
12.0, full and offload 2.0; at 34B (8 KV heads): 38.0, 19.3, 8.5, 2.0) x T, plus one layer's
whole set while a recomputed layer runs again, plus two offloaded layers in flight (at 7B
20.8 D x T each:
one arriving ahead of its backward, one still leaving at the forward's end:
``OFFLOAD_IN_FLIGHT``); the
loss's workspace (roofline); 3 GiB for the CUDA context and cuBLAS workspaces. ``auto`` plans
within the card less 5% for fragmentation (``RESERVE_SHARE``), and ``fits`` is that test:
memory <= 0.95 x the card's memory as nvidia-smi reports it (81,559 / 143,771 MiB = 79.6 /
140.4 GiB).

Calibration (``--calibrate``): our H200 rows (attention, the loss, the 1.5B step, the 1.06B
CLI step) and the published anchors (torchtitan Llama-3.1-8B, llm-foundry MPT-7B, Megatron-LM's
"up to 47%" as a ceiling), each modelled with its own shape, workload, levers and card as it
ran (our two steps' micro-batches and host time replayed on the CPU with the code of the
commit that measured them; torchtitan's on its own H100s: 2.4 TB/s HBM2e, 500 W, peak between
NVL's and SXM's); two constants are fitted, each to one row that is then marked as checking
nothing; the host time is measured, not fitted; the misses are printed with what the model
leaves out. Our two measured steps are simulated as one CUDA stream fed by the replayed host
(``simulate_stream``):
- REPLAYED (bench/bench_host_replay.py --op-timeline, results/host_replay.json's
  ``op_timeline``): every op of one step that a CUDA run launches a kernel for (the
  dispatched aten ops on the model's, optimizer's and batch's tensors, the CUDA-only kernels'
  one-op stand-ins), in issue order, with its issue time (main-thread CPU since the segment's
  start, less the recorder's own, at widths 8 and 16 extrapolated to width 0), its category
  (GEMM, attention, loss, element-wise, copy, optimizer) and its FLOPs and bytes at the run's
  own shapes (each size that grows with the width mapped to the run's hidden size: the
  GEMMs' FLOPs come to the model's 6 x body params x T (+ recompute) exactly, the note's check);
  each op issued at its share of its segment's host time, the segments' host as above;
- MODELLED: each kernel's GPU seconds, its category's total from ``predict`` (the GEMMs,
  attention, the loss, element-wise + gradient sums, the optimizer step) shared by its
  roofline time at the run's shapes (max(FLOPs / peak, bytes / HBM): GEMMs by FLOPs at
  their ``gemm_share``, element-wise by bytes);
- a floor a kernel, ``KERNEL_FLOOR_S``: 0 (no published H100 / H200 floor of a kernel's own
  time; the fixed time each kernel adds, below, is counted on top instead);
- PUBLISHED: the driver's launch a kernel, which no CPU op of the replay makes,
  ``HOST_LAUNCH_S`` = 3.0 us on the host before each op is issued (tritonbench PR 1017);
  what each kernel adds to the stream whatever its size, ``KERNEL_FIXED_S`` = 1.2 us
  (pytorch/pytorch#161104; Liger's H100 benchmark data); the GEMMs' shares weighted by
  ``gemm_share`` (a small GEMM takes more of the total);
- SIMULATED: a kernel starts at max(its issue time, the end of the kernel before it); at each
  sync the host waits for the stream to drain; the step is the sum of the segments.
The two rows then: 1.5B -24.0%, CLI -38.6% (without the three published terms: -33.4% and
-41.9%; other recordings on this shared CPU moved those by about 1 point; no overlap at all:
+11% and +1%; the note prints each segment's host, GPU busy and elapsed). The published
candidates, each alone on the 1.5B / CLI rows (every other calibration row moves by 0.2
points or less and no headline default row moves; bench/RESULTS.md has the tables):
- in the model: the H100 cuBLAS sweep by GEMM size (-25.8 / -40.5 alone; 1 GFLOP and less
  at the smallest point's time); the driver's
  launch (-32.9 / -40.4); 1.2 us a kernel on the stream (-31.7 / -41.5);
- left out: a GPU floor of 7 us a kernel (meta-pytorch/autoparallel's H100 cost model,
  ``kernel_launch_overhead = 7`` us with element-wise ops at 70% of HBM, "empirically
  obtained by minimizing the runtime over a set of examples on H100 GPUs", PR 146: a
  planner's fit of whole eager ops, launch included, which the replayed host already carries;
  with the three above: -22.3 / -38.3); a lone kernel's 6.1 us instead of 1.2 (the CUDA-event
  intercept of Liger's H100 element-wise sweep: -17.3 / -36.3, an upper bound, the events'
  own cost in it); Triton's Python launcher above the driver call for Liger's and the loss's
  kernels (the replay runs their Python with a one-op stand-in: Triton's JIT dispatch 8.7 us
  a call on a GB200, vllm-project/vllm PR 34838, CompiledKernel.run 4.7-5.6 us, tritonbench
  PR 1017; at most 5.7 us more for some 550 (1.5B) and 390 (CLI) launches: -23.9 / -38.2);
  Liger's H100 benchmark times a lone RMSNorm backward at 0.30 ms flat from H = 1024 to 8192
  (liger 0.8.0): the autograd call around one small kernel, host time the replay measures.
None closes the misses: the simulation would need the GPU 1.33x (1.5B; the CLI 1.89x) or the
replayed host 2.0x (1.5B) and 1.77x (CLI), 32 and 48 us more a kernel, ten times the
published launch costs; a GPU profile of either step settles it (bench/gpu_call.sh step 2,
owed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench import roofline
from reflectioncoder import activation_checkpointing as ac
from reflectioncoder import memory_plan as mp
from reflectioncoder.train.flops import ModelShape, packed_flops, recomputed_share
from reflectioncoder.train.host_optimizer import HOST_BUCKET_BYTES

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
ATTN_EFF["fa4"] = ATTN_EFF["fa3"]  # a stand-in (the docstring): no published FA4 Hopper rate
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
        """Element-wise HBM bytes of one token through one layer's forward (docstring)."""
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
    """Ours: samples packed to ``tokens``, two segments each (docstring's ratios)."""
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


def default_levers(arch: Arch, card: str, gpus: int, engine: str, work: Workload) -> Levers:
    """The shipped default on this layout: ``offload_optimizer: auto`` resolved as the trainer
    does (``memory_plan.needs_offload``; DeepSpeed ZeRO-1/2, or one process on one
    rank: ``can_offload``)."""
    offload = mp.can_offload(_stage(engine), gpus) and mp.needs_offload(
        MEMORY[card], _params(arch), arch.layers, work.tokens, arch.shape(), _stage(engine), gpus
    )
    return Levers(offload=offload)


def _params(arch: Arch) -> int:
    shape = arch.shape()
    return shape.body_params + 2 * shape.vocab * shape.hidden


def _resident(arch: Arch, gpus: int, engine: str, levers: Levers) -> float:
    """Weights, gradients and optimizer states on a GPU (``activation_checkpointing``)."""
    autocast = levers.precision == "autocast"
    stage = _stage(engine)
    return mp.resident_bytes(
        _params(arch),
        stage=stage,
        ranks=gpus,
        offload=levers.offload,
        autocast=autocast,
        fsdp=engine == "fsdp",
    )


def layer_plan(
    arch: Arch, card: str, gpus: int, engine: str, levers: Levers, work: Workload
) -> tuple[str, ...]:
    """Each layer's policy: a named one, or ``auto`` planned as the trainer plans it."""
    if levers.checkpointing != "auto":
        return ac.named_plan(levers.checkpointing, arch.layers)
    resident = _resident(arch, gpus, engine, levers)
    workspace = _loss(arch, card, levers, work).workspace_bytes
    budget = mp.activation_budget(MEMORY[card], resident + workspace)
    offload = (0, 1)
    if levers.activation_offload:  # the trainer's rule and its GEMM-only forward time
        layer_params = arch.shape().body_params // arch.layers
        peak = roofline.CARDS[card].bf16_tflops * 1e12
        forward_s = mp.layer_forward_s(layer_params, work.tokens, peak)
        link = mp.link_bytes_s(gpus)
        offload = mp.offload_rule(arch.layers, work.tokens, arch.shape(), forward_s, link)
    return mp.plan_layers(arch.layers, work.tokens, arch.shape(), budget, 2, offload)


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


def _loss(arch: Arch, card_name: str, levers: Levers, work: Workload) -> roofline.Row:
    """bench/roofline.py's model of the loss (module docstring)."""
    sched = "pipelined" if levers.loss == "fused" else "torch"
    if sched == "pipelined":
        loss_sched = roofline.pipelined(work.loss_rows, arch.hidden, arch.vocab, 2)
    else:  # full logits: CE, and the recipe's KL (teacher row against student row) beside it
        loss_sched = roofline.torch_unfused(work.loss_rows, arch.hidden, arch.vocab, 2)
        if work.kl:
            kl = KL_BYTES_PER_LOGIT * work.loss_rows * arch.vocab
            loss_sched.kernels.append(roofline._stream("KL fwd + bwd", kl, count=12))
    card = CARDS[card_name]
    return roofline.evaluate(
        sched, loss_sched, card, work.loss_rows, arch.hidden, arch.vocab, "bf16"
    )


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


def predict(
    arch: Arch, card_name: str, gpus: int, engine: str, levers: Levers, work: Workload
) -> Prediction:
    """One optimizer step of ``work.samples_per_step`` samples (module docstring)."""
    if engine == "zero1" and levers.offload and levers.fp32_sums:
        # the trainer runs an offloaded ZeRO-1 as ZeRO-2 (offloaded_stage), whatever the sums;
        # with bf16 sums this stays DeepSpeed's own ZeRO-1, as the authors' code runs it (the
        # recipe made runnable with ZeRO-Offload; the 1-GPU zero1 fp32_sums=off row too)
        engine = "zero2"
    card = CARDS[card_name]
    peak, hbm = card.bf16_tflops * 1e12, card.hbm_tbs * 1e12 * BW_EFF
    shape = arch.shape()
    params = shape.body_params + 2 * shape.vocab * shape.hidden
    t, layers = work.tokens, arch.layers
    plan = layer_plan(arch, card_name, gpus, engine, levers, work)
    # GEMMs and attention run again on full layers, the MLP's gate and up on mlp_rerun ones
    rerun = recomputed_share(plan)
    rec, again = rerun.layers, rerun.layers * shape.recomputed_params
    again += rerun.mlp * shape.mlp_in_params
    ew_rerun = _ew_rerun(plan)
    square = layers * shape.attn_width * sum(n * n for n in work.seq_lens)
    gemm_eff = GEMM_EFF * gemm_shape_factor(arch, t)  # small GEMMs run slower (GEMM_SWEEP_H100)
    gemm = (6 * shape.body_params + 2 * again) * t / (peak * gemm_eff)
    # compiled layers (offloaded ones run eagerly): the custom op's backward reruns the forward
    # unless it calls the kernel's own backward
    kernel = levers.attention_op == "kernel" and levers.attention in OP_KERNEL_BACKWARD
    reruns_op = levers.compiled and not kernel
    op_rerun = sum(p != "offload" for p in plan) / layers if reruns_op else 0.0
    attn = (12 + 4 * (rec + op_rerun)) * square / (peak * ATTN_EFF[levers.attention])
    loss = _loss(arch, card_name, levers, work)
    ew_bytes = arch.ew_bytes() * t * layers * (3 + ew_rerun)
    ew_bytes *= EW_COMPILED if levers.compiled else EW_HF if levers.kernels == "hf" else 1.0
    if levers.precision == "autocast":
        ew_bytes = ew_bytes * 1.5 + 6 * params * (1 + rec) + 6 * rerun.mlp * shape.mlp_in_params
    elementwise = ew_bytes / hbm
    # one layer's forward and backward (its element-wise rerun included), for the offload
    ew_layer = elementwise / (layers * (3 + ew_rerun))
    fwd_layer = (2 * shape.body_params * t / (peak * gemm_eff)) / layers
    fwd_layer += 4 * square / layers / (peak * ATTN_EFF[levers.attention]) + ew_layer
    bwd_layer = 2 * fwd_layer + (1 if "offload" in plan else 0) * ew_layer
    offload = offload_exposed_s(plan, t, arch.shape(), gpus, fwd_layer, bwd_layer)
    whole, owned = (GRAD_SUM_BYTES if levers.fp32_sums else BF16_SUM_BYTES)[engine]
    if engine == "fsdp" and levers.precision == "autocast":
        whole -= 6
    shard = gpus if _stage(engine) >= 2 else 1
    accum = (whole + owned / shard) * params / hbm
    grad_bytes = 4 if levers.fp32_sums else 2  # DeepSpeed's communication_data_type
    comm = 0.0
    if engine == "zero2":  # DeepSpeed all-reduces each bucket (module docstring)
        comm = 2 * _ring(grad_bytes * params, gpus)
    elif _stage(engine) == 3:  # bf16 weights gathered, gradients reduce-scattered
        comm = _ring(2 * params, gpus) * (2 + rec) + _ring(grad_bytes * params, gpus)
        comm += _ring(2 * rerun.mlp * shape.mlp_in_params, gpus)  # gate / up gathered again
    compute = gemm + attn + loss.predicted_ms / 1e3 + elementwise + accum
    # the GPU cannot run ahead of the host that issues its kernels (module docstring)
    busy = max(compute, layers * (HOST_LAYER_S + ew_rerun * HOST_RERUN_S))
    exposed = comm if not levers.overlap else max(comm * (1 - OVERLAP), comm - busy)
    micro = busy + exposed + offload
    opt_shard = 1 if engine == "local" else gpus
    if levers.offload and engine == "local":  # one process, the boundary pipelined
        boundary = pipelined_boundary_s(params)
    elif levers.offload:  # fp32 gradients out, the host's AdamW, bf16 weights back, in turn
        # each GPU its own PCIe link; the host's DRAM shared by every rank's CPU Adam
        boundary = (4 + 2) * params / opt_shard / PCIE + params / CPU_ADAM_PARAMS_S
    else:
        opt_bytes = FSDP_OPT_BYTES if engine == "fsdp" else OPT_BYTES[levers.precision]
        boundary = opt_bytes * params / opt_shard / hbm
    if engine == "zero1":
        boundary += 2 * _ring(grad_bytes * params, gpus) + _ring(2 * params, gpus)
    elif engine == "zero2":
        boundary += _ring(2 * params, gpus)
    micro_batches = work.samples_per_step / (work.samples * gpus)
    step = micro_batches * micro + boundary
    flops = packed_flops(shape, work.seq_lens, work.loss_rows, rerun)
    split = {
        "gemm": gemm,
        "attention": attn,
        "loss": loss.predicted_ms / 1e3,
        "elementwise": elementwise,
        "grad_accumulation": accum,
        "host_bound": busy - compute,
        "comm_exposed": exposed,
        "activation_offload_exposed": offload,
    }
    return Prediction(
        micro_s=micro,
        boundary_s=boundary,
        step_s=step,
        model_flops=flops.model * micro_batches * gpus,
        hardware_flops=flops.hardware * micro_batches * gpus,
        memory_bytes=memory(arch, gpus, engine, levers, plan, work, loss.workspace_bytes),
        split_s=split,
        plan=plan,
    )


def memory(
    arch: Arch, gpus: int, engine: str, levers: Levers, plan, work: Workload, loss_ws
) -> float:
    """Bytes a GPU holds at its peak (module docstring)."""
    resident = _resident(arch, gpus, engine, levers)
    acts = mp.activation_bytes(plan, work.tokens, arch.shape())
    return resident + acts + loss_ws + FIXED_BYTES


def fits(memory_bytes: float, card: str) -> bool:
    """Within the card less the planner's share for fragmentation (``RESERVE_SHARE``)."""
    return memory_bytes <= (1 - mp.RESERVE_SHARE) * MEMORY[card]


def make_row(
    arch: Arch,
    card: str,
    gpus: int,
    engine: str,
    levers: Levers,
    lever: str,
    work: Workload,
    recipe_sps: float | None,
) -> dict:
    """One output row; ``recipe_sps`` None: this row is the recipe."""
    pred = predict(arch, card, gpus, engine, levers, work)
    capacity = pred.step_s * gpus * CARDS[card].bf16_tflops * 1e12
    sps = work.samples_per_step / pred.step_s
    return {
        "model": arch.name,
        "card": card,
        "gpus": gpus,
        "engine": engine,
        "micro_batch_tokens": work.tokens,
        **{k: v for k, v in asdict(levers).items()},
        "lever": lever,
        "default": lever == "default" and engine == default_engine(gpus),
        "predicted_step_s": round(pred.step_s, 3),
        "micro_batch_s": round(pred.micro_s, 4),
        "split_s": {k: round(v, 4) for k, v in pred.split_s.items()},
        "mfu": round(pred.model_flops / capacity, 4),
        "hfu": round(pred.hardware_flops / capacity, 4),
        "samples_per_s": round(sps, 3),
        "memory_per_gpu_bytes": int(pred.memory_bytes),
        "checkpointing_plan": plan_text(pred.plan),
        "fits": fits(pred.memory_bytes, card),
        "samples_per_s_vs_recipe": round(sps / (recipe_sps or sps), 3),
    }


def plan_text(plan: tuple[str, ...]) -> str:
    """``save_gemms 23, full 9``: how many layers of each policy."""
    return ", ".join(f"{p} {plan.count(p)}" for p in ac.LAYER_POLICIES if p in plan)


def lever_variants(engine: str, base: Levers) -> list[tuple[str, Levers]]:
    """The default (``base``), then one lever changed at a time."""
    out = [("default", base)]
    for policy in ("full", "none", "save_gemms", "mlp_rerun", "offload", "alternate"):
        out.append((f"checkpointing={policy}", replace(base, checkpointing=policy)))
    out.append(("activation_offload=off", replace(base, activation_offload=False)))
    if engine == "local":  # DeepSpeed always keeps bf16 weights and fp32 masters
        out.append(("precision=autocast", replace(base, precision="autocast")))
    out += [
        ("compiled=off", replace(base, compiled=False)),
        ("attention_op=rerun", replace(base, attention_op="rerun")),
        ("attention=fa4", replace(base, attention="fa4")),
        ("loss=full_logits", replace(base, loss="full_logits")),
    ]
    if _stage(engine) in (0, 1, 2):  # one process: one GPU only (model_rows)
        flip = "off" if base.offload else "on"
        out.append((f"offload={flip}", replace(base, offload=not base.offload)))
    if engine in ("zero2", "zero3", "fsdp"):
        out.append(("overlap=off", replace(base, overlap=False)))
    if engine not in ("local", "fsdp"):  # one process and FSDP always sum in fp32
        out.append(("fp32_sums=off", replace(base, fp32_sums=False)))
    return out


def model_rows() -> list[dict]:
    rows = []
    for arch in ARCHS.values():
        for card in ("H100", "H200"):
            eight = ("zero1", "zero2", "zero3", "fsdp")
            # one GPU: ZeRO-2/3 partition nothing there, but a user may pick them (rows, not
            # the markdown's headline)
            one = ("local", "zero1", "zero2", "zero3")
            for gpus, engines in ((1, one), (8, eight)):
                recipe = make_row(
                    arch, card, gpus, "zero1", RECIPE, "recipe", recipe_workload(), None
                )
                rows.append(recipe)
                sps = recipe["samples_per_s"]
                for engine in engines:
                    work = reflection_workload()
                    base = default_levers(arch, card, gpus, engine, work)
                    for name, levers in lever_variants(engine, base):
                        rows.append(make_row(arch, card, gpus, engine, levers, name, work, sps))
                    # FA4: the `hopper` extra (at FA3's published rate: a stand-in)
                    best = replace(base, attention="fa4")
                    rows.append(make_row(arch, card, gpus, engine, best, "best", work, sps))
    return rows


# Runs measured here (bench/RESULTS.md) and published by others, each modelled with its own
# shape, workload and levers. Errors are predicted / measured - 1 of the run's own figure (a
# time: + is the model slow; a throughput or MFU: + is the model fast).
LLAMA_1B = Arch("Llama-1.5B (RESULTS' 1.5B step)", 2048, 8192, 16, 32, 8, 128256)
# bench_engines' saved model: 16 heads, num_kv_heads = heads // 4, 400 + 7 special tokens
CLI_1B = Arch("Llama-1.06B (RESULTS' CLI run)", 2048, 5504, 24, 16, 4, 407)
LLAMA31_8B = Arch("Llama-3.1-8B", 4096, 14336, 32, 32, 8, 128256)
MPT_7B = Arch("MPT-7B", 4096, 16384, 32, 32, 32, 50432, gelu=True)
COLUMNS = (
    "model",
    "card",
    "gpus",
    "engine",
    "lever",
    "default",
    "checkpointing",
    "offload",
    "predicted_step_s",
    "mfu",
    "hfu",
    "memory_per_gpu_bytes",
    "fits",
    "samples_per_s_vs_recipe",
)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | card | GPUs | engine | lever | default | checkpointing (layers) | optimizer "
        "| step s (512 samples) | MFU | HFU | GiB per GPU | fits | samples/s x recipe |",
        "| --- " * len(COLUMNS) + "|",
    ]
    for r in rows:
        ckpt = r["checkpointing"]
        if ckpt in ("auto", "alternate"):
            ckpt = f"{ckpt}: {r['checkpointing_plan']}"
        lines.append(
            f"| {r['model']} | {r['card']} | {r['gpus']} | {r['engine']} | {r['lever']} | "
            f"{'yes' if r['default'] else ''} | {ckpt} | "
            f"{'CPU' if r['offload'] else 'GPU'} | {r['predicted_step_s']:.2f} "
            f"| {100 * r['mfu']:.1f}% | {100 * r['hfu']:.1f}% | "
            f"{r['memory_per_gpu_bytes'] / 2**30:.1f} | {'yes' if r['fits'] else 'NO'} | "
            f"{r['samples_per_s_vs_recipe']:.2f} |"
        )
    return "\n".join(lines)


def headline(rows: list[dict]) -> list[dict]:
    """The recipe, default and best rows of every model, card and GPU count: the shipped
    default's engine (one process on one GPU, ZeRO-1 on 8), ZeRO-1 on one GPU beside it, and
    ZeRO-3 and FSDP2 on 8 GPUs (where 13B and 34B fit)."""
    keep = ("default", "best", "recipe")
    engines = {1: ("local", "zero1"), 8: ("zero1", "zero3", "fsdp")}
    return [r for r in rows if r["engine"] in engines[r["gpus"]] and r["lever"] in keep]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="every row as a JSON list")
    parser.add_argument("--calibrate", action="store_true", help="measured and published runs")
    parser.add_argument("--model", choices=sorted(ARCHS), help="only this model's rows")
    args = parser.parse_args(argv)
    if args.calibrate:
        from bench.step_calibration import calibration_markdown, calibration_rows

        rows = calibration_rows()
        print(json.dumps(rows, indent=1) if args.json else calibration_markdown(rows))
        return 0
    rows = [r for r in model_rows() if args.model in (None, r["model"])]
    print(json.dumps(rows, indent=1) if args.json else markdown(headline(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
