"""Serialisation and tokenisation of ReflectionSeq samples (SPEC §1-2).

ids = [BOS] + tokenize(text, no special tokens added) + [EOS], the whole text in ONE call;
teacher labels, student (distillation) labels and the reflection body's blocks follow from the
ids by one left-to-right scan over the special-token ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

# The seven special tokens of SPEC §1 (defined without torch, for data preparation).
from reflectioncoder.data.special import (
    ASSISTANT,
    BLOCK_TOKENS,
    CODE,
    END_OF_BLOCK,
    END_OF_MESSAGE,
    EXECUTION,
    ROLE_TOKENS,
    SPECIAL_TOKENS,
    TEXT,
    USER,
)

if TYPE_CHECKING:
    from reflectioncoder.data.schema import Sample

IGNORE = -100


def add_special_tokens(tokenizer) -> dict[str, list[int]]:
    """Add the seven SPEC special tokens to ``tokenizer`` (in place), as the reference does:
    registered as the tokenizer's extra special tokens (``all_special_tokens``, the saved
    ``tokenizer_config.json``, ``skip_special_tokens``), never split, never normalised.

    Returns, for each special-token string, the ORIGINAL tokenizer's split of it
    (``tokenizer.encode(s, add_special_tokens=False)`` recorded BEFORE adding), from which the
    model mean-initialises the new embedding rows. Idempotent: a token the tokenizer already
    holds keeps its id and maps to it alone (so mean-initialisation copies its row).
    """
    from tokenizers import AddedToken

    if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "add_special_tokens"):
        raise ValueError(f"tokenizer: expected a Hugging Face tokenizer, got {type(tokenizer)}")
    vocab = tokenizer.get_vocab()
    splits = {s: list(tokenizer.encode(s, add_special_tokens=False)) for s in SPECIAL_TOKENS}
    unregistered = [s for s in SPECIAL_TOKENS if s not in tokenizer.all_special_tokens]
    if unregistered:
        tokens = [AddedToken(s, special=True, normalized=False) for s in unregistered]
        tokenizer.add_special_tokens(
            {"extra_special_tokens": tokens},
            replace_extra_special_tokens=False,  # a tokenizer's own extra tokens stay special
        )
    ids = special_token_ids(tokenizer)
    for s in SPECIAL_TOKENS:
        if s in vocab:
            splits[s] = [ids[s]]
    return splits


def special_token_ids(tokenizer) -> dict[str, int]:
    """The id of each of the seven special tokens; ValueError if the tokenizer lacks one."""
    vocab = tokenizer.get_vocab()
    missing = [s for s in SPECIAL_TOKENS if s not in vocab]
    if missing:
        raise ValueError(
            f"tokenizer: lacks special tokens {missing}; call add_special_tokens(tokenizer) first"
        )
    return {s: int(vocab[s]) for s in SPECIAL_TOKENS}


@dataclass
class TokenizedSample:
    """One sample after SPEC §1-2, ready for masking and packing.

    ids, labels, student_labels: (L,) int64 tensors on the CPU. ``labels`` are the teacher
    labels (unshifted; IGNORE = -100), ``student_labels`` the distillation labels (all IGNORE
    for generation samples). For reflection samples ``[body_start, body_end)`` is the
    reflection body (SPEC §3: after the first ``<|assistant|>``, up to the first
    ``<|endofmessage|>``) and ``blocks`` its blocks as ``(start, end, type)`` with ``end``
    exclusive (one past the block's ``<|endofblock|>``) and type in text/code/execution;
    ``answer_start`` is the index of the LAST ``<|assistant|>`` (a in SPEC §2).
    Generation samples have body_start = body_end = answer_start = 0 and no blocks.
    ``source`` is "file:line"; ``uid`` identifies the sample (with its upsampling copy) for
    deterministic mask draws.
    """

    ids: torch.Tensor
    labels: torch.Tensor
    student_labels: torch.Tensor
    is_reflection: bool
    body_start: int = 0
    body_end: int = 0
    answer_start: int = 0
    blocks: list[tuple[int, int, str]] = field(default_factory=list)
    source: str = ""
    uid: int = 0

    def token_sha256(self) -> str:
        """The sha256 of the token ids: what resume and held-out checks compare a sample by."""
        return hashlib.sha256(self.ids.numpy().tobytes()).hexdigest()

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_label_tokens(self) -> int:
        """Teacher + student label tokens (the CE count of SPEC §2); position 0 is never a
        target (no row predicts it)."""
        return int((self.labels[1:] != IGNORE).sum()) + int(
            (self.student_labels[1:] != IGNORE).sum()
        )

    @property
    def num_kl_rows(self) -> int:
        """Rows of the KL term: positions where the student label is not IGNORE."""
        return int((self.student_labels != IGNORE).sum())


def serialise(sample: Sample) -> str:
    """SPEC §1: ROLE + (TYPE + content + <|endofblock|>)* + <|endofmessage|> per message."""
    parts = []
    for message in sample.messages:
        parts.append(ROLE_TOKENS[message.role])
        for block in message.blocks:
            parts.append(BLOCK_TOKENS[block.type])
            parts.append(block.content)
            parts.append(END_OF_BLOCK)
        parts.append(END_OF_MESSAGE)
    return "".join(parts)


def encode_text(tokenizer, text: str) -> list[int]:
    """[BOS] + tokenize(text, no special tokens added) + [EOS], the whole text in one call. A
    tokenizer with no BOS token (Qwen2's) starts at the first role token, as its evaluation
    prompt does (``eval.prompts.bos_text``); position 0 is never a target either way."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer: needs an eos_token (it ends every sequence)")
    start = [] if bos is None else [int(bos)]
    return [*start, *tokenizer.encode(text, add_special_tokens=False), int(eos)]


def build_sample(
    ids: Sequence[int] | np.ndarray,
    special: dict[str, int],
    is_reflection: bool,
    source: str = "",
    uid: int = 0,
) -> TokenizedSample:
    """Teacher labels, student labels, body and blocks of a sample from its ids (SPEC §1-3).

    Scans only the special-token positions (no per-token Python loop).
    """
    ids_np = np.asarray(ids, dtype=np.int64)
    length = int(ids_np.shape[0])
    specials = np.asarray(list(special.values()), dtype=np.int64)
    where = np.nonzero(np.isin(ids_np, specials))[0].tolist()
    toks = ids_np[where].tolist()
    labels = _teacher_labels(ids_np, where, toks, special)
    student = np.full(length, IGNORE, dtype=np.int64)
    body_start = body_end = answer_start = 0
    blocks: list[tuple[int, int, str]] = []
    if is_reflection:
        assistants = [p for p, t in zip(where, toks, strict=True) if t == special[ASSISTANT]]
        if not assistants:
            raise ValueError(f"{source}: reflection sample without <|assistant|> token")
        answer_start = assistants[-1]
        # Student labels: positions a .. L-2 keep ids[p]; the final EOS stays IGNORE (quirk).
        student[answer_start : length - 1] = ids_np[answer_start : length - 1]
        body_start = assistants[0] + 1
        eom = special[END_OF_MESSAGE]
        ends = [p for p, t in zip(where, toks, strict=True) if t == eom and p >= body_start]
        body_end = ends[0] if ends else length
        blocks = _body_blocks(where, toks, special, body_start, body_end)
    return TokenizedSample(
        ids=torch.from_numpy(ids_np),
        labels=torch.from_numpy(labels),
        student_labels=torch.from_numpy(student),
        is_reflection=is_reflection,
        body_start=body_start,
        body_end=body_end,
        answer_start=answer_start,
        blocks=blocks,
        source=source,
        uid=uid,
    )


def _teacher_labels(
    ids: np.ndarray, where: list[int], toks: list[int], special: dict[str, int]
) -> np.ndarray:
    """The ids, less BOS, user messages and executions (``where``/``toks``: the special
    tokens' positions and ids); one left-to-right pass, a span with no closing token runs to
    the end."""
    labels = ids.copy()
    if len(labels):
        labels[0] = IGNORE  # BOS
    user, exe = special[USER], special[EXECUTION]
    closing = None
    span_start = 0
    for p, tok in zip(where, toks, strict=True):
        if closing is None:
            if tok == user:
                closing, span_start = special[END_OF_MESSAGE], p
            elif tok == exe:
                closing, span_start = special[END_OF_BLOCK], p
        elif tok == closing:
            labels[span_start : p + 1] = IGNORE
            closing = None
    if closing is not None:
        labels[span_start:] = IGNORE
    return labels


def _body_blocks(
    where: list[int], toks: list[int], special: dict[str, int], body_start: int, body_end: int
) -> list[tuple[int, int, str]]:
    """(start, end, type) of each block of the reflection body; an unclosed block runs to the
    body's end."""
    type_of = {special[TEXT]: "text", special[CODE]: "code", special[EXECUTION]: "execution"}
    eob = special[END_OF_BLOCK]
    blocks = []
    open_at, open_type = -1, ""
    for p, tok in zip(where, toks, strict=True):
        if p < body_start or p >= body_end:
            continue
        if tok in type_of and open_at < 0:
            open_at, open_type = p, type_of[tok]
        elif tok == eob and open_at >= 0:
            blocks.append((open_at, p + 1, open_type))
            open_at = -1
    if open_at >= 0:
        blocks.append((open_at, body_end, open_type))
    return blocks
