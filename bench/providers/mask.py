"""The student mask (SPEC §3) of a micro-batch: the host path and the Triton kernel.

``setup_mask`` draws the masks of synthetic reflection samples once (host, ``draw_masks``);
the providers then apply them: ``host`` (``apply_masks_host``: vectorised torch/numpy on the
CPU; what training runs) and ``triton`` (``bench.mask_kernel.apply_reflection_mask`` on the
device: CUDA, or the CPU interpreter). Bytes moved (the kernel's own count): 20 per teacher
token read (id, label, key), 32 per student token written (gather index, id, position, label).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.providers.common import synchronize
from reflectioncoder.data.config import MaskConfig
from reflectioncoder.data.masking import apply_masks_host, draw_masks
from reflectioncoder.testing.synthetic import synthetic_samples

PROVIDERS = ("host", "triton")


def setup_mask(n_samples: int, rate: float, seed: int = 0, device: str = "cpu") -> dict:
    """Masks of ``n_samples`` synthetic samples at rate ``rate`` (block_mask, tce order)."""
    samples = synthetic_samples(n_samples, vocab_size=32000, seed=seed)
    total = 1000
    step = max(round(rate * total) - 1, 0)
    plan = draw_masks(samples, step, total, MaskConfig(strategies=("block_mask",)), seed)
    ids = torch.cat([s.ids for s in samples])
    labels = torch.cat([s.student_labels for s in samples])
    out_offsets = torch.zeros(len(plan.student_lens) + 1, dtype=torch.int64)
    out_offsets[1:] = torch.tensor(plan.student_lens, dtype=torch.int64).cumsum(0)
    on = lambda t: t.to(device)  # noqa: E731
    kernel_args = (
        on(ids),
        on(labels),
        on(plan.keys),
        on(plan.offsets),
        on(plan.starts),
        on(plan.ends),
        on(plan.thresholds),
        on(out_offsets),
        sum(plan.student_lens),
    )
    return dict(plan=plan, ids=ids, labels=labels, kernel_args=kernel_args, device=device)


def bytes_moved(x: dict) -> int:
    return 20 * x["ids"].numel() + 32 * sum(x["plan"].student_lens)


def make_mask_fn(provider: str, x: dict) -> Callable[[], object]:
    """A callable applying the masks with ``provider`` (synchronised)."""
    if provider == "host":
        return lambda: apply_masks_host(x["plan"], x["ids"], x["labels"])
    if provider == "triton":
        from bench.mask_kernel import apply_reflection_mask

        def triton_mask():
            out = apply_reflection_mask(*x["kernel_args"])
            synchronize(x["device"])
            return out

        return triton_mask
    raise ValueError(f"provider: expected one of {PROVIDERS}, got {provider!r}")
