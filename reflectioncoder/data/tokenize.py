"""Serialisation and tokenisation of ReflectionSeq samples (SPEC §1-2).

ids = [BOS] + tokenize(text, no special tokens added) + [EOS], the whole text in ONE call;
teacher labels, student (distillation) labels and the reflection body's blocks follow from the
ids by one left-to-right scan over the special-token ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# The seven special tokens of SPEC §1, in this order.
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
TEXT = "<|text|>"
CODE = "<|code|>"
EXECUTION = "<|execution|>"
END_OF_BLOCK = "<|endofblock|>"
END_OF_MESSAGE = "<|endofmessage|>"
SPECIAL_TOKENS: tuple[str, ...] = (
    USER,
    ASSISTANT,
    TEXT,
    CODE,
    EXECUTION,
    END_OF_BLOCK,
    END_OF_MESSAGE,
)
ROLE_TOKENS = {"user": USER, "assistant": ASSISTANT}
BLOCK_TOKENS = {"text": TEXT, "code": CODE, "execution": EXECUTION}
IGNORE = -100


def add_special_tokens(tokenizer) -> dict[str, list[int]]:
    """Add the seven SPEC special tokens to ``tokenizer`` (in place).

    Returns, for each special-token string, the ORIGINAL tokenizer's split of it
    (``tokenizer.encode(s, add_special_tokens=False)`` recorded BEFORE adding), from which the
    model mean-initialises the new embedding rows. Idempotent: a token the tokenizer already
    holds is left as is and maps to its own single id (so mean-initialisation copies its row).
    """
    from tokenizers import AddedToken

    if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "add_tokens"):
        raise ValueError(f"tokenizer: expected a Hugging Face tokenizer, got {type(tokenizer)}")
    vocab = tokenizer.get_vocab()
    splits = {s: list(tokenizer.encode(s, add_special_tokens=False)) for s in SPECIAL_TOKENS}
    missing = [s for s in SPECIAL_TOKENS if s not in vocab]
    if missing:
        tokenizer.add_tokens(
            [AddedToken(s, special=True, normalized=False) for s in missing],
            special_tokens=True,
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

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_label_tokens(self) -> int:
        """Teacher + student label tokens (the CE count of SPEC §2)."""
        return int((self.labels != IGNORE).sum()) + int((self.student_labels != IGNORE).sum())

    @property
    def num_kl_rows(self) -> int:
        """Rows of the KL term: positions where the student label is not IGNORE."""
        return int((self.student_labels != IGNORE).sum())
