"""The step model's memory (bench/step_model.py): what a GPU holds at its peak, and each
layer's checkpointing policy planned as the trainer plans it within the card.

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
"""

from __future__ import annotations

from bench import roofline
from bench.step_inputs import (
    CARDS,
    FIXED_BYTES,
    KL_BYTES_PER_LOGIT,
    MEMORY,
    Arch,
    Levers,
    Workload,
    _stage,
)
from reflectioncoder import activation_checkpointing as ac
from reflectioncoder import memory_plan as mp


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
