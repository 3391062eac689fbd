"""Dealing an optimizer step's samples into every rank's micro-batches under the token budget,
balanced by tokens (``balance_groups``): every rank runs the same number of micro-batches with
nearly equal token counts."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence


def balance_groups(
    tokens: Sequence[int], world_size: int, max_tokens: int
) -> tuple[list[list[list[int]]], list[list[bool]]]:
    """Deal samples (``tokens[i]`` each) into ``world_size`` x m micro-batches under
    ``max_tokens``, m as small as fits, with nearly equal token counts: largest first into the
    lightest micro-batch, then moves and swaps out of the heaviest. A sample over the budget
    gets a micro-batch of its own. Micro-batches are dealt so that each rank's j-th ones are
    alike in size (ranks run them in lockstep under ZeRO-3). Returns (groups, padding)."""
    if world_size < 1:
        raise ValueError(f"world_size: must be >= 1, got {world_size}")
    m = max(1, math.ceil(sum(tokens) / (world_size * max_tokens)))
    while (bins := _fill(tokens, world_size * m, max_tokens)) is None:
        m += 1
    _even_out(bins, tokens, max_tokens)
    loads = [sum(tokens[i] for i in b) for b in bins]
    order = sorted(range(len(bins)), key=lambda b: (-loads[b], min(bins[b], default=-1)))
    groups: list[list[list[int]]] = [[] for _ in range(world_size)]
    for j in range(m):
        slot = order[j * world_size : (j + 1) * world_size]
        if j % 2:  # snake: the ranks' totals even out too
            slot = slot[::-1]
        for rank, b in enumerate(slot):
            groups[rank].append(sorted(bins[b]))
    # Too few samples for every slot: a zero-weight copy of the step's smallest sample.
    smallest = min(range(len(tokens)), key=lambda i: (tokens[i], i))
    padding = [[not g for g in rank] for rank in groups]
    groups = [[g or [smallest] for g in rank] for rank in groups]
    return groups, padding


def _fill(tokens: Sequence[int], n_bins: int, max_tokens: int) -> list[list[int]] | None:
    """Largest first into the lightest bin; None when it does not fit in ``n_bins``."""
    heap = [(0, b) for b in range(n_bins)]
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    for i in sorted(range(len(tokens)), key=lambda i: (-tokens[i], i)):
        load, b = heapq.heappop(heap)
        if load + tokens[i] > max_tokens and bins[b]:
            return None  # the lightest bin is full, so every bin is
        bins[b].append(i)
        heapq.heappush(heap, (load + tokens[i], b))
    return bins


def _even_out(bins: list[list[int]], tokens: Sequence[int], max_tokens: int) -> None:
    """Lower the heaviest bin by a move or a swap with a lighter one, while one helps."""
    loads = [sum(tokens[i] for i in b) for b in bins]
    for _ in range(4 * sum(len(b) for b in bins)):
        top = max(range(len(bins)), key=loads.__getitem__)
        if not _improve(bins, loads, tokens, top, max_tokens):
            return


def _improve(bins, loads, tokens, top: int, max_tokens: int) -> bool:
    peak = loads[top]
    for other in sorted(range(len(bins)), key=loads.__getitem__):
        if loads[other] >= peak:
            return False
        for x in bins[top]:
            if (
                len(bins[top]) > 1
                and loads[other] + tokens[x] < peak
                and (loads[other] + tokens[x] <= max_tokens)
            ):
                bins[top].remove(x)
                bins[other].append(x)
                loads[top] -= tokens[x]
                loads[other] += tokens[x]
                return True
            for y in bins[other]:
                delta = tokens[x] - tokens[y]
                if 0 < delta and loads[other] + delta < peak and loads[other] + delta <= max_tokens:
                    bins[top][bins[top].index(x)] = y
                    bins[other][bins[other].index(y)] = x
                    loads[top] -= delta
                    loads[other] += delta
                    return True
    return False
