"""End-to-end train step: ours (packed) against the reference recipe, same model, data, mask.

- ``ours``: each optimizer step's samples packed into micro-batches (teacher + student, the
  student only its visible tokens with original positions), varlen attention, the fused loss on
  the loss rows only (no full logits), backward, AdamW. On CUDA ``prepare_model`` switches
  Liger's RMSNorm / RoPE / SwiGLU on, as the trainer does.
- ``reference``: the authors' recipe: one sample per micro-batch, doubled (teacher row + a
  full-length student row whose hidden keys are masked in the attention), original position
  ids, full-vocabulary logits of both passes, SPEC §2 loss (CE + batchmean KL), gradient
  accumulation over the step's samples, AdamW.
Both compute the same loss (``sample`` normalisation). Data preparation (packing, padding) is
done before any timing, for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.providers.common import synchronize

IGNORE = -100
PROVIDERS = ("ours", "reference")


@dataclass(frozen=True)
class TrainStepConfig:
    """Model sizes, data and mask of one train-step benchmark."""

    vocab: int = 32000
    hidden: int = 256
    layers: int = 6
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 768
    samples: int = 2  # samples per optimizer step
    steps: int = 2  # optimizer steps prepared (the first ones may be warm-up)
    instruction: tuple[int, int] = (100, 400)
    reflection: tuple[int, int] = (300, 2500)
    answer: tuple[int, int] = (100, 600)
    mask_rate: float = 0.5  # fixed r of SPEC §3
    strategy: str = "block_mask"
    block_order: str = "tce"
    max_tokens: int = 16384  # our micro-batch budget
    ref_attn: str = "eager"  # the reference's attention: eager (as the authors) or sdpa
    loss_backend: str = "auto"
    seed: int = 3407
    device: str = "cpu"
    dtype: str = "fp32"  # fp32 or bf16 (parameters, activations; AdamW states follow)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_rate <= 1.0:
            raise ValueError(f"mask_rate: must be in (0, 1], got {self.mask_rate}")
        if self.samples < 1 or self.steps < 1:
            raise ValueError("samples, steps: must be >= 1")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype: expected fp32 or bf16, got {self.dtype!r}")


# A Llama-3.2-1B-shaped model (1.24B parameters with its 128256 vocabulary), for the GPU suite.
LLAMA_1B = dict(vocab=128256, hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192)


def _rate_step(rate: float) -> tuple[int, int]:
    """(step, total_steps) whose SPEC §3 rate min((step + 1) / total, 1) is ``rate``."""
    total = 1000
    return max(round(rate * total) - 1, 0), total


def setup_train_step(cfg: TrainStepConfig):
    """The model (seeded, on the device), its AdamW, and each optimizer step's samples."""
    from reflectioncoder.data.synthetic import synthetic_samples
    from reflectioncoder.model import build_tiny_llama

    model = build_tiny_llama(
        cfg.vocab,
        hidden_size=cfg.hidden,
        num_layers=cfg.layers,
        num_heads=cfg.heads,
        num_kv_heads=cfg.kv_heads,
        intermediate_size=cfg.intermediate,
        max_position_embeddings=8192,
        seed=cfg.seed,
    )
    dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    model.to(device=cfg.device, dtype=dtype)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
    samples = synthetic_samples(
        cfg.steps * cfg.samples,
        vocab_size=cfg.vocab,
        seed=cfg.seed,
        instruction=tuple(cfg.instruction),
        reflection=tuple(cfg.reflection),
        answer=tuple(cfg.answer),
    )
    per_step = [samples[i * cfg.samples : (i + 1) * cfg.samples] for i in range(cfg.steps)]
    return model, opt, per_step


def _mask_cfg(cfg: TrainStepConfig):
    from reflectioncoder.data.config import MaskConfig

    return MaskConfig(strategies=(cfg.strategy,), block_order=cfg.block_order)


def prepare_ours(cfg: TrainStepConfig, per_step) -> list:
    from reflectioncoder.data.config import PackingConfig
    from reflectioncoder.data.packing import pack_rank, plan_step

    step, total = _rate_step(cfg.mask_rate)
    packing = PackingConfig(max_tokens=cfg.max_tokens, normalisation="sample")
    mask = _mask_cfg(cfg)
    return [
        [
            b.to(cfg.device)
            for b in pack_rank(
                plan_step(samples, step, total, mask, packing, cfg.seed), 0, mask, packing
            )
        ]
        for samples in per_step
    ]


def step_ours(model, opt, batches, cfg: TrainStepConfig) -> tuple[torch.Tensor, int]:
    """One optimizer step; returns (the step's loss, detached on the device; model tokens)."""
    from reflectioncoder.loss import reflection_loss
    from reflectioncoder.model import forward_hidden, lm_head_weight

    opt.zero_grad(set_to_none=True)
    total = torch.zeros((), device=cfg.device)
    for batch in batches:
        hidden = forward_hidden(model, batch)
        loss, _ = reflection_loss(hidden, batch, lm_head_weight(model), backend=cfg.loss_backend)
        loss.backward()
        total += loss.detach()
    opt.step()
    synchronize(cfg.device)
    return total, sum(b.num_tokens for b in batches)


def prepare_reference(cfg: TrainStepConfig, per_step) -> list:
    """Each sample's doubled row pair: ids (2, L), positions (2, L), and the reference's
    padding-style key mask (2, L) (teacher: all ones; student: its visibility), from which
    transformers builds the causal masked attention inside the forward, as the reference does."""
    from reflectioncoder.data.masking import draw_masks, visibility_host

    step, total = _rate_step(cfg.mask_rate)
    out = []
    for samples in per_step:
        plan = draw_masks(samples, step, total, _mask_cfg(cfg), cfg.seed)
        vis = visibility_host(plan)
        items = []
        for k, s in enumerate(samples):
            length = len(s)
            v = vis[int(plan.offsets[k]) : int(plan.offsets[k + 1])]
            keys = torch.stack([torch.ones(length, dtype=torch.long), v.long()])
            row = (
                s.ids.expand(2, length).contiguous(),
                torch.arange(length).expand(2, length).contiguous(),
                keys,
                s.labels,
                s.student_labels,
            )
            items.append(tuple(t.to(cfg.device) for t in row))
        out.append(items)
    return out


def step_reference(model, opt, items, cfg: TrainStepConfig) -> tuple[torch.Tensor, int]:
    opt.zero_grad(set_to_none=True)
    n = len(items)
    total = torch.zeros((), device=cfg.device)
    tokens = 0
    for ids, pos, mask, labels, student_labels in items:
        logits = model(input_ids=ids, position_ids=pos, attention_mask=mask).logits  # (2, L, V)
        t, s = logits[0].float(), logits[1].float()
        ce_t = F.cross_entropy(t[:-1], labels[1:], ignore_index=IGNORE, reduction="sum")
        ce_s = F.cross_entropy(s[:-1], student_labels[1:], ignore_index=IGNORE, reduction="sum")
        n_ce = (labels[1:] != IGNORE).sum() + (student_labels[1:] != IGNORE).sum()
        rows = student_labels != IGNORE
        kl = F.kl_div(
            F.log_softmax(s[rows], dim=-1),
            F.softmax(t[rows].detach(), dim=-1),
            reduction="batchmean",
        )
        loss = ((ce_t + ce_s) / n_ce + kl) / n
        loss.backward()
        total += loss.detach()
        tokens += ids.numel()
    opt.step()
    synchronize(cfg.device)
    return total, tokens


def setup_provider(provider: str, cfg: TrainStepConfig):
    """(model, optimizer, per-step data, step function) of ``provider``; the model prepared as
    that provider runs it."""
    from reflectioncoder.model import prepare_model

    torch.manual_seed(cfg.seed)
    model, opt, per_step = setup_train_step(cfg)
    if provider == "ours":
        prepare_model(model)
        return model, opt, prepare_ours(cfg, per_step), step_ours
    if provider == "reference":
        model.set_attn_implementation(cfg.ref_attn)
        return model, opt, prepare_reference(cfg, per_step), step_reference
    raise ValueError(f"provider: expected one of {PROVIDERS}, got {provider!r}")


def model_flops(params: int, tokens: int) -> float:
    """6 x parameters x tokens (fwd + bwd of the dense layers; attention's L^2 term left out)."""
    return 6.0 * params * tokens
