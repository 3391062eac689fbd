"""Plain checks of a ReflectionSeq sample's structure, written straight from SPEC §1.

A reflection sample: 4 messages (user, assistant, user, assistant); message 1 and 3 the same
instruction; message 2 the reflection sequence of text / code / execution blocks; message 4
the one-off answer. A generation sample: user then assistant. No content holds one of the seven
special-token strings.
"""

from __future__ import annotations

from reference.serialise import SPECIALS  # the seven special-token strings (SPEC §1)


def structure_errors(sample: dict) -> list[str]:
    """Every way ``sample`` breaks SPEC §1 (empty list: it is well formed)."""
    errors = []
    messages = sample.get("messages")
    if not isinstance(messages, list):
        return ["messages: not a list"]
    for m, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            errors.append(f"messages[{m}].role: {message.get('role')!r}")
        for b, block in enumerate(message.get("content", [])):
            if block.get("type") not in ("text", "code", "execution"):
                errors.append(f"messages[{m}].content[{b}].type: {block.get('type')!r}")
            if not isinstance(block.get("content"), str):
                errors.append(f"messages[{m}].content[{b}].content: not a string")
            elif any(s in block["content"] for s in SPECIALS):
                errors.append(f"messages[{m}].content[{b}].content: holds a special token")
    roles = [message.get("role") for message in messages]
    if sample.get("type") == "generation":
        if roles != ["user", "assistant"]:
            errors.append(f"generation roles: {roles}")
    else:
        if roles != ["user", "assistant", "user", "assistant"]:
            errors.append(f"reflection roles: {roles}")
        elif messages[0]["content"] != messages[2]["content"]:
            errors.append("messages[2]: not the instruction again")
    return errors
