"""Packing (docs/ARCHITECTURE.md's PackedBatch) against SPEC §2's per-sample step loss."""

from __future__ import annotations

import pytest
import torch
from reference.mask import rate_ref, visible_drawn
from reference.packing import ToyCausalModel, packed_loss, sample_terms, step_loss_ref

from reflectioncoder.data.config import STRATEGIES, MaskConfig, PackingConfig
from reflectioncoder.data.masking import sample_rng
from reflectioncoder.data.packing import (
    build_packed_batch,
    make_step_batches,
    plan_micro_batches,
    step_counts,
    step_stats,
)
from reflectioncoder.data.synthetic import default_special_ids, synthetic_samples
from reflectioncoder.data.tokenize import IGNORE

VOCAB = 53
SP = default_special_ids(VOCAB)


def _samples(seed: int, n: int = 9):
    out = synthetic_samples(
        n,
        VOCAB,
        seed,
        instruction=(0, 6),
        reflection=(0, 30),
        answer=(0, 6),
        block_len=(0, 5),
        generation_fraction=0.3,
    )
    for i, s in enumerate(out):
        s.uid = 100 + i
    return out


def _reference_loss(model, samples, step, total, cfg: MaskConfig, seed, normalisation):
    rate = rate_ref(step, total)
    terms = []
    for s in samples:
        visible = None
        if s.is_reflection and cfg.distill:
            rng = sample_rng(seed, step, s.uid)
            visible = visible_drawn(s.ids.tolist(), SP, cfg.strategies, cfg.block_order, rate, rng)
        terms.append(
            sample_terms(model, s.ids, s.labels, s.student_labels, visible, cfg.distill, cfg.kl)
        )
    return step_loss_ref(terms, normalisation)


@pytest.mark.parametrize("normalisation", ["sample", "token"])
@pytest.mark.parametrize(
    "cfg",
    [
        MaskConfig(strategies=STRATEGIES, block_order="etc"),
        MaskConfig(strategies=("block_mask",)),
        MaskConfig(strategies=()),
        MaskConfig(distill=False),
        MaskConfig(strategies=("random_token_mask",), kl=False),
    ],
    ids=["all", "block_mask", "none", "no-distill", "no-kl"],
)
def test_step_loss_matches_spec(cfg, normalisation, seed):
    samples = _samples(seed)
    model = ToyCausalModel(VOCAB, 8, 256, seed)
    for step, total in [(0, 0), (2, 7), (9, 10)]:
        batches = make_step_batches(
            samples, step, total, cfg, PackingConfig(90, normalisation), seed
        )
        assert len(batches) > 1  # the budget splits the step
        got = sum(packed_loss(model, b) for b in batches)
        want = _reference_loss(model, samples, step, total, cfg, seed, normalisation)
        torch.testing.assert_close(got, want, rtol=2e-6, atol=0)


@pytest.mark.parametrize("normalisation", ["sample", "token"])
def test_data_parallel_denominators(normalisation, seed):
    """Two ranks with the global counts give the single-process step loss, summed."""
    samples = _samples(seed, 10)
    cfg = MaskConfig(strategies=("random_block_mask", "all_mask"))
    pack = PackingConfig(120, normalisation)
    model = ToyCausalModel(VOCAB, 8, 256, seed)
    single = sum(packed_loss(model, b) for b in make_step_batches(samples, 3, 8, cfg, pack, seed))
    ranks = [samples[0::2], samples[1::2]]
    glob = step_counts(ranks[0], cfg) + step_counts(ranks[1], cfg)
    assert glob == step_counts(samples, cfg)
    split = sum(
        packed_loss(model, b)
        for r in ranks
        for b in make_step_batches(r, 3, 8, cfg, pack, seed, denominators=glob)
    )
    torch.testing.assert_close(split, single, rtol=2e-6, atol=0)


def test_packed_batch_layout(seed):
    samples = _samples(seed, 12)
    cfg = MaskConfig(strategies=STRATEGIES)
    pack = PackingConfig(max_tokens=100)
    groups = plan_micro_batches(samples, pack, cfg)
    assert sorted(i for g in groups for i in g) == list(range(len(samples)))
    for g in groups:
        cost = sum(len(samples[i]) * (2 if samples[i].is_reflection else 1) for i in g)
        assert cost <= pack.max_tokens or len(g) == 1
    batches = make_step_batches(samples, 4, 10, cfg, pack, seed, groups=groups)
    for g, b in zip(groups, batches, strict=True):
        assert b.cu_seqlens.dtype == torch.int32
        assert b.cu_seqlens[-1] == b.input_ids.numel() == b.num_tokens
        assert torch.equal(b.cu_seqlens.diff().long(), torch.tensor(b.seq_lens))
        assert b.max_seqlen == max(b.seq_lens)
        # Teacher then student of each sample: the teacher has positions 0..L-1, the student a
        # strictly increasing subset of them ending with L-1 (the EOS is always visible).
        k = 0
        for i in g:
            s = samples[i]
            lo, hi = b.cu_seqlens[k : k + 2].tolist()
            assert torch.equal(b.position_ids[lo:hi], torch.arange(len(s)))
            assert torch.equal(b.input_ids[lo:hi], s.ids)
            k += 1
            if s.is_reflection:
                lo, hi = b.cu_seqlens[k : k + 2].tolist()
                pos = b.position_ids[lo:hi]
                assert (pos.diff() > 0).all() and pos[-1] == len(s) - 1
                assert torch.equal(b.input_ids[lo:hi], s.ids[pos])
                k += 1
        assert k == len(b.seq_lens)
        # Only rows with a CE target or in a KL pair are loss rows.
        in_pair = torch.zeros(b.loss_rows.numel(), dtype=torch.bool)
        in_pair[b.kl_pairs.flatten()] = True
        assert ((b.targets != IGNORE) | in_pair).all()
        assert (b.ce_weight[b.targets == IGNORE] == 0).all()
        assert (b.loss_rows.diff() > 0).all()
        # KL pairs: same token, teacher row before student row.
        t_rows, s_rows = b.loss_rows[b.kl_pairs[:, 0]], b.loss_rows[b.kl_pairs[:, 1]]
        assert torch.equal(b.input_ids[t_rows], b.input_ids[s_rows])
        assert torch.equal(b.position_ids[t_rows], b.position_ids[s_rows])
        moved = b.to("cpu")
        assert torch.equal(moved.loss_rows, b.loss_rows) and moved.seq_lens == b.seq_lens


def test_triton_backend_equals_host(seed):
    samples = _samples(seed, 8)
    cfg = MaskConfig(strategies=STRATEGIES)
    host = build_packed_batch(samples, 5, 9, cfg, seed, "token")
    dev = build_packed_batch(samples, 5, 9, cfg, seed, "token", backend="triton", device="cpu")
    for name in ("input_ids", "position_ids", "cu_seqlens", "loss_rows", "targets", "kl_pairs"):
        assert torch.equal(getattr(host, name), getattr(dev, name)), name
    assert torch.equal(host.ce_weight, dev.ce_weight) and host.seq_lens == dev.seq_lens


def test_compute_saved_and_counts(seed):
    samples = [s for s in _samples(seed, 10) if s.is_reflection]
    cfg = MaskConfig(strategies=("all_mask",))
    b = build_packed_batch(samples, 9, 10, cfg, seed)
    padded = max(len(s) for s in samples)
    assert b.reference_tokens == 2 * len(samples) * padded
    hidden = sum(s.body_end + 1 for s in samples)  # [0, end] hidden under all_mask
    assert b.num_tokens == 2 * sum(len(s) for s in samples) - hidden
    assert b.num_kl_rows == sum(len(s) - 1 - s.answer_start for s in samples)
    stats = step_stats([b, b], max_tokens=b.num_tokens)
    assert stats["compute_saved"] == pytest.approx(1 - b.num_tokens / b.reference_tokens)
    assert stats["budget_fill"] == 1.0 and stats["micro_batches"] == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="samples: a micro-batch needs at least one sample"):
        build_packed_batch([], 0, 1, MaskConfig(), 0)
    with pytest.raises(ValueError, match="max_tokens: must be an int >= 1"):
        PackingConfig(max_tokens=0)
    with pytest.raises(ValueError, match="normalisation: must be one of"):
        PackingConfig(normalisation="batch")
    s = _samples(0, 2)
    with pytest.raises(ValueError, match="backend: must be host or triton"):
        build_packed_batch(s, 0, 1, MaskConfig(), 0, backend="cuda")


def test_plan_at_step_fills_budget(seed):
    """Planning with the students' exact lengths at the step: budget held exactly, fewer
    micro-batches once the mask hides much, and the same step loss."""
    samples = synthetic_samples(
        24, VOCAB, seed, instruction=(2, 10), reflection=(10, 60), answer=(2, 10)
    )
    cfg = MaskConfig(strategies=("all_mask",))
    full = PackingConfig(max_tokens=300)
    at_step = PackingConfig(max_tokens=300, plan_at_step=True)
    a = make_step_batches(samples, 9, 10, cfg, full, seed)
    b = make_step_batches(samples, 9, 10, cfg, at_step, seed)
    assert all(x.num_tokens <= 300 or x.num_samples == 1 for x in b)
    assert len(b) < len(a)
    model = ToyCausalModel(VOCAB, 8, 256, seed)
    torch.testing.assert_close(
        sum(packed_loss(model, x) for x in b),
        sum(packed_loss(model, x) for x in a),
        rtol=2e-6,
        atol=0,
    )
    with pytest.raises(ValueError, match="total_steps, seed: needed with step"):
        plan_micro_batches(samples, full, cfg, step=3)
