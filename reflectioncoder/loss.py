"""PackedBatch + final hidden states -> the ReflectionCoder loss (SPEC §2) via the fused kernel.

Only the loss rows are gathered (rows with no CE and no KL pair cost nothing); the LM head is
applied inside ``fused_linear_reflection_loss``, so no (T, V) logits tensor ever exists.
"""

from __future__ import annotations

from typing import Protocol

import torch


class LossInputs(Protocol):
    """What ``reflection_loss`` reads from a ``data.packing.PackedBatch``."""

    loss_rows: torch.Tensor  # (R,) int64 indices into the T packed tokens
    targets: torch.Tensor  # (R,) int64 next-token ids; -100 = no CE on the row
    ce_weight: torch.Tensor  # (R,) float32
    kl_pairs: torch.Tensor  # (P, 2) int64 (teacher_row, student_row) into the R loss rows
    kl_weight: torch.Tensor  # (P,) float32
    # Optional: ce_only_rows (M,) int64, the rows with CE in no pair (the plan then needs no sync)


def reflection_loss(
    hidden: torch.Tensor,
    batch: LossInputs,
    lm_head_weight: torch.Tensor,
    backend: str = "auto",
    check_inputs: bool | None = None,
    need_grad: bool | None = None,
    lm_head_bias: torch.Tensor | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted CE + KL of a packed micro-batch; no host sync when ``check_inputs`` is off.

    Args:
        hidden: (T, D) final hidden states (``model.forward_hidden``).
        batch: loss_rows (R,), targets (R,), ce_weight (R,), kl_pairs (P, 2), kl_weight (P,),
            and if it has them ce_only_rows (M,) (``PackedBatch`` has).
        lm_head_weight: (V, D) LM head (``model.lm_head_weight``).
        backend: "triton" | "torch" | "auto" (the fused loss's choice).
        check_inputs: the fused loss's index checks (default: on the CPU only; each is a host
            sync, and a batch from ``data.packing`` has its indices right by construction).
        need_grad: False computes the loss alone (no gradient work or buffers); None follows
            autograd (``torch.no_grad()`` or inputs without grad also skip the gradients).
        lm_head_bias: (V,) the head's bias, or None: logits = W h + b, computed as
            [W | b] [h; 1] (exact, every backend; costs a copy of W and of its gradient).
        softcap: None, or c > 0: the logits are c tanh((W h + b) / c) (Gemma 2's
            ``final_logit_softcapping``), applied inside the fused loss (``model.logit_softcap``).

    Returns:
        (loss, parts): loss = sum_i ce_weight_i CE_i + sum_j kl_weight_j KL_j (0-dim; the
        weights carry the normalisation), parts = {"ce", "kl"} (0-dim, detached sums).
    """
    from reflectioncoder.kernels import fused_linear_reflection_loss

    if hidden.dim() != 2 or hidden.shape[1] != lm_head_weight.shape[1]:
        raise ValueError(
            f"hidden: expected (T, D={lm_head_weight.shape[1]}), got {tuple(hidden.shape)}"
        )
    rows = hidden.index_select(0, batch.loss_rows)  # (R, D): only rows that carry a loss
    weight = lm_head_weight
    if lm_head_bias is not None:  # autograd splits the gradient back into d W, d b and d h
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
        weight = torch.cat([weight, lm_head_bias.to(weight.dtype)[:, None]], dim=1)
    return fused_linear_reflection_loss(
        rows,
        weight,
        batch.targets,
        batch.ce_weight,
        batch.kl_pairs,
        batch.kl_weight,
        backend=backend,
        check_inputs=check_inputs,
        ce_only_rows=getattr(batch, "ce_only_rows", None),
        need_grad=need_grad,
        softcap=softcap,
    )
