"""Plain reference of SPEC §1-2: serialisation, teacher labels, student labels (per token)."""

from __future__ import annotations

IGNORE = -100
SPECIALS = [
    "<|user|>",
    "<|assistant|>",
    "<|text|>",
    "<|code|>",
    "<|execution|>",
    "<|endofblock|>",
    "<|endofmessage|>",
]


def serialise_ref(sample: dict) -> str:
    """text = for each message: ROLE + (TYPE + content + <|endofblock|>)* + <|endofmessage|>."""
    text = ""
    for m in sample["messages"]:
        text += "<|" + m["role"] + "|>"
        for b in m["content"]:
            text += "<|" + b["type"] + "|>" + b["content"] + "<|endofblock|>"
        text += "<|endofmessage|>"
    return text


def ids_ref(sample: dict, tokenizer) -> list[int]:
    """[BOS] + tokenize(text, no special tokens) + [EOS]."""
    body = tokenizer.encode(serialise_ref(sample), add_special_tokens=False)
    return [tokenizer.bos_token_id] + list(body) + [tokenizer.eos_token_id]


def teacher_labels_ref(ids: list[int], sp: dict[str, int]) -> list[int]:
    """labels = ids; IGNORE: position 0, <|user|> .. <|endofmessage|>, and
    <|execution|> .. <|endofblock|> (a span with no closing token runs to the end)."""
    labels = list(ids)
    labels[0] = IGNORE
    p = 0
    while p < len(ids):
        if ids[p] == sp["<|user|>"]:
            close = sp["<|endofmessage|>"]
        elif ids[p] == sp["<|execution|>"]:
            close = sp["<|endofblock|>"]
        else:
            p += 1
            continue
        q = p
        while q < len(ids):
            labels[q] = IGNORE
            if ids[q] == close:
                break
            q += 1
        p = q + 1
    return labels


def student_labels_ref(ids: list[int], sp: dict[str, int]) -> list[int]:
    """IGNORE except positions a .. L-2 (a = LAST <|assistant|>), which keep ids[p]."""
    a = max(i for i, t in enumerate(ids) if t == sp["<|assistant|>"])
    return [ids[p] if a <= p <= len(ids) - 2 else IGNORE for p in range(len(ids))]
