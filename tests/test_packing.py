"""Packing (docs/ARCHITECTURE.md's PackedBatch) against SPEC §2's per-sample step loss."""

from __future__ import annotations

import pytest
import torch
from reference.mask import rate_ref, visible_drawn
from reference.packing import ToyCausalModel, packed_loss, sample_terms, step_loss_ref

from reflectioncoder.data.balance import balance_groups
from reflectioncoder.data.config import STRATEGIES, MaskConfig, PackingConfig
from reflectioncoder.data.masking import sample_rng
from reflectioncoder.data.packing import PackedBatch, pack_rank, plan_step
from reflectioncoder.data.tokenize import IGNORE
from reflectioncoder.testing.synthetic import default_special_ids, synthetic_samples

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


def one_micro_batch(samples, step, total, cfg, seed, normalisation="sample") -> PackedBatch:
    """``samples`` as one step packed into one micro-batch (a budget they all fit), in order."""
    pack = PackingConfig(max_tokens=2 * sum(len(s) for s in samples), normalisation=normalisation)
    (batch,) = pack_rank(plan_step(samples, step, total, cfg, pack, seed), 0, cfg, pack)
    return batch


def _step_batches(samples, step, total, cfg, pack, seed, world_size=1):
    """Every rank's micro-batches of one step, rank after rank."""
    plan = plan_step(samples, step, total, cfg, pack, seed, world_size)
    return [b for rank in range(world_size) for b in pack_rank(plan, rank, cfg, pack)]


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
        batches = _step_batches(samples, step, total, cfg, PackingConfig(90, normalisation), seed)
        assert len(batches) > 1  # the budget splits the step
        got = sum(packed_loss(model, b) for b in batches)
        want = _reference_loss(model, samples, step, total, cfg, seed, normalisation)
        torch.testing.assert_close(got, want, rtol=2e-6, atol=0)


@pytest.mark.parametrize("normalisation", ["sample", "token"])
@pytest.mark.parametrize("world_size", [2, 3, 16])
def test_data_parallel_plan(normalisation, world_size, seed):
    """Ranks' micro-batches (the global denominators in their weights) sum to the
    single-process step loss; every rank runs the same number of micro-batches; every sample
    is in exactly one of them; zero-weight slots only when there are too few samples."""
    samples = _samples(seed, 10)
    cfg = MaskConfig(strategies=("random_block_mask", "all_mask"))
    pack = PackingConfig(120, normalisation)
    model = ToyCausalModel(VOCAB, 8, 256, seed)
    single = sum(packed_loss(model, b) for b in _step_batches(samples, 3, 8, cfg, pack, seed))
    plan = plan_step(samples, 3, 8, cfg, pack, seed, world_size)
    assert plan.denominators == plan_step(samples, 3, 8, cfg, pack, seed).denominators
    ranks = [pack_rank(plan, r, cfg, pack) for r in range(world_size)]
    assert {len(r) for r in ranks} == {plan.micro_batches}
    slots = zip(sum(plan.groups, []), sum(plan.padding, []), strict=True)
    real = [i for g, pad in slots if not pad for i in g]
    assert sorted(real) == list(range(len(samples)))
    assert any(sum(plan.padding, [])) == (len(samples) < world_size * plan.micro_batches)
    for rank, pads in zip(ranks, plan.padding, strict=True):
        for b, pad in zip(rank, pads, strict=True):
            assert pad == (b.num_samples == 0) and (not pad or not b.ce_weight.any())
    split = sum(packed_loss(model, b) for r in ranks for b in r)
    torch.testing.assert_close(split, single, rtol=2e-6, atol=0)


def test_balance_groups_by_tokens(seed):
    """Within the budget, as few micro-batches per rank as fit, nearly equal tokens."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(200, 7000, (512,), generator=g).tolist()
    for world in (8, 64):
        groups, padding = balance_groups(tokens, world, 16384)
        m = len(groups[0])
        loads = [sum(tokens[i] for i in b) for r in groups for b in r]
        assert all(len(r) == m for r in groups) and not any(sum(padding, []))
        assert max(loads) <= 16384
        assert m <= -(-sum(tokens) // (world * 16384)) + 1
        assert min(loads) >= 0.85 * max(loads), (world, min(loads), max(loads))
    oversize = [20000, 100, 100]
    groups, padding = balance_groups(oversize, 2, 1000)
    assert [0] in [b for r in groups for b in r]  # alone in its micro-batch


def test_packed_batch_layout(seed):
    samples = _samples(seed, 12)
    cfg = MaskConfig(strategies=STRATEGIES)
    pack = PackingConfig(max_tokens=100)
    plan = plan_step(samples, 4, 10, cfg, pack, seed)
    groups = plan.groups[0]
    assert sorted(i for g in groups for i in g) == list(range(len(samples)))
    batches = pack_rank(plan, 0, cfg, pack)
    for g, b in zip(groups, batches, strict=True):
        assert b.num_tokens == sum(plan.tokens[i] for i in g)
        assert b.num_tokens <= pack.max_tokens or len(g) == 1
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


def test_counts(seed):
    samples = [s for s in _samples(seed, 10) if s.is_reflection]
    cfg = MaskConfig(strategies=("all_mask",))
    b = one_micro_batch(samples, 9, 10, cfg, seed)
    assert b.sources == [s.source for s in samples]  # one micro-batch, in order
    padded = max(len(s) for s in samples)
    assert b.reference_tokens == 2 * len(samples) * padded
    hidden = sum(s.body_end + 1 for s in samples)  # [0, end] hidden under all_mask
    assert b.num_tokens == 2 * sum(len(s) for s in samples) - hidden
    assert b.num_kl_rows == sum(len(s) - 1 - s.answer_start for s in samples)


def test_bad_arguments():
    with pytest.raises(ValueError, match="samples: a step needs at least one sample"):
        plan_step([], 0, 1, MaskConfig(), PackingConfig(), 0)
    with pytest.raises(ValueError, match="max_tokens: must be an int >= 1"):
        PackingConfig(max_tokens=0)
    with pytest.raises(ValueError, match="normalisation: must be one of"):
        PackingConfig(normalisation="batch")
