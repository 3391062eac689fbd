"""The reference recipe's formulation (SPEC §2-3), plain and padded, for tests and benchmarks.

The authors' trainer pads a batch of samples to one length, doubles it (teacher rows and
student rows), feeds the student's visibility as a padding-style attention mask (hidden keys
removed), keeps the ORIGINAL position ids, and materialises the full-vocabulary logits of both
passes. The loss is SPEC §2's: CE over teacher and student labels together (one mean per
sample) + KL(teacher || student) over the student-label rows (batchmean, teacher detached),
mean over samples. Nothing here is clever: it is the yardstick.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

IGNORE = -100
REFERENCE_ATTN = "reference_masked_attention"


def masked_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Eager attention in float64. query (B, Hq, P, Dh), key/value (B, Hkv, P, Dh),
    attention_mask (B, 1, P, P) bool, True = may attend (None: causal). -> (B, P, Hq, Dh)."""
    rep = query.shape[1] // key.shape[1]
    q = query.double()
    k = key.double().repeat_interleave(rep, dim=1)
    v = value.double().repeat_interleave(rep, dim=1)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    scores = q @ k.transpose(-1, -2) * scale
    p = q.shape[2]
    allowed = torch.ones(p, p, dtype=torch.bool, device=q.device).tril()
    if attention_mask is not None:
        allowed = allowed & attention_mask
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).to(query.dtype), None


AttentionInterface.register(REFERENCE_ATTN, masked_attention_forward)


def build_padded_batch(
    ids: Sequence[torch.Tensor],
    visible: Sequence[torch.Tensor | None],
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """The doubled, padded batch: every teacher row, then a student row per sample whose
    ``visible`` (L,) bool mask is given (None: no student pass, e.g. generation samples).

    Returns input_ids (N, P), position_ids (N, P) (original positions 0..P-1), attention_mask
    (N, 1, P, P) bool (causal AND key visible AND key not padding; the diagonal is always
    allowed so a hidden query row stays finite: it carries no loss and no one attends to it),
    and rows: (sample index, "teacher" | "student") of each batch row.
    """
    rows = [(i, "teacher") for i in range(len(ids))]
    rows += [(i, "student") for i, vis in enumerate(visible) if vis is not None]
    p = max(int(x.numel()) for x in ids)
    n = len(rows)
    input_ids = torch.full((n, p), pad_id, dtype=torch.long)
    keys = torch.zeros(n, p, dtype=torch.bool)
    for r, (i, kind) in enumerate(rows):
        length = ids[i].numel()
        input_ids[r, :length] = ids[i]
        keys[r, :length] = True if kind == "teacher" else visible[i]
    causal = torch.ones(p, p, dtype=torch.bool).tril()
    mask = causal[None] & keys[:, None, :]
    mask = mask | torch.eye(p, dtype=torch.bool)[None]
    position_ids = torch.arange(p).expand(n, p).contiguous()
    return input_ids, position_ids, mask[:, None], rows


def reference_logits(
    model: torch.nn.Module,
    ids: Sequence[torch.Tensor],
    visible: Sequence[torch.Tensor | None],
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Full-vocabulary logits of each sample's teacher (L, V) and student (L, V) pass.

    ``model`` is a causal LM whose attention is REFERENCE_ATTN (cast it to float64 for a
    float64 reference); the student's logits at hidden positions are meaningless.
    """
    input_ids, position_ids, mask, rows = build_padded_batch(ids, visible)
    logits = model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask).logits
    teacher: list[torch.Tensor] = [None] * len(ids)  # type: ignore[list-item]
    student: list[torch.Tensor | None] = [None] * len(ids)
    for r, (i, kind) in enumerate(rows):
        out = logits[r, : ids[i].numel()]
        if kind == "teacher":
            teacher[i] = out
        else:
            student[i] = out
    return teacher, student


def sample_loss_terms(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor | None,
    labels: torch.Tensor,
    student_labels: torch.Tensor,
    kl: bool = True,
) -> tuple[torch.Tensor, int, torch.Tensor, int]:
    """One sample's (CE sum, CE count, KL sum, KL count), SPEC §2, in float64.

    CE: logits[p - 1] predicts labels[p] (teacher) and student_labels[p] (student).
    KL: rows p with student_labels[p] != IGNORE, KL(softmax(teacher[p]) || softmax(student[p])).
    """
    t = teacher_logits.double()
    ce_sum = t.new_zeros(())
    ce_n = 0
    passes = [(t, labels)]
    if student_logits is not None:
        passes.append((student_logits.double(), student_labels))
    for logits, lab in passes:
        target = lab[1:]
        keep = target != IGNORE
        if keep.any():
            ce_sum = ce_sum + F.cross_entropy(logits[:-1][keep], target[keep], reduction="sum")
        ce_n += int(keep.sum())
    kl_sum = t.new_zeros(())
    kl_n = 0
    if student_logits is not None and kl:
        rows = student_labels != IGNORE
        kl_n = int(rows.sum())
        if kl_n:
            log_s = torch.log_softmax(student_logits.double()[rows], dim=-1)
            p_t = torch.softmax(t[rows].detach(), dim=-1)
            kl_sum = F.kl_div(log_s, p_t, reduction="sum")
    return ce_sum, ce_n, kl_sum, kl_n


def reference_loss(
    teacher: Sequence[torch.Tensor],
    student: Sequence[torch.Tensor | None],
    labels: Sequence[torch.Tensor],
    student_labels: Sequence[torch.Tensor],
    normalisation: str = "sample",
    kl: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, ce, kl) of a step, SPEC §2: ``sample`` = mean over samples of CE_i + KL_i
    (KL_i = batchmean over its rows, 0 without student); ``token`` = global means."""
    terms = [
        sample_loss_terms(t, s, lab, slab, kl)
        for t, s, lab, slab in zip(teacher, student, labels, student_labels, strict=True)
    ]
    if normalisation == "sample":
        ce = sum(c / n if n else c * 0 for c, n, _, _ in terms) / len(terms)
        kld = sum(k / m if m else k * 0 for _, _, k, m in terms) / len(terms)
    elif normalisation == "token":
        n_ce = sum(n for _, n, _, _ in terms)
        n_kl = sum(m for _, _, _, m in terms)
        ce = sum(c for c, _, _, _ in terms) / max(n_ce, 1)
        kld = sum(k for _, _, k, _ in terms) / max(n_kl, 1)
    else:
        raise ValueError(f"normalisation: {normalisation!r}")
    return ce + kld, ce, kld
