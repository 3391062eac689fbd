"""The trainer: schedule, step plan, the step's loss against the float64 SPEC reference,
non-finite skips, and a short run's outputs (metrics, plot, TensorBoard, Hugging Face model)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from reference.recipe import REFERENCE_ATTN, reference_logits, sample_loss_terms

from reflectioncoder.activation_checkpointing import checkpointing_on
from reflectioncoder.config import OptimConfig, TrainConfig
from reflectioncoder.config_loader import load_config
from reflectioncoder.data.masking import draw_masks, visibility_host
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.schedule import lr_at, plan_steps
from reflectioncoder.train.skipped_steps import NonFiniteError
from reflectioncoder.train.trainer import Trainer

TINY_ARCH = [
    "model.arch={hidden_size: 32, intermediate_size: 48, num_layers: 2, num_heads: 4, "
    "num_kv_heads: 2, max_position_embeddings: 512}",
    "model.tokenizer_vocab_size=400",
]


def tiny_config(tmp_path, seed: int, n: int = 16, extra: tuple[str, ...] = ()):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", n, seed=seed)
    return load_config(
        base="tiny",
        overrides=[
            *TINY_ARCH,
            f"data.files=[{data}]",
            f"checkpoint.out_dir={tmp_path / 'run'}",
            "checkpoint.save_every=0",
            f"train.seed={seed}",
            "train.epochs=1",
            "train.samples_per_step=4",
            "optim.warmup_ratio=0",
            "logging.progress=false",
            "logging.tensorboard=false",
            "logging.plot=false",
            "packing.max_tokens=600",
            *extra,
        ],
    )


# -- schedule and plan ------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_schedule_matches_hugging_face(schedule, seed):
    """Our schedule is a pure function of the step; it must equal HF's (the reference's)."""
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    g = torch.Generator().manual_seed(seed)
    total = int(torch.randint(1, 300, (1,), generator=g))
    ratio = float(torch.rand((), generator=g)) * 0.3
    cfg = OptimConfig(lr=3e-4, schedule=schedule, warmup_ratio=ratio)
    warmup = math.ceil(ratio * total)  # HF Trainer's get_warmup_steps
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    make = {
        "cosine": lambda: get_cosine_schedule_with_warmup(opt, warmup, total),
        "linear": lambda: get_linear_schedule_with_warmup(opt, warmup, total),
        "constant": lambda: get_constant_schedule_with_warmup(opt, warmup),
    }[schedule]
    sched = make()
    for step in range(total):
        assert lr_at(step, total, cfg) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()


def test_min_lr_ratio_floor():
    cfg = OptimConfig(lr=1.0, schedule="cosine", warmup_ratio=0.0, min_lr_ratio=0.1)
    assert lr_at(0, 10, cfg) == pytest.approx(1.0)
    assert lr_at(10, 10, cfg) == pytest.approx(0.1)


def test_plan_covers_each_epoch_once(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(5, 40, (1,), generator=g))
    lengths = torch.randint(10, 200, (n,), generator=g).tolist()
    k = int(torch.randint(1, 7, (1,), generator=g))
    steps = plan_steps(lengths, TrainConfig(epochs=2, samples_per_step=k, seed=seed))
    flat = [i for s in steps for i in s]
    assert len(flat) == 2 * n
    assert sorted(flat[:n]) == list(range(n)) and sorted(flat[n:]) == list(range(n))
    assert all(len(s) == k for s in steps[:-1]) and 1 <= len(steps[-1]) <= k
    assert steps == plan_steps(lengths, TrainConfig(epochs=2, samples_per_step=k, seed=seed))
    if n > 8:
        other = plan_steps(lengths, TrainConfig(epochs=2, samples_per_step=k, seed=seed + 1))
        assert other != steps
    # Token budget: consecutive samples up to the budget (a longer sample alone).
    budget = int(torch.randint(150, 600, (1,), generator=g))
    cfg = TrainConfig(epochs=1.5, samples_per_step=None, tokens_per_step=budget, seed=seed)
    by_tokens = plan_steps(lengths, cfg)
    assert len([i for s in by_tokens for i in s]) == int(1.5 * n)
    for s in by_tokens:
        assert len(s) == 1 or sum(lengths[i] for i in s) <= budget
    capped = plan_steps(lengths, TrainConfig(epochs=2, samples_per_step=k, max_steps=2))
    assert len(capped) == min(2, len(steps))
    with pytest.raises(ValueError, match="data.files"):
        plan_steps([], TrainConfig())


# -- the step's loss against SPEC ---------------------------------------------------------------


def step_samples(trainer: Trainer, step: int) -> tuple[list, list]:
    """The samples of optimizer ``step`` and each one's student visibility (None: no student),
    the masks drawn as the trainer draws them: (seed, step, uid)."""
    cfg = trainer.cfg
    samples = [trainer.samples[i] for i in trainer.plan[step]]
    students = [s for s in samples if s.is_reflection and cfg.mask.distill]
    plan = draw_masks(students, step, trainer.total_steps, cfg.mask, cfg.train.seed)
    vis_all = visibility_host(plan)
    visible, k = [], 0
    for s in samples:
        if s.is_reflection and cfg.mask.distill:
            lo, hi = int(plan.offsets[k]), int(plan.offsets[k + 1])
            visible.append(vis_all[lo:hi])
            k += 1
        else:
            visible.append(None)
    return samples, visible


def _reference_step(trainer: Trainer, model64: torch.nn.Module, step: int) -> dict[str, float]:
    """SPEC §2 loss of optimizer step ``step`` in float64, from the reference recipe (padded,
    doubled batch, masked eager attention, full logits); masks from the same (seed, step) draws."""
    cfg = trainer.cfg
    samples, visible = step_samples(trainer, step)
    with torch.no_grad():
        teacher, student = reference_logits(model64, [s.ids for s in samples], visible)
    terms, teacher_terms = [], []
    for s, t, st in zip(samples, teacher, student, strict=True):
        terms.append(sample_loss_terms(t, st, s.labels, s.student_labels, cfg.mask.kl))
        teacher_terms.append(sample_loss_terms(t, None, s.labels, s.student_labels, False))
    if cfg.packing.normalisation == "sample":
        ce = sum(c / n for c, n, _, _ in terms) / len(terms)
        kl = sum(x / m if m else 0.0 * x for _, _, x, m in terms) / len(terms)
        pairs = zip(teacher_terms, terms, strict=True)
        tce = sum(tc / n for (tc, _, _, _), (_, n, _, _) in pairs) / len(terms)
    else:
        n_ce = sum(n for _, n, _, _ in terms)
        n_kl = max(sum(m for _, _, _, m in terms), 1)
        ce = sum(c for c, _, _, _ in terms) / n_ce
        kl = sum(x for _, _, x, _ in terms) / n_kl
        tce = sum(tc for tc, _, _, _ in teacher_terms) / n_ce
    return {"loss": float(ce + kl), "ce": float(ce), "kl": float(kl), "teacher_ce": float(tce)}


def _float64_reference_model(model: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(model).double()
    ref.set_attn_implementation(REFERENCE_ATTN)
    return ref


@pytest.mark.parametrize("normalisation, checkpointing", [("sample", False), ("token", True)])
def test_step_losses_match_float64_reference(tmp_path, seed, normalisation, checkpointing):
    """Two optimizer steps: each logged loss, CE (teacher and student) and KL equal SPEC §2's
    float64 value on the weights before that step (so the update between them is real too),
    with or without gradient checkpointing."""
    cfg = tiny_config(
        tmp_path,
        seed,
        extra=(
            f"packing.normalisation={normalisation}",
            "packing.max_tokens=300",
            f"model.gradient_checkpointing={str(checkpointing).lower()}",
        ),
    )
    trainer = Trainer(cfg)
    assert checkpointing_on(trainer.model) == checkpointing
    try:
        assert trainer.total_steps == 4
        for step in range(2):
            want = _reference_step(trainer, _float64_reference_model(trainer.model), step)
            before = [p.detach().clone() for p in trainer.model.parameters()]
            row = trainer.train_step()
            assert row["step"] == step + 1 and not row["skipped"]
            for key in ("loss", "ce", "kl", "teacher_ce"):
                # KL is a small difference of fp32 log-probabilities of size ~1-10: its error is
                # absolute, ~1e-7 each (at TEST_SEED=467694875 KL 1.95e-4 was 1.05e-7 off)
                tol = 1e-6 if key == "kl" else 1e-7
                assert row[key] == pytest.approx(want[key], rel=2e-4, abs=tol), key
            assert row["student_ce"] == pytest.approx(row["ce"] - row["teacher_ce"])
            assert row["mask_rate"] == pytest.approx(min((step + 1) / 4, 1.0))
            assert row["lr"] == pytest.approx(lr_at(step, 4, cfg.optim))
            assert row["samples"] == len(trainer.plan[step])
            assert math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0
            after = trainer.model.parameters()
            changed = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
            assert all(changed)
    finally:
        trainer.close()


# -- non-finite updates -------------------------------------------------------------------------


def test_nonfinite_loss_skips_the_update(tmp_path, seed, caplog):
    cfg = tiny_config(tmp_path, seed, extra=("train.max_skipped_steps=2",))
    trainer = Trainer(cfg)
    real = trainer.step_batches
    poisoned = {1, 2, 3}

    def poison(step):
        batches = real(step)
        if step in poisoned:
            b = batches[-1]
            b.ce_weight = b.ce_weight.clone()
            b.ce_weight[0] = float("nan")
        return batches

    trainer.step_batches = poison
    try:
        first = trainer.train_step()
        assert not first["skipped"] and math.isfinite(first["loss"])
        before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        opt_before = copy.deepcopy(trainer.engine.optimizer.state_dict())
        with caplog.at_level("WARNING", logger="reflectioncoder.train"):
            row = trainer.train_step()
        assert row["skipped"] and trainer.skips.total == 1 and row["skipped_total"] == 1
        assert not math.isfinite(row["loss"])
        assert "update skipped" in caplog.text and "1 skipped so far" in caplog.text
        for k, v in trainer.model.state_dict().items():
            assert torch.equal(v, before[k]), k  # weights untouched
        after = trainer.engine.optimizer.state_dict()["state"]
        for k, st in opt_before["state"].items():
            assert torch.equal(after[k]["exp_avg"], st["exp_avg"])  # moments untouched
        assert all(p.grad is None for p in trainer.model.parameters())  # nothing carried over
        # A second poisoned step in a row reaches max_skipped_steps=2: the run stops.
        with pytest.raises(NonFiniteError, match="2 optimizer steps in a row"):
            trainer.train_step()
    finally:
        trainer.close()
    # The metrics file records the skipped steps.
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["skipped"] for r in rows] == [False, True, True]


# -- a short run's outputs ------------------------------------------------------------------


def test_short_run_writes_metrics_plot_tensorboard_and_hf_model(tmp_path, seed):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reflectioncoder.data.tokenize import SPECIAL_TOKENS

    cfg = tiny_config(
        tmp_path,
        seed,
        n=12,
        extra=(
            "train.epochs=2",
            "logging.tensorboard=true",
            "logging.plot=true",
            "logging.progress=true",
            "optim.lr=3e-3",
        ),
    )
    trainer = Trainer(cfg)
    summary = trainer.train()
    trainer.close()
    out = tmp_path / "run"
    assert summary["steps"] == summary["total_steps"] == 6 and summary["skipped"] == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    keys = {"loss", "ce", "teacher_ce", "student_ce", "kl", "mask_rate", "lr", "grad_norm"}
    assert keys | {"tokens_per_s", "tokens", "samples"} <= set(rows[0])
    assert rows[-1]["loss"] < rows[0]["loss"]  # it learns
    assert (out / "loss.png").stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # The final model is a plain Hugging Face folder with our tokens.
    model, info = AutoModelForCausalLM.from_pretrained(str(out / "final"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tok = AutoTokenizer.from_pretrained(str(out / "final"))
    assert all(tok.convert_tokens_to_ids(s) != tok.unk_token_id for s in SPECIAL_TOKENS)
    ours = trainer.model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ours[k]), k
