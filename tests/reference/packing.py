"""Plain float64 reference of SPEC §2's step loss, per sample, with a toy causal model.

The toy model stands in for a transformer: causal (a token sees only earlier tokens of its own
sequence) and position-aware (original position ids), so packing mistakes (wrong rows, wrong
positions, sequences leaking into each other, wrong pairs or weights) change the loss.
"""

from __future__ import annotations

import torch

IGNORE = -100


class ToyCausalModel:
    def __init__(self, vocab: int, dim: int, max_pos: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(vocab, dim, generator=g, dtype=torch.float64)
        self.pos = torch.randn(max_pos, dim, generator=g, dtype=torch.float64)
        self.head = torch.randn(vocab, dim, generator=g, dtype=torch.float64)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(n,) ids and positions of ONE sequence -> (n, V) float64 logits."""
        x = self.emb[ids] + self.pos[positions]
        h = torch.tanh(x.cumsum(0) / torch.arange(1, len(ids) + 1, dtype=torch.float64)[:, None])
        return h @ self.head.T


def _ce(logits: torch.Tensor, target: int) -> torch.Tensor:
    return torch.logsumexp(logits, 0) - logits[target]


def _kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    lt, ls = torch.log_softmax(teacher, 0), torch.log_softmax(student, 0)
    return (lt.exp() * (lt - ls)).sum()


def sample_terms(model, ids, labels, student_labels, visible, distill: bool, kl: bool):
    """(list of CE terms, list of KL terms) of one sample (SPEC §2), one token at a time."""
    ids, labels, student_labels = ids.tolist(), labels.tolist(), student_labels.tolist()
    n = len(ids)
    t_logits = model(torch.tensor(ids), torch.arange(n))
    ce = [_ce(t_logits[i], labels[i + 1]) for i in range(n - 1) if labels[i + 1] != IGNORE]
    kls = []
    if distill and visible is not None:
        pos = [p for p in range(n) if visible[p]]
        s_logits = model(torch.tensor([ids[p] for p in pos]), torch.tensor(pos))
        sl = [student_labels[p] for p in pos]
        ce += [_ce(s_logits[k], sl[k + 1]) for k in range(len(pos) - 1) if sl[k + 1] != IGNORE]
        if kl:
            row_of = {p: k for k, p in enumerate(pos)}
            kls = [
                _kl(t_logits[p], s_logits[row_of[p]])
                for p in range(n)
                if student_labels[p] != IGNORE
            ]
    return ce, kls


def step_loss_ref(per_sample_terms, normalisation: str) -> torch.Tensor:
    """sample: mean over samples of mean(CE_i) + mean(KL_i); token: pooled means (SPEC §2)."""
    if normalisation == "sample":
        total = torch.zeros((), dtype=torch.float64)
        for ce, kls in per_sample_terms:
            total = total + torch.stack(ce).mean() + (torch.stack(kls).mean() if kls else 0.0)
        return total / len(per_sample_terms)
    ce = [t for c, _ in per_sample_terms for t in c]
    kls = [t for _, k in per_sample_terms for t in k]
    return torch.stack(ce).mean() + (torch.stack(kls).mean() if kls else 0.0)


def packed_loss(model, batch) -> torch.Tensor:
    """sum ce_weight * CE + sum kl_weight * KL of one PackedBatch, run segment by segment."""
    cu = batch.cu_seqlens.tolist()
    logits = torch.cat(
        [
            model(batch.input_ids[lo:hi], batch.position_ids[lo:hi])
            for lo, hi in zip(cu[:-1], cu[1:], strict=True)
        ]
    )
    rows = logits[batch.loss_rows]
    total = torch.zeros((), dtype=torch.float64)
    for r in range(rows.shape[0]):
        if int(batch.targets[r]) != IGNORE:
            total = total + float(batch.ce_weight[r]) * _ce(rows[r], int(batch.targets[r]))
    for j in range(batch.kl_pairs.shape[0]):
        t, s = batch.kl_pairs[j].tolist()
        total = total + float(batch.kl_weight[j]) * _kl(rows[t], rows[s])
    return total
