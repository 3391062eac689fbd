"""The reflection loss (CE + KL from hidden states), per provider.

Providers: ``ours:<backend>`` (``fused_linear_reflection_loss`` on each of its backends:
``torch``, chunked PyTorch; ``triton``, CUDA or the CPU interpreter), ``reference`` (the
recipe: full logits, F.cross_entropy mean, kl_div batchmean on log_softmax / softmax) and
``liger`` (LigerFusedLinearCrossEntropyLoss + a separate KL on full logits of the pair rows,
where Liger is installed; CUDA or the interpreter). Ours gets ce_weight = 1 / (CE rows) and
kl_weight = 1 / P, so every provider computes the same number.

Batch (``setup_loss``): N loss rows, D, V; rows [0, N/2) play teachers, [N/2, N) students,
P = N/4 pairs (teacher i, student N/2 + i), 10% of targets ignored. Modes: ``fwd`` (the forward
of a training step: inputs require grad) and ``full`` (forward + backward). Useful FLOPs:
2 N D V forward, 6 N D V forward + backward.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable

import torch

from bench.providers.common import REPO, synchronize

sys.path.insert(0, str(REPO / "tests"))  # reference.loss: the recipe, one place for tests too
from reference.loss import recipe_loss  # noqa: E402
from reflectioncoder.kernels import fused_linear_reflection_loss  # noqa: E402

MODES = ("fwd", "full")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def our_backends() -> list[str]:
    """The fused loss's explicit backends (its ``BACKENDS`` without "auto")."""
    from reflectioncoder.kernels import fused_loss

    return [b for b in getattr(fused_loss, "BACKENDS", ("triton", "torch")) if b != "auto"]


def providers() -> list[str]:
    """Every provider name, ours first."""
    return [f"ours:{b}" for b in our_backends()] + ["reference", "liger"]


def setup_loss(n: int, d: int, v: int, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """Inputs of one point, made in place (no freed temporaries to skew a CPU RSS peak)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.empty(n, d, dtype=dtype, device=device).normal_(generator=gen)
    weight = torch.empty(v, d, dtype=dtype, device=device).normal_(0, d**-0.5, generator=gen)
    targets = torch.randint(0, v, (n,), generator=gen, device=device)
    targets[torch.rand(n, generator=gen, device=device) < 0.1] = -100
    p = n // 4
    teacher = torch.arange(p, device=device)
    kl_pairs = torch.stack([teacher, teacher + n // 2], 1)
    n_ce = (targets != -100).sum()  # on the device: the weights carry the normalisation
    ce_weight = (targets != -100).float() / n_ce.clamp(min=1)
    kl_weight = torch.full((p,), 1.0 / max(p, 1), device=device)
    hidden.requires_grad_()
    weight.requires_grad_()
    return dict(
        hidden=hidden,
        weight=weight,
        targets=targets,
        ce_weight=ce_weight,
        kl_pairs=kl_pairs,
        kl_weight=kl_weight,
    )


def unavailable(provider: str, device: str) -> str | None:
    """Why ``provider`` cannot run on ``device`` (None: it can)."""
    if provider == "liger" and importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed"
    if provider in ("liger", "ours:triton") and torch.device(device).type != "cuda":
        from reflectioncoder.kernels.fused_loss import triton_interpreted

        if not triton_interpreted():
            return f"{provider} needs CUDA or TRITON_INTERPRET=1"
    return None


def make_loss_fn(provider: str, x: dict) -> Callable[[], torch.Tensor]:
    """A callable returning the 0-dim loss of ``provider`` on inputs ``x``."""
    args = (x["hidden"], x["weight"], x["targets"], x["ce_weight"], x["kl_pairs"], x["kl_weight"])
    if provider == "reference":
        return lambda: recipe_loss(x["hidden"], x["weight"], x["targets"], x["kl_pairs"])
    if provider.startswith("ours:"):
        backend = provider.split(":", 1)[1]
        return lambda: fused_linear_reflection_loss(*args, backend=backend)[0]
    if provider == "liger":
        return _liger_loss_fn(x)
    raise ValueError(f"provider: expected one of {providers()}, got {provider!r}")


def _liger_loss_fn(x: dict) -> Callable[[], torch.Tensor]:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    flce = LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="mean")

    def liger() -> torch.Tensor:
        ce = flce(x["weight"], x["hidden"], x["targets"])
        pairs = x["kl_pairs"]
        logits = torch.cat([x["hidden"][pairs[:, 0]], x["hidden"][pairs[:, 1]]]) @ x["weight"].T
        t, s = logits.float().chunk(2)
        kl = torch.nn.functional.kl_div(
            torch.log_softmax(s, -1), torch.softmax(t.detach(), -1), reduction="batchmean"
        )
        return ce + kl

    return liger


def make_step(provider: str, mode: str, x: dict, device: str) -> Callable[[], torch.Tensor]:
    """One timed call: the loss (``fwd``) or loss + backward (``full``), synchronised."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    fn = make_loss_fn(provider, x)

    def step() -> torch.Tensor:
        x["hidden"].grad = x["weight"].grad = None
        loss = fn()
        if mode == "full":
            loss.backward()
        synchronize(device)
        return loss

    return step


def useful_flops(mode: str, n: int, d: int, v: int) -> int:
    return (6 if mode == "full" else 2) * n * d * v


def deterministic(step: Callable[[], torch.Tensor], x: dict) -> bool:
    """Two calls give bitwise the same loss (and gradients, in mode ``full``)."""

    def outputs() -> list[torch.Tensor]:
        loss = step().detach().clone()
        grads = [t.grad.clone() for t in (x["hidden"], x["weight"]) if t.grad is not None]
        return [loss, *grads]

    first, second = outputs(), outputs()
    return len(first) == len(second) and all(map(torch.equal, first, second))
