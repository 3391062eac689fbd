"""Untrusted text made safe to print: the one home of the escaping.

Model-written code, a program's stdout/stderr and a dataset's fields may hold terminal escape
codes (``ESC [2J`` clears the screen, ``ESC ] 0;...BEL`` retitles it, ``ESC ] 52`` writes the
clipboard), carriage returns and backspaces that overwrite what was printed before them,
bidirectional overrides that show text in another order than it is, and lone surrogates that
stop a print with UnicodeEncodeError. Every such character is shown as its Python escape
(``\\x1b``, ``\\r``, ``\\u202e``): the line says what the text holds and the terminal does
nothing it says. Letters of any script, punctuation and spaces are kept as they are.
"""

from __future__ import annotations

_KEPT_IN_BLOCKS = "\n\t"  # a block of code or output (printable(..., lines=True)) keeps its layout


def printable(text: object, *, lines: bool = False) -> str:
    """``text`` (``str()`` of it) with every non-printable character escaped; ``lines``: keep
    newlines and tabs (a multi-line block such as a completion), escape the rest."""
    text = str(text)
    if text.isprintable():  # the common case, at C speed
        return text
    kept = _KEPT_IN_BLOCKS if lines else ""
    return "".join(c if c.isprintable() or c in kept else _escape(c) for c in text)


def _escape(char: str) -> str:
    # repr escapes exactly the non-printable characters: \x1b, \r, \u202e, \udc80, \U000e0001
    return repr(char)[1:-1]
