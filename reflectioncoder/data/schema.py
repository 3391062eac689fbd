"""Loading and validating ReflectionSeq jsonl files (SPEC §1).

Every error names ``file:line:field``. By default loading stops at the first bad sample
(``DataError``); with ``skip_bad=True`` bad samples are skipped and listed in the report.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reflectioncoder.data.special import BLOCK_TOKENS, ROLE_TOKENS, SPECIAL_TOKENS
from reflectioncoder.errors import lone_surrogate, not_utf8


class DataError(ValueError):
    """A bad sample; the message starts with ``file:line:field``."""

    def __init__(self, source: str, field_path: str, reason: str) -> None:
        self.source = source
        self.field = field_path
        self.reason = reason
        super().__init__(f"{source}:{field_path}: {reason}")


@dataclass
class Block:
    """One block of a message: type in text/code/execution, content (may be empty)."""

    type: str
    content: str


@dataclass
class Message:
    role: str  # user | assistant
    blocks: list[Block]


@dataclass
class Sample:
    """One validated sample: ``type`` as in the file, its messages, and ``source`` (file:line)."""

    type: str
    messages: list[Message]
    source: str

    @property
    def is_reflection(self) -> bool:
        return self.type != "generation"


@dataclass
class LoadReport:
    """What loading saw: samples read per file (before upsampling) and skipped bad lines."""

    loaded: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:line:field: reason"
    per_file: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"loaded {self.loaded} samples"
        if self.skipped:
            shown = "; ".join(self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
            text += f", skipped {len(self.skipped)} bad: {shown}"
        return text


def _convert_hint(obj: dict, source: str) -> str:
    """Where a row is in a format prepare-data converts (CodeFeedback, ShareGPT, OpenAI
    messages), say so: the user gave a downloaded file as it came."""
    from reflectioncoder.data.formats import detect_format  # (formats imports this module)

    kind = detect_format(obj)
    if kind in (None, "reflectionseq"):
        return ""
    file = source.rsplit(":", 1)[0]
    return (
        f"; this is the {kind} format: convert the file with "
        f"`reflectioncoder prepare-data --in {file} --out FILE.jsonl`"
    )


def parse_sample(obj: object, source: str) -> Sample:
    """Validate one decoded JSON object (SPEC §1); raise DataError naming the field."""
    if not isinstance(obj, dict):
        raise DataError(source, "<sample>", f"expected a JSON object, got {type(obj).__name__}")
    for key in ("type", "messages"):
        if key not in obj:
            keys = ", ".join(obj) or "none"
            raise DataError(
                source, key, f"missing (the sample's keys: {keys}){_convert_hint(obj, source)}"
            )
    kind = obj["type"]
    if not isinstance(kind, str):
        raise DataError(source, "type", f"expected a string, got {kind!r}")
    raw_messages = obj["messages"]
    if not isinstance(raw_messages, list):
        raise DataError(source, "messages", f"expected a list, got {json_kind(raw_messages)}")
    messages = [_parse_message(raw, f"messages[{m}]", source) for m, raw in enumerate(raw_messages)]
    _check_roles(kind, [m.role for m in messages], source)
    return Sample(kind, messages, source)


def _parse_message(raw: object, where: str, source: str) -> Message:
    if not isinstance(raw, dict):
        raise DataError(source, where, "expected an object with role and content")
    role = raw.get("role")
    if "role" not in raw:
        raise DataError(source, f"{where}.role", "missing (user | assistant)")
    if not isinstance(role, str) or role not in ROLE_TOKENS:  # a list is unhashable
        shown = repr(role) if isinstance(role, str) else json_kind(role)
        raise DataError(source, f"{where}.role", f"unknown role {shown} (user | assistant)")
    content = raw.get("content")
    if not isinstance(content, list):
        got = f"expected a list of blocks, got {json_kind(content)}"
        raise DataError(source, f"{where}.content", got if "content" in raw else "missing")
    blocks = [_parse_block(b, f"{where}.content[{i}]", source) for i, b in enumerate(content)]
    return Message(role, blocks)


def _parse_block(raw: object, where: str, source: str) -> Block:
    if not isinstance(raw, dict):
        raise DataError(source, where, "expected an object with type and content")
    btype = raw.get("type")
    if not isinstance(btype, str) or btype not in BLOCK_TOKENS:
        shown = repr(btype) if isinstance(btype, str) else json_kind(btype)
        what = "missing" if "type" not in raw else f"unknown block type {shown}"
        raise DataError(source, f"{where}.type", f"{what} (text|code|execution)")
    text = raw.get("content")
    if not isinstance(text, str):
        got = f"expected a string, got {json_kind(text)}" if "content" in raw else "missing"
        raise DataError(source, f"{where}.content", got)
    for special in SPECIAL_TOKENS:
        if special in text:
            raise DataError(
                source, f"{where}.content", f"contains the special-token string {special!r}"
            )
    _check_encodable(text, source, f"{where}.content")
    return Block(btype, text)


def json_kind(value: object) -> str:
    """A JSON value as the file spells it (null, 5, true); a string, list or object by its kind
    (a parquet file's other values by their type's name)."""
    kinds = {str: "a string", list: "a list", dict: "an object"}
    try:
        return kinds.get(type(value)) or json.dumps(value)
    except (TypeError, ValueError):
        return type(value).__name__


def _check_encodable(text: str, source: str, where: str) -> None:
    """A lone surrogate is a bad field here, not a TypeError from the tokenizer later."""
    problem = lone_surrogate(text)
    if problem is not None:
        raise DataError(source, where, problem)


def _check_roles(kind: str, roles: list[str], source: str) -> None:
    """A generation sample ends with the assistant's answer; a reflection sample has the
    instruction, the reflection sequence, the instruction again and the one-off answer."""
    if kind == "generation":
        if len(roles) < 2 or roles[-1] != "assistant":
            raise DataError(source, "messages", "missing final answer (last assistant message)")
        return
    # SPEC §1: like the authors' code, any number of turns in between: the reflection body is
    # the first assistant message, the answer the last one (SPEC §2-3 find them by the role
    # tokens).
    if len(roles) < 4 or roles[-1] != "assistant":
        raise DataError(
            source, "messages", "missing final answer (reflection samples need >= 4 messages)"
        )
    if roles[:2] != ["user", "assistant"] or roles[-2] != "user":
        raise DataError(
            source,
            "messages",
            "roles must be user, assistant, ..., user, assistant; got " + str(roles),
        )


def _decode(raw: bytes, source: str, first: bool = False) -> str:
    try:
        # utf-8-sig on the first line: a byte-order mark (Windows editors write one) is not data
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as e:
        raise DataError(source, "<text>", not_utf8(e)) from None


def _refuse_json_document(first: bytes, path: Path, source: str) -> None:
    """A JSON array, or an object spread over lines (``indent=2``), is not JSON lines: one
    ``DataError`` saying what it is and how to convert it, not line 1's parse error."""
    text = first.removeprefix(b"\xef\xbb\xbf").strip()
    kind = "a JSON array" if text.startswith(b"[") else "a JSON object over several lines"
    if text.startswith(b"[") or text == b"{":
        raise DataError(
            source,
            "<file>",
            f"{kind}, not JSON lines (one sample per line): convert it with "
            f"`reflectioncoder prepare-data --in {path} --out FILE.jsonl`",
        )


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def _lines(f, path: Path):
    """(line number, bytes) of ``f``; a damaged gzip stream is one DataError naming the file and
    the last line read whole, not gzip's own exception."""
    lineno = 0
    try:
        for lineno, raw in enumerate(f, start=1):  # noqa: B007 (read after the loop)
            yield lineno, raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(
            str(path), "<file>", f"not a whole gzip file after line {lineno} ({err})"
        ) from None


def load_jsonl(
    path: str | Path, skip_bad: bool = False, report: LoadReport | None = None
) -> list[Sample]:
    """Read one ReflectionSeq jsonl file (``*.gz``: gzip-compressed) into a list of Samples
    (blank lines ignored)."""
    report = report if report is not None else LoadReport()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    samples: list[Sample] = []
    lineno_seen = 0  # non-blank lines
    with _open_bytes(path) as f:  # decoded per line: bad bytes are one bad row, named
        for lineno, raw in _lines(f, path):
            if not raw.strip():
                continue
            lineno_seen += 1
            source = f"{path}:{lineno}"
            if lineno_seen == 1:  # a whole-file JSON document: every line would be "bad"
                _refuse_json_document(raw, path, source)
            try:
                try:
                    obj = json.loads(_decode(raw, source, first=lineno == 1))
                except json.JSONDecodeError as e:
                    raise DataError(
                        source, "<json>", f"invalid JSON: {e.msg} (col {e.colno})"
                    ) from None
                samples.append(parse_sample(obj, source))
            except DataError as e:
                if not skip_bad:
                    raise
                report.skipped.append(str(e))
    if not samples and lineno_seen == 0:
        raise DataError(str(path), "<file>", "no samples: the file is empty")
    report.per_file[str(path)] = len(samples)
    report.loaded += len(samples)
    return samples


def load_files(
    paths: Sequence[str | Path],
    upsample: Sequence[int] | None = None,
    skip_bad: bool = False,
) -> tuple[list[Sample], LoadReport]:
    """Load several jsonl files, each listed ``upsample[i]`` times (the paper lists each
    reflection set twice). Returns the samples in file order and a LoadReport."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    upsample = [1] * len(paths) if upsample is None else list(upsample)
    if len(upsample) != len(paths):
        raise ValueError(f"upsample: {len(upsample)} factors for {len(paths)} files")
    for u in upsample:
        if not isinstance(u, int) or u < 1:
            raise ValueError(f"upsample: factors must be ints >= 1, got {u!r}")
    report = LoadReport()
    out: list[Sample] = []
    for path, factor in zip(paths, upsample, strict=True):
        samples = load_jsonl(path, skip_bad=skip_bad, report=report)
        out.extend(samples * factor)
    return out, report
