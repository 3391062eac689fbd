"""Packed teacher + student forward == the reference recipe's padded, masked formulation.

For a tiny random Llama-architecture model (GQA, RoPE), the packed batch of the data room
(teacher and gapped-position student segments, varlen attention) must give, at every loss row,
the logits of the reference formulation (tests/reference/recipe.py: padded doubled batch,
hidden keys masked in eager float64 attention, original position ids), for every mask strategy
at several rates; and the loss from our rows and weights must equal SPEC §2's loss computed from
the reference logits.
"""

from __future__ import annotations

import copy

import pytest
import torch
from reference.recipe import REFERENCE_ATTN, reference_logits, reference_loss
from test_packing import one_micro_batch

from reflectioncoder.data.config import STRATEGIES, MaskConfig
from reflectioncoder.data.packing import PackedBatch
from reflectioncoder.data.tokenize import TokenizedSample
from reflectioncoder.loss import reflection_loss
from reflectioncoder.model import build_tiny_llama, forward_hidden, lm_head_weight
from reflectioncoder.testing.synthetic import synthetic_samples

VOCAB = 83
TOTAL_STEPS = 10
STEPS = (0, 4, 9)  # mask rates 0.1, 0.5, 1.0


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours: float32, varlen attention; reference: the same weights in float64, eager)."""
    ours = build_tiny_llama(
        VOCAB, hidden_size=48, num_layers=2, num_heads=6, num_kv_heads=2, rope_theta=500.0
    )
    ours.eval()
    ref = copy.deepcopy(ours).double()
    ref.set_attn_implementation(REFERENCE_ATTN)
    return ours, ref


def _samples(seed: int, n: int = 5) -> list[TokenizedSample]:
    samples = synthetic_samples(
        n,
        vocab_size=VOCAB,
        seed=seed,
        instruction=(1, 6),
        reflection=(4, 30),
        answer=(1, 7),
        block_len=(0, 5),
        generation_fraction=0.0,
    )
    # One generation sample too: teacher only, no student, KL 0.
    samples += synthetic_samples(
        1,
        vocab_size=VOCAB,
        seed=seed + 1,
        instruction=(1, 4),
        answer=(1, 5),
        generation_fraction=1.0,
    )
    return samples


def _segments(batch: PackedBatch, samples: list[TokenizedSample], cfg: MaskConfig):
    """(sample index, "teacher" | "student") of each packed segment: the data room's layout,
    each sample's teacher followed by its student (reflection samples with distill on)."""
    segs = []
    for i, s in enumerate(samples):
        segs.append((i, "teacher"))
        if s.is_reflection and cfg.distill:
            segs.append((i, "student"))
    assert len(segs) == len(batch.seq_lens) == batch.cu_seqlens.numel() - 1
    return segs


def _student_visibility(batch, samples, segs) -> list[torch.Tensor | None]:
    """Each student's (L,) bool visibility, read from its segment's original position ids,
    checked against the sample's ids and SPEC §3's fixed parts."""
    visible: list[torch.Tensor | None] = [None] * len(samples)
    cu = batch.cu_seqlens.tolist()
    for s, (i, kind) in enumerate(segs):
        seg_pos = batch.position_ids[cu[s] : cu[s + 1]]
        seg_ids = batch.input_ids[cu[s] : cu[s + 1]]
        sample = samples[i]
        if kind == "teacher":
            assert torch.equal(seg_pos, torch.arange(len(sample)))
            assert torch.equal(seg_ids, sample.ids)
            continue
        assert torch.all(seg_pos[1:] > seg_pos[:-1])  # gapped but increasing
        assert torch.equal(seg_ids, sample.ids[seg_pos])
        vis = torch.zeros(len(sample), dtype=torch.bool)
        vis[seg_pos] = True
        assert not vis[: sample.body_start].any()  # first instruction + first <|assistant|>
        assert not vis[sample.body_end] and vis[sample.body_end + 1 :].all()
        visible[i] = vis
    return visible


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_packed_logits_and_loss_match_reference(models, seed: int, strategy: str) -> None:
    ours, ref = models
    samples = _samples(seed)
    cfg = MaskConfig(strategies=(strategy,), block_order="etc" if seed % 2 else "tce")
    weight = lm_head_weight(ours)
    for step in STEPS:
        batch = one_micro_batch(samples, step, TOTAL_STEPS, cfg, seed, normalisation="sample")
        segs = _segments(batch, samples, cfg)
        visible = _student_visibility(batch, samples, segs)
        with torch.no_grad():
            hidden = forward_hidden(ours, batch)
            rows = hidden[batch.loss_rows] @ weight.T  # (R, V) our logits at the loss rows
            t_ref, s_ref = reference_logits(ref, [s.ids for s in samples], visible)

        # Every loss row against the reference logits at (sample, pass, original position).
        seg_of_row = torch.searchsorted(batch.cu_seqlens.long(), batch.loss_rows, right=True) - 1
        expected = torch.stack(
            [
                (t_ref if segs[g][1] == "teacher" else s_ref)[segs[g][0]][int(p)]
                for g, p in zip(
                    seg_of_row.tolist(), batch.position_ids[batch.loss_rows], strict=True
                )
            ]
        )
        msg = f"strategy={strategy} step={step}"
        torch.testing.assert_close(rows.double(), expected, atol=2e-5, rtol=2e-5, msg=msg)
        # Every CE target row and KL row of SPEC §2 is a loss row of ours.
        n_ce = sum(
            int((s.labels[1:] != -100).sum()) + int((s.student_labels[1:] != -100).sum())
            for s in samples
        )
        assert int((batch.ce_weight > 0).sum()) == n_ce == batch.num_label_tokens
        assert batch.kl_pairs.shape[0] == sum(s.num_kl_rows for s in samples)

        # Total loss (sample mode): ours from rows and weights == SPEC §2 from reference logits.
        with torch.no_grad():
            loss, parts = reflection_loss(hidden, batch, weight, backend="torch")
        want, want_ce, want_kl = reference_loss(
            t_ref,
            s_ref,
            [s.labels for s in samples],
            [s.student_labels for s in samples],
            normalisation="sample",
        )
        torch.testing.assert_close(loss.double(), want, atol=1e-5, rtol=1e-5, msg=msg)
        torch.testing.assert_close(parts["ce"].double(), want_ce, atol=1e-5, rtol=1e-5, msg=msg)
        torch.testing.assert_close(parts["kl"].double(), want_kl, atol=1e-5, rtol=1e-5, msg=msg)
        if step == STEPS[-1] and strategy != "all_mask":
            assert want_kl > 0  # the student saw less than the teacher: a real KL term


def test_token_mode_and_gradients_match_reference(models, seed: int) -> None:
    """Token normalisation, and d loss / d parameters of the whole model (float64 both sides)."""
    ours, ref = models
    ours64 = copy.deepcopy(ours).double()
    samples = _samples(seed + 7, n=3)
    cfg = MaskConfig(strategies=("random_token_mask",))
    batch = one_micro_batch(samples, 4, TOTAL_STEPS, cfg, seed, normalisation="token")
    segs = _segments(batch, samples, cfg)
    visible = _student_visibility(batch, samples, segs)

    ours64.zero_grad()
    hidden = forward_hidden(ours64, batch)
    loss, _ = reflection_loss(hidden, batch, lm_head_weight(ours64), backend="torch")
    loss.backward()

    ref.zero_grad()
    t_ref, s_ref = reference_logits(ref, [s.ids for s in samples], visible)
    want, _, _ = reference_loss(
        t_ref,
        s_ref,
        [s.labels for s in samples],
        [s.student_labels for s in samples],
        normalisation="token",
    )
    want.backward()
    # The fused loss returns fp32 and the weights are fp32 (1 / count): fp32 rounding only.
    torch.testing.assert_close(loss.double(), want.detach(), atol=1e-9, rtol=1e-6)
    named_ref = dict(ref.named_parameters())
    for name, p in ours64.named_parameters():
        want_grad = named_ref[name].grad
        atol = 1e-6 * float(want_grad.abs().max())  # fp32 loss weights: relative to the tensor
        torch.testing.assert_close(p.grad, want_grad, atol=atol, rtol=1e-6, msg=f"d {name}")
