"""A mixture of experts' router load-balancing loss in packed training (``router_loss_of``,
``balancing_loss``), the term transformers adds to a causal LM's loss when its config sets
``output_router_logits`` with a non-zero ``router_aux_loss_coef`` (Mixtral, Qwen2/3-MoE, OLMoE,
PhiMoE, GraniteMoE, ...; JetMoE's ``aux_loss_coef``).

transformers (``load_balancing_loss_func``, the Switch Transformer loss) pools every MoE layer's
router logits over a forward's unmasked tokens: for E experts and top-k routing,

    f_e = (tokens x layers routed to e among their top-k) / (tokens x layers)
    P_e = (sum of softmax(router logits)_e over tokens x layers) / (tokens x layers)
    aux = E x sum_e f_e P_e            (f is a count: only P carries a gradient)

and adds ``coef x aux`` to the loss. In the reference recipe a forward is one sample: its
teacher row and its student row, the student's hidden tokens masked out as padding is. So the
packed micro-batch computes ``aux_i`` per sample over its own real tokens (its teacher and its
student's visible tokens; a packed batch has no padding), and the step's term is the mean over
the step's samples, the weights (``PackedBatch.aux_weight``: 1 / the step's samples, in both of
SPEC §2's normalisations) carrying it so that the micro-batches' sums add up to it: the trainer
normalises once. docs/training.md says so for users.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# The parameters of transformers' Switch-style ``load_balancing_loss_func`` (Mixtral's and the
# 30-odd copies of it): a model whose module defines another (Doge's takes the keys of its
# product-key routing too) computes another loss.
_SWITCH_SIGNATURE = ["gate_logits", "num_experts", "top_k", "attention_mask"]


@dataclass(frozen=True)
class RouterLoss:
    """What the balancing term of a model needs: its experts, top-k and coefficient."""

    num_experts: int
    top_k: int
    coef: float


def router_loss_of(model: Any) -> RouterLoss | None:
    """The balancing loss ``model``'s own forward would add to its loss, or None when it adds
    none (``output_router_logits`` off, a coefficient of 0 or none: DeepSeek-V2/V3). Raises
    ValueError, one line naming the model and the field, for a loss packed training cannot add."""
    config = model.config.get_text_config()
    name = getattr(model.config, "_name_or_path", "") or type(model.config).__name__
    coef = _coefficient(model, config)
    if not getattr(config, "output_router_logits", False):
        return None
    alpha = getattr(config, "aux_loss_alpha", None)
    if coef is None and alpha:  # DeepSeek-V2/V3's released configs
        raise ValueError(
            f"model: {name}: config.json's output_router_logits = true with aux_loss_alpha = "
            f"{alpha} asks for DeepSeek's sequence-wise balancing loss, which transformers' "
            f"{type(model).__name__} does not compute and packed training does not add; set "
            '"output_router_logits": false in config.json to train without it, as transformers '
            "does"
        )
    if coef in (None, 0):
        return None
    experts = getattr(model, "num_experts", None)
    top_k = getattr(model, "num_experts_per_tok", None)
    module = sys.modules.get(type(model).__module__)
    switch = getattr(module, "load_balancing_loss_func", None)
    standard = switch is not None and list(inspect.signature(switch).parameters) == (
        _SWITCH_SIGNATURE
    )
    if not (standard and isinstance(experts, int) and isinstance(top_k, int)):
        raise ValueError(
            f"model: {name}: config.json's output_router_logits = true asks for "
            f"{type(model).__name__}'s own router loss (coefficient {coef}), not the "
            "Switch-style load_balancing_loss_func packed training adds; set "
            '"output_router_logits": false in config.json to train without it'
        )
    return RouterLoss(num_experts=experts, top_k=top_k, coef=float(coef))


def _coefficient(model: Any, config: Any) -> float | None:
    """The weight the model's forward gives the term (JetMoE: ``aux_loss_coef``)."""
    for owner in (model, config):
        for field in ("router_aux_loss_coef", "aux_loss_coef"):
            value = getattr(owner, field, None)
            if value is not None:
                return value
    return None


def balancing_loss(
    router_logits: Sequence[torch.Tensor],
    token_sample: torch.Tensor,
    sample_weight: torch.Tensor,
    spec: RouterLoss,
) -> torch.Tensor:
    """sum_i sample_weight_i x aux_i (0-dim), aux_i transformers' ``load_balancing_loss_func``
    over sample i's tokens alone (module docstring); no host sync.

    Args:
        router_logits: one (T, E) tensor (or (1, T, E)) per MoE layer, in the order the model
            recorded them (``output_router_logits``).
        token_sample: (T,) int64, the micro-batch's sample (0 .. n-1) each packed token is of.
        sample_weight: (n,) float32, each sample's weight (0 in a zero-weight filler batch).
    """
    experts, n = spec.num_experts, sample_weight.shape[0]
    dtype = torch.promote_types(router_logits[0].dtype, torch.float32)
    chosen_sum = torch.zeros(n * experts, dtype=dtype, device=token_sample.device)
    prob_sum = torch.zeros(n, experts, dtype=dtype, device=token_sample.device)
    # each (token, expert) pair's slot in the (n, E) sums, for the top-k counts
    slot = token_sample.unsqueeze(1) * experts
    for logits in router_logits:
        # softmax in fp32 at least: the probabilities the routers themselves take their top-k of
        probs = torch.softmax(logits.reshape(-1, experts).to(dtype), dim=-1)
        with torch.no_grad():  # the counts carry no gradient (a top-k)
            chosen = torch.topk(probs, spec.top_k, dim=-1).indices
            ones = torch.ones(chosen.numel(), dtype=dtype, device=chosen.device)
            chosen_sum.index_add_(0, (slot + chosen).reshape(-1), ones)
        prob_sum = prob_sum.index_add(0, token_sample, probs)
    ones = torch.ones_like(token_sample, dtype=dtype)
    rows = torch.zeros(n, dtype=dtype, device=ones.device).index_add_(0, token_sample, ones)
    rows = rows * len(router_logits)  # tokens x layers: each sample's denominator
    aux = experts * (chosen_sum.view(n, experts) * prob_sum).sum(-1) / rows.clamp(min=1) ** 2
    return (sample_weight.to(dtype) * aux).sum()
