"""End-to-end train step: ours (packed) against the authors' recipe, same model, data, mask.

- ``ours``: each optimizer step's samples packed into micro-batches (teacher + student, the
  student only its visible tokens with original positions), varlen attention, the fused loss on
  the loss rows only (no full logits), backward, AdamW. On CUDA ``prepare_model`` switches
  Liger's RMSNorm / RoPE / SwiGLU on, as the trainer does.
- ``trainer``: ``reflectioncoder.train.Trainer.train_step`` itself on the same model (saved to
  disk and loaded as a user's is, then given the same weights) and samples: the paper preset's
  gradient checkpointing and per-step teacher/student CE logging pass, the next step's host
  work on its background thread, the one-process engine (fused AdamW, clipping).
- ``reference``: the authors' recipe, as faithfully as this machine runs it (SPEC §3-4): one
  sample per micro-batch; a reflection sample doubled (teacher row + a full-length student row
  with the original positions), a generation sample one row; the student's visibility given as
  a 2-D (padding-style) attention mask through the model's own attention (``ref_attn="auto"``:
  ``flash_attention_2`` on CUDA when flash-attn is installed, as the authors, which then drops
  the hidden keys; else SDPA with that mask, the closest runnable, labelled ``sdpa``); gradient
  checkpointing on (``ref_checkpointing``); in bf16, fp32 master weights and AdamW states as
  ZeRO-1 keeps them (one GPU: nothing to partition); full-vocabulary logits of every row and
  SPEC §2's loss (CE + batchmean KL); gradient accumulation over the step's samples.
Both compute the same loss (``sample`` normalisation). Data preparation (packing, padding) is
done before any timing, for both. Compare samples/s: the recipe computes 2 L tokens a
reflection sample, ours L + the visible student.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.providers.common import synchronize

IGNORE = -100
PROVIDERS = ("ours", "reference")  # the pytest suites' (and the GPU suite's)
# bench_train_step's too: ``trainer`` is ``Trainer.train_step`` itself, as a user runs it.
ALL_PROVIDERS = (*PROVIDERS, "trainer")


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
    generation_fraction: float = 0.5  # generation samples beside reflection ones (assumed mix)
    mask_rate: float = 0.5  # fixed r of SPEC §3
    strategy: str = "block_mask"
    block_order: str = "tce"
    max_tokens: int = 16384  # our micro-batch budget
    # The recipe's attention: auto (flash_attention_2 on CUDA when installed, as the authors;
    # else sdpa with the 2-D mask), or one of sdpa, flash_attention_2, eager.
    ref_attn: str = "auto"
    ref_checkpointing: bool = True  # the authors' gradient checkpointing
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
        if self.ref_attn not in ("auto", "sdpa", "flash_attention_2", "eager"):
            raise ValueError(f"ref_attn: expected auto, sdpa, flash_attention_2 or eager, got "
                             f"{self.ref_attn!r}")  # fmt: skip
        if not 0.0 <= self.generation_fraction <= 1.0:
            raise ValueError(
                f"generation_fraction: must be in [0, 1], got {self.generation_fraction}"
            )

    def arch(self) -> dict[str, int]:
        """``build_tiny_llama``'s sizes, but for the vocabulary and the KV heads."""
        return {
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_layers": self.layers,
            "num_heads": self.heads,
            "max_position_embeddings": 8192,
        }

    def step_samples(self) -> list[list]:
        """Each optimizer step's synthetic samples (``TokenizedSample``s), seeded."""
        from reflectioncoder.testing.synthetic import synthetic_samples

        samples = synthetic_samples(
            self.steps * self.samples,
            self.vocab,
            self.seed,
            instruction=self.instruction,
            reflection=self.reflection,
            answer=self.answer,
            generation_fraction=self.generation_fraction,
        )
        return [samples[i * self.samples : (i + 1) * self.samples] for i in range(self.steps)]


# A Llama-3.2-1B-shaped model (1.24B parameters with its 128256 vocabulary), for the GPU suite.
LLAMA_1B = dict(vocab=128256, hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192)


def _rate_step(rate: float) -> tuple[int, int]:
    """(step, total_steps) whose SPEC §3 rate min((step + 1) / total, 1) is ``rate``."""
    total = 1000
    return max(round(rate * total) - 1, 0), total


def setup_train_step(cfg: TrainStepConfig):
    """The model (seeded, on the device), its AdamW, and each optimizer step's samples."""
    from reflectioncoder.model import build_tiny_llama

    model = build_tiny_llama(cfg.vocab, num_kv_heads=cfg.kv_heads, seed=cfg.seed, **cfg.arch())
    dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    model.to(device=cfg.device, dtype=dtype)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
    return model, opt, cfg.step_samples()


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
    """Each sample's rows as the recipe feeds them: ids (rows, L), positions (rows, L), the
    padding-style key mask (rows, L) (teacher: all ones; student: its visibility) from which
    the model's attention masks the hidden keys, the teacher's labels and, for a reflection
    sample, the student's (rows = 2; a generation sample: one row, no student)."""
    from reflectioncoder.data.masking import draw_masks, visibility_host

    step, total = _rate_step(cfg.mask_rate)
    out = []
    for samples in per_step:
        students = [s for s in samples if s.is_reflection]
        plan = draw_masks(students, step, total, _mask_cfg(cfg), cfg.seed)
        vis = visibility_host(plan)
        items, k = [], 0
        for s in samples:
            length = len(s)
            keys = [torch.ones(length, dtype=torch.long)]
            if s.is_reflection:
                keys.append(vis[int(plan.offsets[k]) : int(plan.offsets[k + 1])].long())
                k += 1
            rows = len(keys)
            row = (
                s.ids.expand(rows, length).contiguous(),
                torch.arange(length).expand(rows, length).contiguous(),
                torch.stack(keys),
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
        logits = model(input_ids=ids, position_ids=pos, attention_mask=mask).logits  # (rows, L, V)
        t = logits[0].float()
        ce = F.cross_entropy(t[:-1], labels[1:], ignore_index=IGNORE, reduction="sum")
        n_ce = (labels[1:] != IGNORE).sum()
        kl = torch.zeros((), device=t.device)
        if ids.shape[0] == 2:  # a reflection sample: the student's CE and the KL
            s = logits[1].float()
            ce = ce + F.cross_entropy(
                s[:-1], student_labels[1:], ignore_index=IGNORE, reduction="sum"
            )
            n_ce = n_ce + (student_labels[1:] != IGNORE).sum()
            rows = student_labels != IGNORE
            kl = F.kl_div(
                F.log_softmax(s[rows], dim=-1),
                F.softmax(t[rows].detach(), dim=-1),
                reduction="batchmean",
            )
        loss = (ce / n_ce + kl) / n
        loss.backward()
        total += loss.detach()
        tokens += ids.numel()
    opt.step()
    synchronize(cfg.device)
    return total, tokens


class Fp32MasterAdamW:
    """AdamW over fp32 master copies of bf16 weights, as DeepSpeed's ZeRO-1 bf16 optimizer
    keeps them (one GPU: nothing to partition): grads cast up, the step in fp32, weights cast
    back down."""

    def __init__(self, params, **kwargs) -> None:
        self.params = list(params)
        self.masters = [p.detach().float().clone() for p in self.params]
        self.optimizer = torch.optim.AdamW(self.masters, **kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p, m in zip(self.params, self.masters, strict=True):
            m.grad = None if p.grad is None else p.grad.float()
        self.optimizer.step()
        for p, m in zip(self.params, self.masters, strict=True):
            p.copy_(m)


def reference_attention(cfg: TrainStepConfig) -> str:
    """The recipe's attention here: ``ref_attn``, with auto resolved (module docstring)."""
    if cfg.ref_attn != "auto":
        return cfg.ref_attn
    from transformers.utils import is_flash_attn_2_available

    on_cuda = torch.device(cfg.device).type == "cuda"
    return "flash_attention_2" if on_cuda and is_flash_attn_2_available() else "sdpa"


@functools.cache
def _saved_model(cfg: TrainStepConfig):
    """A folder with the model of ``cfg``'s sizes saved as a user's is, and toy data to start a
    trainer with (kept for the process: every trainer of these sizes reuses them)."""
    from bench.bench_checkpointing import prepare_model_and_data

    folder = tempfile.TemporaryDirectory(prefix="rc-bench-trainer-")
    data = prepare_model_and_data(Path(folder.name), 8, cfg.arch(), cfg.kv_heads, vocab=cfg.vocab)
    return folder, data


def setup_trainer(cfg: TrainStepConfig, per_step, extra: tuple[str, ...] = ()):
    """A ``Trainer`` on a saved model of ``cfg``'s sizes holding the seeded model's weights,
    planned to run ``per_step``'s samples at the fixed mask rate (its plan replaced: the toy
    data it was pointed at only gets it started). ``extra``: config overrides (a lever)."""
    from reflectioncoder.config_loader import load_config
    from reflectioncoder.train.trainer import Trainer

    folder, data = _saved_model(cfg)
    run = tempfile.mkdtemp(prefix="rc-bench-run-", dir=folder.name)
    overrides = [
        f"model.name_or_path={Path(folder.name) / 'model'}",
        "model.gradient_checkpointing=true",
        f"model.dtype={cfg.dtype}",
        f"data.files=[{data}]",
        f"checkpoint.out_dir={run}",
        "checkpoint.save_every=0",
        "checkpoint.save_final=false",
        f"train.device={cfg.device}",
        f"train.threads={torch.get_num_threads()}",
        f"train.seed={cfg.seed}",
        f"packing.max_tokens={cfg.max_tokens}",
        "packing.normalisation=sample",
        f"mask.strategies=[{cfg.strategy}]",
        f"mask.block_order={cfg.block_order}",
        "optim.lr=5e-5",
        "logging.progress=false",
        "logging.tensorboard=false",
        "logging.plot=false",
        *extra,
    ]
    trainer = Trainer(load_config(base="tiny", overrides=overrides))
    model, _, _ = setup_train_step(cfg)
    with torch.no_grad():
        for mine, seeded in zip(trainer.model.parameters(), model.parameters(), strict=True):
            mine.copy_(seeded)
    step, total = _rate_step(cfg.mask_rate)
    trainer.samples = [s for samples in per_step for s in samples]
    n = cfg.samples
    steps = [list(range(k * n, (k + 1) * n)) for k in range(len(per_step))]
    trainer.plan = [steps[0]] * step + steps + [steps[-1]] * (total - step - len(steps))
    trainer.total_steps, trainer.step = total, step
    return trainer


def step_trainer(_model, trainer, _data, cfg: TrainStepConfig) -> tuple[torch.Tensor, int]:
    row = trainer.train_step()  # its one sync already read the step's figures
    return torch.tensor(row["loss"]), row["tokens"]


def setup_provider(provider: str, cfg: TrainStepConfig):
    """(model, optimizer, per-step data, step function) of ``provider``; the model prepared as
    that provider runs it."""
    from reflectioncoder.model import prepare_model

    torch.manual_seed(cfg.seed)
    model, opt, per_step = setup_train_step(cfg)
    if provider == "trainer":
        trainer = setup_trainer(cfg, per_step)
        return trainer.model, trainer, list(range(len(per_step))), step_trainer
    if provider == "ours":
        prepare_model(model)
        return model, opt, prepare_ours(cfg, per_step), step_ours
    if provider == "reference":
        from reflectioncoder.activation_checkpointing import set_checkpointing

        model.set_attn_implementation(reference_attention(cfg))
        set_checkpointing(model, cfg.ref_checkpointing)
        if cfg.dtype == "bf16":
            opt = Fp32MasterAdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
        return model, opt, prepare_reference(cfg, per_step), step_reference
    raise ValueError(f"provider: expected one of {ALL_PROVIDERS}, got {provider!r}")


def step_flops(provider: str, model, data, cfg: TrainStepConfig):
    """Model and hardware FLOPs of one optimizer step's ``data`` (reflectioncoder.train.flops):
    ours counts its packed tokens and loss rows; the recipe every row it runs (2 L for a
    reflection sample, the LM head on all of them), with its checkpointing's recompute."""
    from reflectioncoder.train.flops import ModelShape, StepFlops, batch_flops, packed_flops

    shape = ModelShape.from_model(model)
    if provider == "ours":
        return sum((batch_flops(shape, b, recompute=False) for b in data), StepFlops())
    total = StepFlops()
    for ids, *_ in data:
        rows, length = ids.shape
        total += packed_flops(shape, [length] * rows, rows * length, cfg.ref_checkpointing)
    return total
