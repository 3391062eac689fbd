"""Synthetic reflection samples with realistic lengths, as TokenizedSample objects directly.

Random content ids, correct special-token structure (SPEC §1): instruction, a reflection of
text / code / execution blocks, the instruction again, the one-off answer. Used by tests and
benchmarks (packing, end-to-end) where a real tokenizer and data set are not needed.
"""

from __future__ import annotations

import numpy as np

from reflectioncoder.data.tokenize import SPECIAL_TOKENS, TokenizedSample, build_sample


def default_special_ids(vocab_size: int) -> dict[str, int]:
    """The seven special tokens as the last seven ids of the vocabulary."""
    return {s: vocab_size - len(SPECIAL_TOKENS) + i for i, s in enumerate(SPECIAL_TOKENS)}


def synthetic_samples(
    n: int,
    vocab_size: int = 32000,
    seed: int = 0,
    instruction: tuple[int, int] = (100, 400),
    reflection: tuple[int, int] = (300, 2500),
    answer: tuple[int, int] = (100, 600),
    block_len: tuple[int, int] = (1, 200),
    generation_fraction: float = 0.0,
    special: dict[str, int] | None = None,
    bos_id: int = 1,
    eos_id: int = 2,
    first_uid: int = 0,
) -> list[TokenizedSample]:
    """``n`` samples; lengths drawn uniformly from the (min, max) token ranges given.

    Content ids are drawn from [3, vocab_size - 7) (0..2 and the last seven ids are special).
    A reflection body is a run of text/code/execution blocks (text then code then execution,
    repeated, with random skips) filled until its drawn length; ``block_len`` bounds each
    block's content (0 allowed when the minimum is 0: empty blocks are valid).
    ``generation_fraction`` of the samples are generation samples (instruction, answer).
    Sample i gets uid ``first_uid + i`` (give several calls distinct ranges).
    """
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    if vocab_size < 16:
        raise ValueError(f"vocab_size: must be >= 16, got {vocab_size}")
    sp = special if special is not None else default_special_ids(vocab_size)
    lo_id, hi_id = 3, vocab_size - len(SPECIAL_TOKENS)
    rng = np.random.default_rng(seed)
    user, asst = sp["<|user|>"], sp["<|assistant|>"]
    eob, eom = sp["<|endofblock|>"], sp["<|endofmessage|>"]
    type_ids = [sp["<|text|>"], sp["<|code|>"], sp["<|execution|>"]]

    def draw(bounds: tuple[int, int]) -> int:
        return int(rng.integers(bounds[0], bounds[1] + 1))

    def content(k: int) -> list[int]:
        return rng.integers(lo_id, hi_id, size=k).tolist()

    def text_message(role: int, k: int) -> list[int]:
        return [role, type_ids[0], *content(k), eob, eom]

    out = []
    for i in range(n):
        instr = content(draw(instruction))
        if rng.random() < generation_fraction:
            ids = [bos_id, user, type_ids[0], *instr, eob, eom]
            ids += text_message(asst, draw(answer)) + [eos_id]
            out.append(build_sample(ids, sp, False, f"synthetic:{i}", uid=first_uid + i))
            continue
        target = draw(reflection)
        body: list[int] = []
        kind = 0
        while len(body) < target:
            k = min(draw(block_len), max(target - len(body) - 2, 0))
            body += [type_ids[kind], *content(k), eob]
            kind = (kind + 1 + int(rng.random() < 0.2)) % 3
        ids = [bos_id, user, type_ids[0], *instr, eob, eom, asst, *body, eom]
        ids += [user, type_ids[0], *instr, eob, eom]
        ids += text_message(asst, draw(answer)) + [eos_id]
        out.append(build_sample(ids, sp, True, f"synthetic:{i}", uid=first_uid + i))
    return out
