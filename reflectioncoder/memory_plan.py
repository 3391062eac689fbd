"""The memory plan of a run: the bytes each activation-checkpointing policy keeps per token and
layer, and what it reruns, both from the model's widths (``train/flops.py``'s ``ModelShape``);
what the engine keeps resident; and, for ``model.checkpointing_policy: auto``, the least
recompute that fits the device, planned once at start (``plan_layers``, ``plan_run``).

``auto``: the least recompute (``rerun_cost``: the share of a layer's forward GEMM FLOPs each
policy reruns, from the model's widths) that fits the device, from the bytes each policy keeps
per token and layer (``KEPT_WIDTHS``: counts of the model's widths, checked against the CPU's
heap at three shapes) and the memory the device has left once weights, gradients and optimizer
states (``resident_bytes``) and a reserve (``reserve_bytes``) are taken; on CUDA (and with
``model.activation_offload``) ``auto`` offloads the first layers that the host link can carry
(``offload_rule``: the rule is stated there). Whether the optimizer must leave the device is
decided here too (``needs_offload``). The policies themselves: ``activation_checkpointing``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reflectioncoder.activation_checkpointing import named_plan
from reflectioncoder.train.flops import ModelShape

# What a layer keeps on the device per token, by policy, as counts of the shape's widths
# (ModelShape: D hidden, D_q query width, D_kv key / value width, I intermediate) at the
# activations' element size, and of its query heads' log-sum-exp (fp32):
#   full     the layer's input (D);
#   offload  the same (the rest on the host: OFFLOADED_WIDTHS);
#   mlp_rerun  the input, q (D_q), k and v (D_kv each), the attention's output (D_q) and
#            log-sum-exp, o_proj's output (D);
#   save_gemms  those and gate's and up's outputs (I each);
#   none     every tensor the backward reads (HF Llama's ops): the input, each RMSNorm's
#            normalised input and output (2 x 2D) and the residual sum (D), the rotated q
#            (D_q), k (D_kv), v (D_kv), the attention's output (D_q) and log-sum-exp, SwiGLU's
#            gate, silu(gate), up and product (4I). A plain MLP (GPT-2's, StarCoder-1's: one
#            input GEMM, ``ModelShape.mlp_inputs``) keeps half of each I count: c_fc's output,
#            its activation's; ``none`` also what the activation saves itself
#            (``ModelShape.act_extra``: GPT-2's gelu_new, 3 I).
# Checked against the heap the CPU measures at four shapes (bench/bench_activation_memory.py
# -> bench/results/activation_memory.json; tests/test_planshape_bytes.py); there ``none`` keeps
# one D_q more: the CPU's per-segment SDPA keeps each segment's output and o_proj their
# concatenation, where a varlen kernel's one output is both.
# Multi-head latent attention (DeepSeek-V2/V3) has other attention tensors (``_latent``).
KEPT_WIDTHS = {  # (D, D_q, D_kv, I, log-sum-exp)
    "none": (6, 2, 2, 4, 1), "save_gemms": (2, 2, 2, 2, 1), "offload": (1, 0, 0, 0, 0),
    "mlp_rerun": (2, 2, 2, 0, 1), "full": (1, 0, 0, 0, 0),
}  # fmt: skip
OFFLOADED_WIDTHS = (1, 2, 2, 2, 1)  # save_gemms' outputs but the layer's input


def _per_token(
    widths: tuple[int, ...], shape: ModelShape, element_bytes: int, every: bool = False
) -> float:
    """Bytes a token keeps of ``widths``; ``every``: ``none``'s set (the attention's inputs
    rather than its projections' outputs, which differ under multi-head latent attention)."""
    d, dq, dkv, i, lse = widths
    attention = dq * shape.attn_width + dkv * shape.kv_width
    if shape.kv_lora and dq + dkv:
        attention = _latent(shape, every)
    elements = d * shape.hidden + attention
    mlp, index_bytes = _mlp(i, shape, every)
    return (elements + mlp) * element_bytes + index_bytes + lse * 4 * shape.heads


def _mlp(i: int, shape: ModelShape, every: bool) -> tuple[float, float]:
    """(elements, int64 bytes) the MLPs keep a token, on average over the layers: a dense MLP
    ``i`` of I (gate and up; with every: their activation and product too); a mixture of
    experts' MoE layer (E experts, top-k of them I_e wide, shared ones I_s): the router's
    logits, each routed expert's gate / up and down outputs (its router weight multiplies the
    latter), the shared experts' gate / up (their down output too where a gate multiplies it:
    Qwen2-MoE); with every: the router's probabilities, each routed token's gathered input, the
    activation and product, I_s's too, and each routed pair's indices (6 int64: the sort and its
    inverse). Measured on the CPU's heap for Mixtral, Qwen2-MoE and DeepSeek-V3 shapes
    (tests/test_moe_memory_plan.py)."""
    moe = shape.experts
    if moe is None or not i:  # a plain MLP (one input GEMM, GPT-2's c_fc) keeps half
        extra = shape.act_extra * every  # what a Python activation keeps (gelu_new)
        return (i * shape.mlp_inputs / 2 + extra) * shape.intermediate, 0.0
    d, k, width, shared = shape.hidden, moe.top_k, moe.width, moe.shared_width
    if every:
        routed = 2 * moe.experts + k * (2 * d + 4 * width)
        shared_kept = 4 * shared + (d + 2) * moe.shared_gated
    else:
        routed = moe.experts + k * (2 * width + d)
        shared_kept = 2 * shared + (d + 1) * moe.shared_gated
    dense = shape.layers - moe.layers
    per_layer = (
        dense * i * shape.intermediate + moe.layers * (routed + shared_kept)
    ) / shape.layers
    return per_layer, 48.0 * k * every * moe.layers / shape.layers


def _latent(shape: ModelShape, every: bool) -> int:
    """The attention's elements a token keeps under multi-head latent attention (q_lora ``Q``,
    kv_lora ``C``, a head's rotary part ``R``, its scores' width ``S`` (= nope + R), its values'
    ``V``, H heads; the packed attention runs every head ``P = max(S, V)`` wide, padding the
    narrower with zeros). Its GEMMs' outputs (``save_gemms``, ``mlp_rerun``, ``offload``):
    q_a's (Q) and q_b's (H S; or q_proj's alone), kv_a's (C + R) and kv_b's (H (nope + V)),
    the attention's output (H P). Everything (``none``): q_a's output and its norm's (2 Q), kv_a's
    (C + R) and its norm's (C), q, k and v as the attention takes them (3 H P), its output
    (H P) and o_proj's input, the output cut to V (H V). DeepSeek-V3 (H 128, S 192, V 128):
    save_gemms 84032 elements where 64-wide heads counted 32768 (tests/test_mla_memory_plan.py:
    by hand and against the CPU's heap)."""
    heads, score, value = shape.heads, shape.qk_width, shape.v_width
    padded = max(score, value)  # H P
    if not every:
        kv_b = score - heads * shape.rope_dim + value
        return shape.q_lora + score + shape.kv_lora + shape.rope_dim + kv_b + padded
    low_rank = 2 * shape.q_lora + 2 * shape.kv_lora + shape.rope_dim
    return low_rank + 4 * padded + value


def kept_per_token(policy: str, shape: ModelShape, element_bytes: int = 2) -> float:
    """Bytes one layer of ``policy`` keeps on the device per token (``KEPT_WIDTHS``)."""
    return _per_token(KEPT_WIDTHS[policy], shape, element_bytes, every=policy == "none")


def rerun_cost(shape: ModelShape) -> dict[str, float]:
    """What a layer of each policy runs again in the backward, as a share of its forward's
    GEMM FLOPs (q / k / v / o: D x (2 D_q + 2 D_kv), the MLP's input GEMMs: gate and up, then
    down: D x I): ``full`` all but down_proj (early stop), ``mlp_rerun`` the MLP's input GEMMs;
    the others only element-wise ops (``offload`` its copies too), 0 here; ``full``'s attention
    rerun is left out (about 6% of a 7B layer's forward at 16K tokens in 2K-token segments).
    CodeLlama-7B (multi-head): mlp_rerun 0.446, full 0.777; 34B (8 KV heads): 0.521, 0.739.
    A mixture of experts' last GEMM is its shared experts' down projection or none (Mixtral:
    ``full`` reruns all of its GEMMs; train/flops.py's ``_last_gemm``). ``plan_layers`` takes
    the plan of least summed cost."""
    attn = attention_params(shape)
    mlp_in = shape.mlp_in_params / shape.layers
    last = shape.hidden * shape.intermediate  # down_proj
    if shape.experts is not None:  # what checkpointing skips: shared experts' down, or none
        last = (shape.body_params - shape.recomputed_params) / shape.layers
    forward = attn + mlp_in + last
    return {"none": 0.0, "save_gemms": 0.0, "offload": 0.0,
            "mlp_rerun": mlp_in / forward, "full": (attn + mlp_in) / forward}  # fmt: skip


def attention_params(shape: ModelShape) -> int:
    """A layer's attention GEMMs' parameters: q / k / v / o, D x (2 D_q + 2 D_kv); under
    multi-head latent attention q_a (D x Q) and q_b (Q x H S) or q_proj (D x H S), kv_a
    (D x (C + R)), kv_b (C x H (nope + V)) and o_proj (H V x D) (``_latent``'s names)."""
    d = shape.hidden
    if not shape.kv_lora:
        return d * (2 * shape.attn_width + 2 * shape.kv_width)
    score, value = shape.qk_width, shape.v_width
    q = (d + score) * shape.q_lora if shape.q_lora else d * score
    kv_b = shape.kv_lora * (score - shape.heads * shape.rope_dim + value)
    return q + d * (shape.kv_lora + shape.rope_dim) + kv_b + value * d


# Offloaded layers on the device at once ahead of a backward: the one in use and the one
# arriving (activation_offload.py), or one still leaving at the forward's end.
OFFLOAD_IN_FLIGHT = 2
# The host link an offload stream has: PCIe 5.0 x16 at 0.8 of 64 GB/s a direction, ASSUMED
# (bench/step_model.py's PCIE, not measured); and the GEMM efficiency the planner takes for a
# layer's forward time (bench/step_model.py's GEMM_EFF, fitted there).
PCIE_BYTES_S = 0.8 * 64e9
GEMM_EFF = 0.60
# The host's DRAM that every rank's offload stream on one host shares: a two-socket DDR5-4800
# server (16 channels x 38.4 GB/s = 614 GB/s) taken at half for the links' DMA beside the
# host's other traffic, ASSUMED (not measured).
HOST_DMA_BYTES_S = 0.5 * 614e9

# What the device holds besides weights, gradients, optimizer states and activations: the CUDA
# context, cuBLAS workspaces, the loss's chunk workspace, the allocator's fragmentation.
RESERVE_FIXED = 3 * 2**30
RESERVE_SHARE = 0.05
# ZeRO's reduce buckets (ZeRO-2/3, and ZeRO-1/2 with an offloaded optimizer): D x D elements
# (deepspeed_config.BUCKETS_FROM_HIDDEN), two bf16 buffers and an fp32 copy to reduce (0.17 GB at
# D = 4096), and an offloaded optimizer's bf16 buffer of the largest parameter (the embedding:
# 0.26 GB at 7B); 1 GiB covers them
BUCKET_BYTES = 2**30
# FSDP2's gathered bytes besides its shards (resident_bytes): at 7B (202M parameters a layer,
# 262M in the root) two layers' bf16 weights (0.8 GB), one layer's bf16 gradients (0.4 GB)
# and their fp32 reduce-scatter input (0.8 GB), the root's bf16 weights (0.5 GB); 3 GiB
# covers them (larger models: more per layer, taken the same; a GPU measurement is owed).
FSDP_GATHERED_BYTES = 3 * 2**30


def kept_bytes(policy: str, tokens: int, shape: ModelShape, element_bytes: int = 2) -> float:
    """Bytes one layer of ``policy`` keeps for the backward over ``tokens`` tokens."""
    return kept_per_token(policy, shape, element_bytes) * tokens


def offloaded_bytes(tokens: int, shape: ModelShape, element_bytes: int = 2) -> float:
    """Bytes one ``offload`` layer sends to the host (and back) over ``tokens`` tokens."""
    return _per_token(OFFLOADED_WIDTHS, shape, element_bytes) * tokens


def activation_bytes(
    plan: Sequence[str], tokens: int, shape: ModelShape, element_bytes: int = 2
) -> float:
    """Peak activation bytes of a per-layer plan: what every layer keeps on the device, plus
    one layer's whole set while a recomputed layer runs again in the backward, plus the
    offloaded layers in flight (``OFFLOAD_IN_FLIGHT``)."""
    return _counts_bytes(Counter(plan), tokens, shape, element_bytes)


def _counts_bytes(
    counts: Mapping[str, int], tokens: int, shape: ModelShape, element_bytes: int = 2
) -> float:
    """``activation_bytes`` of a plan with ``counts`` layers of each policy (in any order)."""
    kept = sum(n * kept_bytes(p, tokens, shape, element_bytes) for p, n in counts.items())
    if any(n for p, n in counts.items() if p != "none"):
        kept += kept_bytes("none", tokens, shape, element_bytes)
    in_flight = min(OFFLOAD_IN_FLIGHT, counts.get("offload", 0))
    return kept + in_flight * offloaded_bytes(tokens, shape, element_bytes)


def offload_rule(
    layers: int, tokens: int, shape: ModelShape, layer_forward_s: float, link_bytes_s: float,
    element_bytes: int = 2,
) -> tuple[int, int]:  # fmt: skip
    """(how many layers ``auto`` may offload, every how many layers), the rule: an offloaded
    layer's copy back has the backward of the layers from it to the next offloaded one above
    (a layer's backward taken as twice its forward: data and weight gradients), so offloaded
    layers sit every ``ceil(copy time / (2 x layer_forward_s))`` layers from the first; and what
    they send to the host in a micro-batch leaves while the forward of the layers after the
    first runs: ``n x offloaded_bytes <= link_bytes_s x (layers - 1) x layer_forward_s``.
    ``layer_forward_s``: one layer's forward time (``layer_forward_s``)."""
    per = offloaded_bytes(tokens, shape, element_bytes)
    every = max(1, math.ceil(per / link_bytes_s / (2 * layer_forward_s)))
    most = int(link_bytes_s * (layers - 1) * layer_forward_s // per)
    return max(0, min(math.ceil(layers / every), most)), every


def link_bytes_s(ranks_on_host: int) -> float:
    """One rank's offload rate: its PCIe link, or its share of the host's DRAM."""
    return min(PCIE_BYTES_S, HOST_DMA_BYTES_S / max(1, ranks_on_host))


def layer_forward_s(layer_params: int, tokens: int, peak_flops: float) -> float:
    """The planner's forward time of one layer: its GEMMs alone (2 x parameters x tokens) at
    ``GEMM_EFF`` of the peak; attention and element-wise ops left out (a shorter window:
    fewer layers offloaded, never more)."""
    return 2 * layer_params * tokens / (peak_flops * GEMM_EFF)


def plan_layers(
    layers: int,
    tokens: int,
    shape: ModelShape,
    budget_bytes: float,
    element_bytes: int = 2,
    offload: tuple[int, int] = (0, 1),
) -> tuple[str, ...]:
    """The least recompute whose activations fit ``budget_bytes``: every layer ``none`` if that
    fits; else, of the plans with up to ``offload[0]`` layers ``offload``, one every
    ``offload[1]`` from the first (``offload_rule``; they rerun what ``save_gemms`` reruns),
    and the other layers ``save_gemms``, ``mlp_rerun`` or ``full``, the one of least summed
    ``rerun_cost`` of ``shape`` (its bytes: ``kept_per_token``; ties: the fewest offloaded,
    then the fewest ``mlp_rerun``), with as many ``save_gemms`` layers as fit; bytes still
    left turn ``save_gemms`` layers into ``none``. Deterministic. All ``full`` when not even
    that fits (the caller says so)."""
    most, every = offload
    cost_of = rerun_cost(shape)

    def counts(off: int, kept: int, saved: int, mlp: int) -> dict[str, int]:
        full = layers - off - saved - mlp
        return {"offload": off, "none": kept, "save_gemms": saved - kept, "mlp_rerun": mlp,
                "full": full}  # fmt: skip

    def fits(off: int, kept: int, saved: int, mlp: int) -> bool:
        need = _counts_bytes(counts(off, kept, saved, mlp), tokens, shape, element_bytes)
        return need <= budget_bytes

    def most_saved(off: int, mlp: int) -> int:
        """The most ``save_gemms`` layers that fit beside ``off`` and ``mlp`` (the rest
        ``full``): the bytes are linear in them, the float rounding checked."""
        room = layers - off - mlp
        step = kept_bytes("save_gemms", tokens, shape, element_bytes)
        step -= kept_bytes("full", tokens, shape, element_bytes)
        left = budget_bytes - _counts_bytes(counts(off, 0, 0, mlp), tokens, shape, element_bytes)
        saved = max(0, min(room, int(left // step)))
        while saved > 0 and not fits(off, 0, saved, mlp):
            saved -= 1
        while saved < room and fits(off, 0, saved + 1, mlp):
            saved += 1
        return saved

    if fits(0, layers, layers, 0):
        return ("none",) * layers
    best = None  # (cost, offloaded, mlp_rerun layers, save_gemms layers)
    for off in range(min(most, layers) + 1):
        if not fits(off, 0, 0, 0):
            break
        for mlp in range(layers - off + 1):
            if not fits(off, 0, 0, mlp):
                break
            saved = most_saved(off, mlp)
            full = layers - off - saved - mlp
            cost = round(mlp * cost_of["mlp_rerun"] + full * cost_of["full"], 9)
            if best is None or (cost, off, mlp) < best[:3]:
                best = (cost, off, mlp, saved)
    off, mlp, saved = (0, 0, 0) if best is None else best[1:]
    kept = 0
    while kept < saved and fits(off, kept + 1, saved, mlp):
        kept += 1
    rest = iter(("none",) * kept + ("save_gemms",) * (saved - kept) + ("mlp_rerun",) * mlp
                + ("full",) * layers)  # fmt: skip
    offloaded = range(0, off * every, every)
    return tuple("offload" if i in offloaded else next(rest) for i in range(layers))


def resident_bytes(
    params: int,
    *,
    stage: int,
    ranks: int,
    offload: bool = False,
    autocast: bool = False,
    fsdp: bool = False,
) -> float:
    """Bytes a device holds for weights, gradients and optimizer states, by engine: ``stage`` 0
    is one process without DeepSpeed, 1-3 DeepSpeed's ZeRO stage over ``ranks``; ``fsdp``:
    torch's FSDP2 (``train/fsdp_engine.py``), whose fp32 shards are the masters: 16 bytes a
    parameter over the ranks (master, gradient, m, v) and what is gathered at once
    (``FSDP_GATHERED_BYTES``).

    bf16 weights (fp32 under autocast), gathered whole but at stage 3; gradients: bf16 plus the
    fp32 sums of a step's micro-batches (fp32 alone under autocast), or a 1/ranks fp32 partition
    and the buckets at stage 2-3 and with an offloaded optimizer (which runs stage 1 as stage 2:
    ``deepspeed_config.offloaded_stage``; at stage 0, one rank, the whole fp32 sums 4P, the bucket
    allowance covering the one bf16 gradient in flight); fp32 master weights, m and v over
    1/ranks (m and v under autocast), none on the device when offloaded."""
    if fsdp:
        return 16 * params / ranks + FSDP_GATHERED_BYTES
    weights = (4 if autocast else 2) * params / (ranks if stage == 3 else 1)
    if stage >= 2 or offload:
        grads = 4 * params / ranks + BUCKET_BYTES
    elif stage == 1 or autocast:  # DeepSpeed's BF16 optimizer frees each bf16 gradient once added
        grads = 4 * params
    else:
        grads = 6 * params
    if offload:
        states = 0.0
    else:
        states = 8 * params if autocast else 12 * params / (ranks if stage >= 1 else 1)
    return weights + grads + states


def reserve_bytes(device_bytes: float) -> float:
    """What a plan leaves free on a device of ``device_bytes`` (``RESERVE_*``)."""
    return RESERVE_FIXED + RESERVE_SHARE * device_bytes


def activation_budget(device_bytes: float, resident: float) -> float:
    """Bytes left for activations."""
    return device_bytes - resident - reserve_bytes(device_bytes)


def can_offload(stage: int, ranks: int) -> bool:
    """Whether an engine can put its optimizer on the host: DeepSpeed's ZeRO-1/2 (ZeRO-Offload),
    or the one-process engine on one rank (``local_engine.LocalEngine``)."""
    return stage in (1, 2) or (stage == 0 and ranks == 1)


def needs_offload(
    device_bytes: float,
    params: int,
    layers: int,
    tokens: int,
    shape: ModelShape,
    stage: int,
    ranks: int,
) -> bool:
    """Whether the optimizer has to leave the device: not even all-``full`` checkpointing fits
    beside the weights, gradients and states that stay."""
    resident = resident_bytes(params, stage=stage, ranks=ranks)
    least = activation_bytes(("full",) * layers, tokens, shape)
    return least > activation_budget(device_bytes, resident)


@dataclass(frozen=True)
class MemoryPlan:
    """A run's plan: each layer's policy, whether the optimizer is offloaded, and on a GPU the
    activation bytes the plan needs against the bytes left for them."""

    layers: tuple[str, ...]
    offload: bool
    activation_bytes: float = 0.0
    budget_bytes: float | None = None

    @property
    def fits(self) -> bool:
        return self.budget_bytes is None or self.activation_bytes <= self.budget_bytes


def plan_run(
    policy: str,
    on: bool,
    *,
    layers: int,
    tokens: int,
    shape: ModelShape,
    params: int,
    stage: int,
    ranks: int,
    offload: bool | str,
    device_bytes: float | None,
    element_bytes: int = 2,
    offload_layers: tuple[int, int] = (0, 1),
    fsdp: bool = False,
) -> MemoryPlan:
    """The plan of a run: ``policy`` and ``offload`` as configured (``auto`` resolved here),
    ``shape``: the model's (its widths size each policy's bytes and cost: ``kept_per_token``,
    ``rerun_cost``); ``stage`` 0 for one process without DeepSpeed, ``device_bytes`` the
    GPU's memory (None on a CPU: ``auto`` plans ``full``, never offloads, and nothing is checked);
    ``offload_layers``: how many layers ``auto`` may offload, every how many (``offload_rule``);
    ``fsdp``: torch's FSDP2 (``resident_bytes``; never offloads)."""
    if offload == "auto":
        offload = (
            device_bytes is not None
            and not fsdp
            and can_offload(stage, ranks)
            and needs_offload(device_bytes, params, layers, tokens, shape, stage, ranks)
        )
    offload = bool(offload)
    if not on:
        plan = ("none",) * layers
    elif policy != "auto":
        plan = named_plan(policy, layers)
    elif device_bytes is None:
        plan = ("full",) * layers
    if device_bytes is None:
        return MemoryPlan(plan, offload)
    autocast = element_bytes == 4
    resident = resident_bytes(
        params, stage=stage, ranks=ranks, offload=offload, autocast=autocast, fsdp=fsdp
    )
    budget = activation_budget(device_bytes, resident)
    if on and policy == "auto":
        plan = plan_layers(layers, tokens, shape, budget, element_bytes, offload_layers)
    return MemoryPlan(plan, offload, activation_bytes(plan, tokens, shape, element_bytes), budget)
