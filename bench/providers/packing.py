"""Packing one optimizer step (SPEC §4): ours against the reference recipe's padded batches.

``setup_packing`` makes a global batch of synthetic reflection samples (instruction 100-400,
reflection 300-2500, answer 100-600 tokens); ``pack_step`` plans one step of them
(``plan_step``: masks drawn once, micro-batches balanced) and packs it (``pack_rank``, host)
under a strategy at a mask rate. The reference recipe runs
2 x batch x padded_len tokens (``reference_tokens``).
"""

from __future__ import annotations

from reflectioncoder.data.config import MaskConfig, PackingConfig
from reflectioncoder.data.packing import PackedBatch, pack_rank, plan_step
from reflectioncoder.data.tokenize import TokenizedSample
from reflectioncoder.testing.synthetic import synthetic_samples

RATES = {0.0: (0, 0), 0.5: (49, 100), 1.0: (99, 100)}  # rate -> (step, total_steps)
STRATEGIES = {
    "block_mask/tce": MaskConfig(strategies=("block_mask",), block_order="tce"),
    "block_mask/etc": MaskConfig(strategies=("block_mask",), block_order="etc"),
    "random_token_mask": MaskConfig(strategies=("random_token_mask",)),
    "all_mask": MaskConfig(strategies=("all_mask",)),
}


def setup_packing(n: int, seed: int) -> list[TokenizedSample]:
    return synthetic_samples(n, vocab_size=32000, seed=seed)


def reference_tokens(lengths: list[int], batch: int, grouped: bool) -> int:
    """2 x batch x padded_len summed over the batches of ``batch`` samples (``grouped``: the
    data sorted by length first, the reference's best case)."""
    order = sorted(lengths) if grouped else lengths
    chunks = [order[i : i + batch] for i in range(0, len(order), batch)]
    return sum(2 * len(chunk) * max(chunk) for chunk in chunks)


def pack_step(
    samples: list[TokenizedSample], strategy: str, rate: float, max_tokens: int, seed: int
) -> list[PackedBatch]:
    """Plan and pack one optimizer step of ``samples`` at mask ``rate`` (host, one rank)."""
    step, total = RATES[rate]
    mask, pack = STRATEGIES[strategy], PackingConfig(max_tokens=max_tokens)
    return pack_rank(plan_step(samples, step, total, mask, pack, seed), 0, mask, pack)
