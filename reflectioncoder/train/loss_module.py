"""The model and its loss as one module, what every engine wraps (DeepSpeed included; under
ZeRO-3 the LM head is registered as an external parameter of it, since the fused loss reads it
outside lm_head)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from reflectioncoder.data.packing import PackedBatch
from reflectioncoder.loss import reflection_loss
from reflectioncoder.router_loss import balancing_loss, router_loss_of


class ReflectionLossModule(nn.Module):
    """model + fused reflection loss: ``forward(batch) -> (loss, ce, kl, teacher_ce)``, the
    hidden states times the head's logit scale (``model.logit_scale``), soft-capped where the
    model caps its logits (``model_support.final_logit_softcap``); for a
    mixture of experts whose config asks for the router's balancing loss (``router_loss``), the
    loss adds ``coef x aux`` and ``aux_loss`` holds the last forward's aux (reflectioncoder/
    router_loss.py)."""

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype
        # fp16's loss scale (0-dim, on the device), set by the engine (``train.engine.LossScale``)
        self.loss_scale: torch.Tensor | None = None
        from reflectioncoder.model import logit_scale
        from reflectioncoder.model_support import final_logit_softcap

        self.router_loss = router_loss_of(model)  # None: the model adds no balancing loss
        # what the model multiplies W h by (model.LOGIT_SCALES): the loss, the held-out loss and
        # the teacher-CE pass all read the hidden states scaled by it (exact: linear in h)
        self.logit_scale = logit_scale(model)
        # the soft cap of the logits (Gemma 2: c tanh(z / c), after the scale), or None
        self.logit_softcap = final_logit_softcap(model)
        # the last forward's weighted balancing loss (0-dim, detached; None without one)
        self.aux_loss: torch.Tensor | None = None

    def forward(
        self, batch: PackedBatch, split: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weighted loss sums of one packed micro-batch (0-dim tensors, no host sync).

        ``split``: also returns the teacher's CE part (one extra no-grad loss pass over the
        teacher's CE rows, ``batch.teacher_ce_rows``, on logging steps only); else teacher_ce
        is NaN.
        """
        # model.py loads transformers: on the first forward, so importing the trainer stays fast
        from reflectioncoder.model import forward_hidden, lm_head_bias, lm_head_weight

        device_type = batch.input_ids.device.type
        with torch.autocast(
            device_type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=bool(self.autocast_dtype),
        ):
            if self.router_loss is None:
                hidden = forward_hidden(self.model, batch)
            else:
                hidden, router_logits = forward_hidden(self.model, batch, router_logits=True)
        weight, bias = lm_head_weight(self.model), lm_head_bias(self.model)  # bias: Phi's
        if self.logit_scale != 1.0:  # the head's logits are scale * W h (Cohere, Granite)
            hidden = hidden * self.logit_scale
            bias = None if bias is None else bias * self.logit_scale
        if self.autocast_dtype is not None:
            hidden = hidden.to(self.autocast_dtype)
            weight = weight.to(self.autocast_dtype)
        # The packing's indices are right by construction: no checks (each a host sync).
        loss, parts = reflection_loss(
            hidden,
            self._scaled(batch),
            weight,
            check_inputs=False,
            lm_head_bias=bias,
            softcap=self.logit_softcap,
        )
        if self.loss_scale is not None and torch.is_grad_enabled():
            # the scaled sums back to the loss (exact: a power of two); the backward's d z keep it
            loss = loss / self.loss_scale
            parts = {k: v / self.loss_scale for k, v in parts.items()}
        if self.router_loss is not None:  # the engine's backward scales it as the loss
            aux = balancing_loss(
                router_logits, batch.token_sample, batch.aux_weight, self.router_loss
            )
            loss = loss + self.router_loss.coef * aux.to(loss.dtype)
            self.aux_loss = aux.detach()
        teacher_ce = torch.full((), float("nan"), device=loss.device)
        if split:
            with torch.no_grad():
                only_teacher = dataclasses.replace(
                    batch,
                    ce_weight=batch.ce_weight * ~batch.row_is_student,
                    kl_pairs=batch.kl_pairs[:0],
                    kl_weight=batch.kl_weight[:0],
                    ce_only_rows=batch.teacher_ce_rows,
                )
                # the loss alone: no d z, no gradient GEMMs or buffers (a forward's cost)
                teacher_ce = reflection_loss(
                    hidden,
                    only_teacher,
                    weight,
                    check_inputs=False,
                    need_grad=False,
                    lm_head_bias=bias,
                    softcap=self.logit_softcap,
                )[1]["ce"]
        return loss, parts["ce"].detach(), parts["kl"].detach(), teacher_ce.detach()

    def _scaled(self, batch: PackedBatch) -> PackedBatch:
        """``batch`` with its loss weights times the fp16 loss scale when a gradient is wanted:
        the fused loss writes its d z (upstream gradient 1) in the forward, in fp16, where they
        would flush to zero at a real step's weights; the engine's backward then multiplies the
        returned (unscaled) loss by the scale, so the d z arrive with an upstream gradient of 1."""
        if self.loss_scale is None or not torch.is_grad_enabled():
            return batch
        return dataclasses.replace(
            batch,
            ce_weight=batch.ce_weight * self.loss_scale,
            kl_weight=batch.kl_weight * self.loss_scale,
        )
