"""The dynamic mask (SPEC §3): host path (what training runs) and the Triton kernel kept in
bench/ against the plain reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference.mask import rate_ref, student_ref, visible_drawn

from bench.mask_kernel import apply_reflection_mask
from reflectioncoder.data.config import STRATEGIES, MaskConfig
from reflectioncoder.data.masking import (
    apply_masks_host,
    draw_masks,
    hide_count,
    mask_rate,
    sample_rng,
)
from reflectioncoder.testing.synthetic import default_special_ids, synthetic_samples

VOCAB = 61
SP = default_special_ids(VOCAB)
# (step, total_steps) giving the rates the SPEC's thresholds sit around: 0, 0.2, 0.33, 0.5,
# 0.67, 1 (and past the end).
STEPS = [(0, 0), (1, 10), (32, 100), (0, 2), (66, 100), (9, 10), (12, 10)]


def _samples(seed: int, n: int = 10):
    """Small, awkward samples: empty bodies, one-block bodies, empty and one-token blocks."""
    out = synthetic_samples(
        n, VOCAB, seed, instruction=(0, 4), reflection=(0, 40), answer=(0, 5), block_len=(0, 6)
    )
    # Bodies of one block with one content token, and empty bodies (no block at all).
    out += synthetic_samples(
        3, VOCAB, seed + 1, instruction=(1, 2), reflection=(1, 3), answer=(1, 2), block_len=(1, 1)
    )
    out += synthetic_samples(
        2, VOCAB, seed + 2, instruction=(0, 2), reflection=(0, 0), answer=(0, 2)
    )
    for i, s in enumerate(out):
        s.uid = i
    assert out[-1].body_start == out[-1].body_end and len(out[-3].blocks) == 1
    return out


def _reference(samples, step, total, cfg: MaskConfig, seed: int):
    rate = rate_ref(step, total)
    out = []
    for s in samples:
        ids = s.ids.tolist()
        rng = sample_rng(seed, step, s.uid)
        vis = visible_drawn(ids, SP, cfg.strategies, cfg.block_order, rate, rng)
        out.append(student_ref(ids, s.student_labels.tolist(), vis))
    return out


def _split(tokens_pos, tokens_ids, tokens_labels, lens):
    out, at = [], 0
    for n in lens:
        sl = slice(at, at + n)
        out.append((tokens_pos[sl].tolist(), tokens_ids[sl].tolist(), tokens_labels[sl].tolist()))
        at += n
    return out


def _check(samples, step, total, cfg, seed, block_size=None):
    plan = draw_masks(samples, step, total, cfg, seed)
    expected = _reference(samples, step, total, cfg, seed)
    assert plan.student_lens == [len(e[0]) for e in expected]
    ids = torch.cat([s.ids for s in samples])
    labels = torch.cat([s.student_labels for s in samples])
    host = apply_masks_host(plan, ids, labels)
    assert _split(host.position_ids, host.input_ids, host.labels, plan.student_lens) == expected
    gather, k_ids, k_pos, k_labels = apply_reflection_mask(
        ids,
        labels,
        plan.keys,
        plan.offsets,
        plan.starts,
        plan.ends,
        plan.thresholds,
        host.out_offsets,
        sum(plan.student_lens),
        block_size=block_size,
    )
    assert torch.equal(gather, host.gather)
    assert _split(k_pos, k_ids, k_labels, plan.student_lens) == expected


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_every_rate(strategy, seed):
    samples = _samples(seed)
    for step, total in STEPS:
        _check(samples, step, total, MaskConfig(strategies=(strategy,)), seed)


@pytest.mark.parametrize("order", ["tce", "etc", "cet"])
def test_several_strategies_and_block_orders(order, seed):
    samples = _samples(seed, 14)
    cfg = MaskConfig(strategies=STRATEGIES, block_order=order)
    for step, total in STEPS[1:5]:
        _check(samples, step, total, cfg, seed)
    drawn = {s for step in range(40) for s in draw_masks(samples, step, 50, cfg, seed).strategies}
    assert drawn == set(STRATEGIES)


def test_kernel_many_tiles_per_sample(seed):
    """Tiles of 16 tokens: the running count carries across several tiles of one sample."""
    samples = _samples(seed, 6)
    cfg = MaskConfig(strategies=STRATEGIES)
    for step, total in STEPS[1:4]:
        _check(samples, step, total, cfg, seed, block_size=16)


def test_no_strategy_student_sees_everything(seed):
    samples = _samples(seed)
    cfg = MaskConfig(strategies=())
    _check(samples, 3, 10, cfg, seed)
    plan = draw_masks(samples, 3, 10, cfg, seed)
    assert plan.student_lens == [len(s) for s in samples]


def test_rate_schedule_and_float64_counts():
    assert mask_rate(0, 0) == 0.0
    assert mask_rate(4, 10) == 0.5
    assert mask_rate(99, 100) == 1.0 and mask_rate(150, 100) == 1.0
    # SPEC: n = 100 at step 6 of 100 hides 8 in float64, not 7.
    assert hide_count(100, mask_rate(6, 100)) == 8
    assert hide_count(0, 1.0) == 0 and hide_count(7, 0.0) == 0
    with pytest.raises(ValueError, match="step"):
        mask_rate(-1, 10)


def test_block_mask_order_hides_types(seed):
    """block_mask at r < 0.33 hides only the first type of the order, all three at r >= 0.67."""
    samples = [s for s in _samples(seed, 20) if len({b[2] for b in s.blocks}) == 3]
    if not samples:
        pytest.skip("no sample with all three block types drawn")
    for order, letter in (("etc", "execution"), ("tce", "text")):
        cfg = MaskConfig(strategies=("block_mask",), block_order=order)
        plan = draw_masks(samples, 0, 10, cfg, seed)
        ids = torch.cat([s.ids for s in samples])
        tok = apply_masks_host(plan, ids, torch.cat([s.student_labels for s in samples]))
        at = 0
        for s, n in zip(samples, plan.student_lens, strict=True):
            seen = set(tok.position_ids[at : at + n].tolist())
            at += n
            for lo, hi, kind in s.blocks:
                assert all((p in seen) == (kind != letter) for p in range(lo, hi))
        full = draw_masks(samples, 9, 10, cfg, seed)
        assert full.student_lens == [
            len(s) - (s.body_end - s.body_start) - 1 - s.body_start for s in samples
        ]


def test_deterministic_given_seed_step_uid(seed):
    samples = _samples(seed)
    cfg = MaskConfig(strategies=("random_token_mask", "random_block_mask"))
    a = draw_masks(samples, 5, 20, cfg, seed)
    b = draw_masks(list(reversed(samples)), 5, 20, cfg, seed)
    rev = list(reversed(range(len(samples))))
    assert [b.strategies[rev[i]] for i in range(len(samples))] == a.strategies
    assert [b.student_lens[rev[i]] for i in range(len(samples))] == a.student_lens
    c = draw_masks(samples, 5, 20, cfg, seed)
    assert torch.equal(a.keys, c.keys)
    later = draw_masks(samples, 6, 20, cfg, seed)
    assert not torch.equal(a.keys, later.keys)


def test_mask_config_errors():
    with pytest.raises(ValueError, match="strategies: unknown strategy 'random_blok_mask'"):
        MaskConfig(strategies=("random_blok_mask",))
    with pytest.raises(ValueError, match="block_order: must be a permutation of t, c, e"):
        MaskConfig(block_order="tcc")


def test_kernel_argument_errors():
    ids = torch.zeros(5, dtype=torch.int64)
    keys = torch.zeros(5, dtype=torch.int32)
    one = torch.zeros(1, dtype=torch.int64)
    two = torch.tensor([0, 5])
    with pytest.raises(ValueError, match="keys: must be int32"):
        apply_reflection_mask(ids, ids, keys.long(), two, one, one, one, two, 3)
    with pytest.raises(ValueError, match="offsets: expected \\(2,\\)"):
        apply_reflection_mask(ids, ids, keys, one, one, one, one, two, 3)
    with pytest.raises(ValueError, match="total_out: must be in \\[0, 5\\]"):
        apply_reflection_mask(ids, ids, keys, two, one, one, one, two, 9)
    with pytest.raises(ValueError, match="block_size: must be a power of two in \\[16, 1024\\]"):
        apply_reflection_mask(ids, ids, keys, two, one, one, one, two, 3, block_size=24)


def test_empty_plan():
    plan = draw_masks([], 0, 1, MaskConfig(), 0)
    empty = torch.zeros(0, dtype=torch.int64)
    tok = apply_masks_host(plan, empty, empty)
    assert tok.input_ids.numel() == 0 and plan.student_lens == []
    assert np.array_equal(tok.out_offsets.numpy(), [0])
