"""The reflection loss written straight from SPEC.md §2 and docs/kernel-math.md, with full logits.

- ``reflection_loss_reference``: float64, the ground truth of the tests.
- ``plain_reflection_loss``: the same weighted maths in the inputs' own dtype (what plain PyTorch
  does in bf16), to size the error PyTorch itself makes in that dtype.
- ``reflection_loss_reference_chunked``: float64 again, rows in chunks with the gradients
  written out by hand (no (N, V) tensor, no autograd), for the headline shape on a GPU.
- ``recipe_loss``: the reference recipe (F.cross_entropy mean + kl_div batchmean on full logits),
  the baseline of the benchmarks.
"""

import torch
import torch.nn.functional as F

IGNORE = -100


def _weighted_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sum_i c_i CE_i + sum_j k_j KL(p_t || p_s), teacher side detached; logits: (N, V)."""
    logp = torch.log_softmax(logits, dim=-1)
    valid = targets != IGNORE
    picked = logp.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
    ce = (ce_weight.to(logits.dtype) * torch.where(valid, -picked, 0)).sum()
    lpt = logp[kl_pairs[:, 0]].detach()  # SPEC §2: no gradient flows into the teacher via KL
    lps = logp[kl_pairs[:, 1]]
    kl_rows = (lpt.exp() * (lpt - lps)).sum(-1)
    kl = (kl_weight.to(logits.dtype) * kl_rows).sum()
    return ce + kl, ce, kl


def _capped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Gemma 2's final-logit soft cap, as transformers writes it: c tanh(z / c)."""
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def reflection_loss_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ce, kl) in float64; differentiable in ``hidden`` and ``weight`` if they are float64
    leaves (pass ``hidden.double().requires_grad_()``); ``softcap`` c: logits c tanh(W h / c)."""
    logits = _capped(hidden.double() @ weight.double().T, softcap)
    return _weighted_loss(logits, targets, ce_weight, kl_pairs, kl_weight)


@torch.no_grad()
def reflection_loss_reference_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    rows: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, d hidden, d weight) in float64 on the inputs' device, for d loss = 1
    (docs/kernel-math.md): d z_r = c_r (p_r - onehot(y_r)) + sum_{j: s_j = r} k_j (p_r - p_t(j)),
    teacher detached. Each row is a student of at most one pair."""
    h, w = hidden.double(), weight.double()
    n = h.shape[0]
    lse = torch.cat([torch.logsumexp(h[a : a + rows] @ w.T, -1) for a in range(0, n, rows)])
    teacher_of = torch.full((n,), -1, dtype=torch.long, device=h.device)
    teacher_of[kl_pairs[:, 1]] = kl_pairs[:, 0]
    k_of = torch.zeros(n, dtype=torch.float64, device=h.device)
    k_of[kl_pairs[:, 1]] = kl_weight.double()
    c_of = torch.where(targets != IGNORE, ce_weight.double(), 0.0)
    loss = torch.zeros((), dtype=torch.float64, device=h.device)
    dh, dw = torch.zeros_like(h), torch.zeros_like(w)
    for a in range(0, n, rows):
        z = h[a : a + rows] @ w.T
        logp = z - lse[a : a + rows, None]
        y = targets[a : a + rows].clamp(min=0)[:, None]
        c = c_of[a : a + rows]
        loss -= (c * logp.gather(1, y).squeeze(1)).sum()
        dz = c[:, None] * logp.exp()
        dz.scatter_add_(1, y, -c[:, None])
        students = (teacher_of[a : a + rows] >= 0).nonzero().squeeze(1)
        t = teacher_of[a + students]
        logp_t = h[t] @ w.T - lse[t, None]
        k = k_of[a + students]
        loss += (k * (logp_t.exp() * (logp_t - logp[students])).sum(-1)).sum()
        dz[students] += k[:, None] * (logp[students].exp() - logp_t.exp())
        dh[a : a + rows] = dz @ w
        dw += dz.T @ h[a : a + rows]
    return loss, dh, dw


def plain_reflection_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same maths, every op in the inputs' dtype (bf16 stays bf16)."""
    return _weighted_loss(
        _capped(hidden @ weight.T, softcap), targets, ce_weight, kl_pairs, kl_weight
    )


def recipe_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, kl_pairs: torch.Tensor
) -> torch.Tensor:
    """The reference recipe: full logits, token-mean CE, ``kl_div(..., "batchmean")`` over pairs.

    Equals ``fused_linear_reflection_loss`` with ce_weight = 1 / (number of CE rows) and
    kl_weight = 1 / P.
    """
    logits = (hidden @ weight.T).float()
    ce = F.cross_entropy(logits, targets, ignore_index=IGNORE)
    if kl_pairs.shape[0] == 0:
        return ce
    teacher = torch.softmax(logits[kl_pairs[:, 0]].detach(), dim=-1)
    student = torch.log_softmax(logits[kl_pairs[:, 1]], dim=-1)
    return ce + F.kl_div(student, teacher, reduction="batchmean")
