"""pass@k straight from its definition (Chen et al. 2021): the probability that at least one of
k samples drawn without replacement from n, of which c are correct, is correct. Exact."""

from __future__ import annotations

from fractions import Fraction
from math import comb


def pass_at_k(n: int, c: int, k: int) -> Fraction:
    """1 - C(n - c, k) / C(n, k), as an exact fraction (C(m, k) = 0 when m < k)."""
    return 1 - Fraction(comb(n - c, k), comb(n, k))
