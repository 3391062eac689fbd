"""The held-out loss: which samples (``data.validation_files``, or ``data.validation_fraction``
of the training data) and the pass that measures them.

The pass is a training step without its backward: the same plan and packer (``plan_step``,
``rank_batches``) and the same loss module, called through the engine as the step calls it
(ZeRO-3 and FSDP gather as they do in training), with the model in eval mode under
``torch.no_grad()``, so the fused loss takes its loss-only forward (no d h, no d W, no buffers
for them). The samples' weights carry the whole held-out set's normalisation, so the sums over
every micro-batch and rank are the loss: one all-reduce, one host read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from reflectioncoder.config import RunConfig
from reflectioncoder.data.normalisation import step_counts
from reflectioncoder.data.packing import PackedBatch, plan_step, rank_batches
from reflectioncoder.data.tokenize import TokenizedSample
from reflectioncoder.errors import UserError
from reflectioncoder.train import distributed

log = logging.getLogger("reflectioncoder.train")

# The held-out draw's random stream: beside the data order's (seed, epoch) streams, never one.
HOLD_OUT_STREAM = 0x76616C
# Samples planned at once: balance_groups' cost grows faster than linearly in the samples, and
# the paper's optimizer step (512) is a size it is known to plan quickly.
PLAN_SAMPLES = 512


def hold_out(
    samples: list[TokenizedSample], fraction: float, seed: int
) -> tuple[list[TokenizedSample], list[TokenizedSample]]:
    """(training samples, held-out samples): ``fraction`` of the distinct samples, drawn by
    ``seed``. A sample is its file and line (``source``), so its upsampled copies are held out
    together and none of them is trained on; the draw is the same on every rank and run."""
    sources = list(dict.fromkeys(s.source for s in samples))
    n = round(fraction * len(sources))
    if not 0 < n < len(sources):
        raise UserError(
            f"{fraction} of {len(sources)} samples holds out {n}: at least 1 must be held out "
            "and 1 left to train on",
            field="data.validation_fraction",
        )
    rng = np.random.default_rng([seed, HOLD_OUT_STREAM])
    held = {sources[i] for i in rng.permutation(len(sources))[:n].tolist()}
    return [s for s in samples if s.source not in held], [s for s in samples if s.source in held]


def held_out_fingerprint(held: Sequence[TokenizedSample]) -> str:
    """The sha256 of the held-out samples' token ids (upsampled copies once, in no order): a
    resumed run must hold out what its checkpoint's run held out, or it may report a loss on
    samples the steps already trained on."""
    digests = sorted({s.token_sha256() for s in held})
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def also_trained(samples: Sequence[TokenizedSample], held: Sequence[TokenizedSample]) -> int:
    """How many held-out samples have the tokens of a training sample (a file given as both
    ``data.files`` and ``data.validation_files``, or a sample on two lines)."""
    trained = {s.token_sha256() for s in samples}
    return sum(s.token_sha256() in trained for s in held)


def load_validation_files(cfg: RunConfig, tokenizer: Any, is_main: bool) -> list[TokenizedSample]:
    """``data.validation_files``, loaded as ``data.files`` are (checked, tokenised, cached);
    a bad line stops the run naming its file, line and field."""
    from reflectioncoder.data.dataset import load_dataset

    data = dataclasses.replace(cfg.data, files=cfg.data.validation_files, upsample=None)
    samples, report = load_dataset(data, tokenizer, warn=is_main)
    if not samples:
        raise UserError("no usable samples (all bad or over max_len)",
                        field="data.validation_files")  # fmt: skip
    if is_main:
        log.info("validation data: %s", report.summary(cfg.data.max_len))
    return samples


def split_validation(
    samples: list[TokenizedSample],
    counts: dict[str, int],
    cfg: RunConfig,
    tokenizer: Any,
    is_main: bool,
) -> tuple[list[TokenizedSample], list[TokenizedSample]]:
    """(training samples, held-out samples): ``data.validation_fraction`` of the loaded
    ``samples``, or ``data.validation_files``, or none; counted in the data's ``counts``."""
    held: list[TokenizedSample] = []
    trained = samples
    if cfg.data.validation_fraction:
        fraction, seed = cfg.data.validation_fraction, cfg.train.seed
        trained, held = hold_out(samples, fraction, seed)
        counts["samples"] = len(trained)
        if is_main:
            log.info(
                "validation: %d of %d samples held out (data.validation_fraction), never "
                "trained on",
                len(held),
                len(samples),
            )
    elif cfg.data.validation_files:
        held = load_validation_files(cfg, tokenizer, is_main)
    if held:
        counts["validation"] = len(held)
    if held and is_main and (n := also_trained(trained, held)):
        log.warning(
            "validation: %d of %d held-out samples are also in the training data (the same "
            "tokens): their loss is not a held-out one",
            n,
            len(held),
        )
    return trained, held


def validation_batches(
    samples: Sequence[TokenizedSample], cfg: RunConfig, step: int, total_steps: int, rank: int,
    world_size: int,
) -> Iterator[PackedBatch]:  # fmt: skip
    """This rank's micro-batches of the held-out ``samples``, masked as optimizer step ``step``
    (0-based) masks, planned ``PLAN_SAMPLES`` at a time with the whole set's denominators (so
    the sums of every rank's batches are the set's loss). Every rank gets as many."""
    whole = step_counts(samples, cfg.mask)
    for start in range(0, len(samples), PLAN_SAMPLES):
        chunk = samples[start : start + PLAN_SAMPLES]
        plan = plan_step(
            chunk, step, total_steps, cfg.mask, cfg.packing, cfg.train.seed, world_size
        )
        plan = dataclasses.replace(plan, denominators=whole)
        yield from rank_batches(plan, rank, cfg.mask, cfg.packing)


def validation_loss(
    engine: Any, batches: Iterator[PackedBatch], device: torch.device
) -> dict[str, float]:
    """The held-out loss, CE and KL (sums of the weighted batches over every rank), with the
    samples and tokens they cover and the seconds taken: eval mode, no gradients, the engine's
    module called as the training step calls it; then back to train mode."""
    t0 = time.perf_counter()
    module = engine.module
    router_loss = getattr(module, "router_loss", None)  # a mixture of experts' balancing loss
    was_training = module.training
    module.eval()  # dropout off
    # loss, ce, kl, the balancing loss (device sums), then tokens and samples (host counts); all
    # summed over ranks
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    counts = [0, 0]
    try:
        with torch.no_grad():
            for batch in batches:
                counts[0] += batch.num_tokens
                counts[1] += batch.num_samples
                loss, ce, kl, _ = engine(batch.to(device, non_blocking=True))
                sums[:3] += torch.stack([loss, ce, kl]).double()
                if router_loss is not None:
                    sums[3] += module.aux_loss.double()
    finally:
        module.train(was_training)
    sums[4:] += torch.tensor(counts, dtype=torch.float64, device=device)
    loss, ce, kl, aux, tokens, samples = distributed.all_reduce_sum(sums).tolist()  # one read
    return {
        "val_loss": loss,
        "val_ce": ce,
        "val_kl": kl,
        **({"val_aux_loss": aux} if router_loss is not None else {}),
        "val_samples": int(samples),
        "val_tokens": int(tokens),
        "val_time": time.perf_counter() - t0,
    }
