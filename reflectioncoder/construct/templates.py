"""A template problem family's record (``Template``) and the seeded random inputs its
reference solution is run on (``construct/problems.py`` renders each template into a
``Problem``; the families: ``families_numbers.py``, ``families_sequences.py``)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    """One parameterised problem: its reference solution's signature, body and docstring, and
    a draw of one argument tuple for its tests."""

    family: str
    name: str
    signature: str  # "(nums: list[int]) -> int"
    doc: str  # one sentence
    body: str  # the function body (any indentation: dedented)
    inputs: Callable[[random.Random], tuple]  # one random argument tuple


# Random inputs, one argument each, from a seeded ``random.Random``.


def random_ints(rng: random.Random, lo: int = -6, hi: int = 15, max_len: int = 7) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(0, max_len))]


def random_nonempty_ints(rng: random.Random) -> list[int]:
    return [rng.randint(-6, 15) for _ in range(rng.randint(1, 7))]


WORDS = (
    "apple banana cherry stone level radar river orange tiger table noon kayak sun moon star "
    "code test loop list python data alpha omega stats civic"
).split()


def random_maybe_sorted(rng: random.Random) -> list[int]:
    nums = random_ints(rng, max_len=5)
    return sorted(nums) if rng.random() < 0.5 else nums


def random_word(rng: random.Random) -> str:
    return rng.choice(WORDS)


def random_sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 5)))


def random_text(rng: random.Random) -> str:
    word = random_word(rng)
    return word if rng.random() < 0.5 else word[::-1] if rng.random() < 0.5 else word + word[::-1]
