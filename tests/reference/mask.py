"""Plain per-sample reference of SPEC §3 (the dynamic mask), one token at a time.

Random strategies take their draws as ``ranks``: a permutation of the body's tokens (or
blocks); item j is hidden when ranks[j] < ceil(n * r), i.e. ceil(n * r) items chosen uniformly.
"""

from __future__ import annotations

import math

IGNORE = -100
TYPE_LETTER = {"<|text|>": "t", "<|code|>": "c", "<|execution|>": "e"}


def rate_ref(step: int, total_steps: int) -> float:
    if total_steps == 0:
        return 0.0
    return min((step + 1) / total_steps, 1.0)


def body_ref(ids: list[int], sp: dict[str, int]) -> tuple[int, int]:
    """start = first <|assistant|> + 1; end = first <|endofmessage|> at or after start."""
    first = ids.index(sp["<|assistant|>"])
    start = first + 1
    end = start
    while end < len(ids) and ids[end] != sp["<|endofmessage|>"]:
        end += 1
    return start, end


def blocks_ref(ids: list[int], sp: dict[str, int], start: int, end: int) -> list[tuple]:
    """(first, last inclusive, letter) of each block: its type token to its <|endofblock|>."""
    letter_of = {sp[k]: v for k, v in TYPE_LETTER.items()}
    blocks, open_at, letter = [], None, None
    for p in range(start, end):
        if open_at is None and ids[p] in letter_of:
            open_at, letter = p, letter_of[ids[p]]
        elif open_at is not None and ids[p] == sp["<|endofblock|>"]:
            blocks.append((open_at, p, letter))
            open_at = None
    if open_at is not None:
        blocks.append((open_at, end - 1, letter))
    return blocks


def visible_ref(
    ids: list[int],
    sp: dict[str, int],
    strategy: str | None,
    rate: float,
    block_order: str = "tce",
    ranks: list[int] | None = None,
) -> list[bool]:
    """Which positions the student sees (SPEC §3). strategy None: distillation on, no strategy."""
    if strategy is None:
        return [True] * len(ids)
    start, end = body_ref(ids, sp)
    visible = [True] * len(ids)
    for p in range(len(ids)):
        if p < start or p == end:
            visible[p] = False
    body = list(range(start, end))
    blocks = blocks_ref(ids, sp, start, end)
    hidden: set[int] = set()
    if strategy == "all_mask":
        hidden = set(body)
    elif strategy == "random_token_mask":
        k = math.ceil(len(body) * rate)
        hidden = {body[j] for j in range(len(body)) if ranks[j] < k}
    elif strategy == "sequential_token_mask":
        k = math.ceil(len(body) * rate)
        hidden = set(body[:k])
    elif strategy in ("random_block_mask", "sequential_block_mask"):
        k = math.ceil(len(blocks) * rate)
        for j, (first, last, _) in enumerate(blocks):
            chosen = ranks[j] < k if strategy == "random_block_mask" else j < k
            if chosen:
                hidden.update(range(first, last + 1))
    elif strategy == "block_mask":
        types = [block_order[0]]
        if rate >= 0.33:
            types.append(block_order[1])
        if rate >= 0.67:
            types.append(block_order[2])
        for first, last, letter in blocks:
            if letter in types:
                hidden.update(range(first, last + 1))
    else:
        raise ValueError(strategy)
    for p in hidden:
        visible[p] = False
    return visible


def student_ref(ids: list[int], student_labels: list[int], visible: list[bool]):
    """(positions, ids, labels) of the student: the visible tokens, original positions."""
    pos = [p for p in range(len(ids)) if visible[p]]
    return pos, [ids[p] for p in pos], [student_labels[p] for p in pos]


def visible_drawn(ids, sp, strategies, block_order: str, rate: float, rng) -> list[bool]:
    """visible_ref with the draws taken from ``rng`` in the documented order: the strategy
    (uniform index into ``strategies``), then the permutation of a random strategy."""
    strategy = strategies[int(rng.integers(len(strategies)))] if strategies else None
    start, end = body_ref(ids, sp)
    ranks = None
    if strategy == "random_token_mask":
        ranks = rng.permutation(end - start).tolist()
    elif strategy == "random_block_mask":
        ranks = rng.permutation(len(blocks_ref(ids, sp, start, end))).tolist()
    return visible_ref(ids, sp, strategy, rate, block_order, ranks)
