"""The reflection loss written straight from SPEC.md §2 and KERNEL-MATH.md, with full logits.

- ``reflection_loss_reference``: float64, the ground truth of the tests.
- ``plain_reflection_loss``: the same weighted maths in the inputs' own dtype (what plain PyTorch
  does in bf16), to size the error PyTorch itself makes in that dtype.
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


def reflection_loss_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ce, kl) in float64; differentiable in ``hidden`` and ``weight`` if they are float64
    leaves (pass ``hidden.double().requires_grad_()``)."""
    logits = hidden.double() @ weight.double().T
    return _weighted_loss(logits, targets, ce_weight, kl_pairs, kl_weight)


def plain_reflection_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weight: torch.Tensor,
    kl_pairs: torch.Tensor,
    kl_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same maths, every op in the inputs' dtype (bf16 stays bf16)."""
    return _weighted_loss(hidden @ weight.T, targets, ce_weight, kl_pairs, kl_weight)


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
