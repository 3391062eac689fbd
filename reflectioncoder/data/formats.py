"""The dataset formats users download, and their conversion into ReflectionSeq rows (SPEC §1).

- ``reflectionseq``: ``{"messages": [{"role", "content": [blocks]}], "type"}``, taken as it is
  (the authors train on SenseLLM/ReflectionSeq-GPT and -DS unchanged).
- ``codefeedback``: m-a-p/CodeFeedback-Filtered-Instruction rows (``query``, ``answer``, ...),
  converted exactly as the authors' ``src/data/download.py`` (SenseLLM/ReflectionCoder @
  6b6e2d4, ``process``) does: see :func:`from_codefeedback`.
- ``openai``: ``{"messages": [{"role", "content": str}]}`` (chat-completion style).
- ``sharegpt``: ``{"conversations": [{"from": "human" | "gpt" | ..., "value": str}]}``.

A converted row is a ``type: generation`` sample unless it already was ReflectionSeq. A row that
cannot be converted raises :class:`DataError` naming the field.
"""

from __future__ import annotations

import html

from reflectioncoder.data.schema import DataError, json_kind

FORMATS = ("reflectionseq", "codefeedback", "openai", "sharegpt")

# ShareGPT speakers seen in the wild, by the role they play.
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}
_OPENAI_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


def detect_format(row: object) -> str | None:
    """The format a row is in, from its keys (None when it is none of FORMATS)."""
    if not isinstance(row, dict):
        return None
    # one of a format's keys is enough: a row missing the other is that format's bad row
    # ("answer: expected a string, missing"), not a row of no known format
    if "query" in row or "answer" in row:
        return "codefeedback"
    if "conversations" in row:
        return "sharegpt"
    if "messages" not in row:
        return None
    messages = row["messages"]
    first = messages[0] if isinstance(messages, list) and messages else None
    content = first.get("content") if isinstance(first, dict) else None
    if isinstance(content, list) and all(isinstance(b, dict) and "content" in b for b in content):
        return "reflectionseq"
    return "openai"


def _string(row: dict, key: str, source: str, field: str | None = None) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        got = "missing" if key not in row else f"got {json_kind(value)}"
        raise DataError(source, field or key, f"expected a string, {got}")
    return value


def _text_message(role: str, text: str) -> dict:
    return {"role": role, "content": [{"type": "text", "content": text}]}


def from_codefeedback(row: dict, source: str = "<row>") -> dict:
    """The authors' conversion, byte for byte: ``html.unescape`` of the query; of the answer
    ``html.unescape``, then ``\\r\\n`` -> ``\\n``, tab -> four spaces, ``strip()``; the query
    is otherwise left as it is. Only ``messages`` and ``type`` are kept (their
    ``remove_columns``)."""
    query = html.unescape(_string(row, "query", source))
    answer = _string(row, "answer", source)
    answer = html.unescape(answer).replace("\r\n", "\n").replace("\t", "    ").strip()
    return {
        "messages": [_text_message("user", query), _text_message("assistant", answer)],
        "type": "generation",
    }


def _chat(turns: list[tuple[str, str]], source: str, field: str) -> dict:
    """(role, text) turns -> a generation sample. System text goes in front of the first user
    turn (SPEC has no system role); consecutive turns of one role stay separate messages."""
    system = [text for role, text in turns if role == "system"]
    turns = [(role, text) for role, text in turns if role != "system"]
    if system and turns and turns[0][0] == "user":
        turns[0] = ("user", "\n\n".join([*system, turns[0][1]]))
    elif system:
        turns.insert(0, ("user", "\n\n".join(system)))
    if not turns or turns[-1][0] != "assistant":
        raise DataError(source, field, "missing final answer (last turn must be the assistant's)")
    return {"messages": [_text_message(r, t) for r, t in turns], "type": "generation"}


def _openai_content(content: object, source: str, field: str) -> str:
    """A string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise DataError(source, field, "expected a string (or a list of text parts)")


def from_openai(row: dict, source: str = "<row>") -> dict:
    """OpenAI-style ``messages`` with string contents -> a generation sample, text unchanged."""
    messages = row.get("messages")
    if not isinstance(messages, list):
        raise DataError(source, "messages", "expected a list of {role, content}")
    turns = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in _OPENAI_ROLES:
            raise DataError(source, f"messages[{i}].role", f"unknown role {role!r}")
        text = _openai_content(m.get("content"), source, f"messages[{i}].content")
        turns.append((_OPENAI_ROLES[role], text))
    return _chat(turns, source, "messages")


def from_sharegpt(row: dict, source: str = "<row>") -> dict:
    """ShareGPT ``conversations`` (``from`` / ``value``) -> a generation sample."""
    conversation = row.get("conversations")
    if not isinstance(conversation, list):
        raise DataError(source, "conversations", "expected a list of {from, value}")
    turns = []
    for i, m in enumerate(conversation):
        speaker = m.get("from") if isinstance(m, dict) else None
        role = _SHAREGPT_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise DataError(source, f"conversations[{i}].from", f"unknown speaker {speaker!r}")
        turns.append((role, _string(m, "value", source, f"conversations[{i}].value")))
    return _chat(turns, source, "conversations")


def convert_row(row: object, fmt: str | None, source: str) -> tuple[str, dict]:
    """(format, ReflectionSeq row) for one input row; ``fmt`` None: detected from its keys."""
    found = detect_format(row)
    fmt = fmt or found
    if fmt is None:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise DataError(source, "<row>", f"unknown format (keys {keys}); choose --format")
    if not isinstance(row, dict):
        raise DataError(source, "<row>", f"expected a JSON object, got {type(row).__name__}")
    if fmt == "reflectionseq":
        return fmt, row
    convert = {"codefeedback": from_codefeedback, "openai": from_openai, "sharegpt": from_sharegpt}
    return fmt, convert[fmt](row, source)
