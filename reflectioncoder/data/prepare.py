"""Turn downloaded datasets into one ReflectionSeq jsonl file, decontaminated, with a manifest.

``reflectioncoder prepare-data --in FILE_OR_DIR [--in ...] --out OUT.jsonl [--format F]
[--data-dir D] [--keep-contaminated]`` writes ``OUT.jsonl`` and ``OUT.manifest.json``: per
input the rows read, written, skipped (by reason, each with file:line:field) and dropped as
contaminated, the formats met, and the message and round counts of its samples.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from reflectioncoder.data.decontaminate import BenchmarkIndex, ContaminationReport, sample_text
from reflectioncoder.data.formats import FORMATS, convert_row, detect_format
from reflectioncoder.data.readers import expand_input, read_rows
from reflectioncoder.data.schema import DataError, parse_sample
from reflectioncoder.errors import (
    UsageError,
    UserError,
    refuse_overwriting_input,
    require_writable_output,
)
from reflectioncoder.printable import printable
from reflectioncoder.progress import Progress

MAX_LISTED = 100  # skipped rows listed per reason in the manifest (all are counted)


@dataclass
class InputStats:
    """What one input file gave."""

    path: str
    reader: str
    read: int = 0
    written: int = 0
    decontaminated: int = 0
    formats: Counter = field(default_factory=Counter)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> file:line:field
    messages: Counter = field(default_factory=Counter)  # messages per sample
    rounds: Counter = field(default_factory=Counter)  # code runs in a reflection sequence
    looks_like: Counter = field(default_factory=Counter)  # detected formats of rejected rows

    def skip(self, error: DataError) -> None:
        self.skipped.setdefault(_reason_kind(error.reason), []).append(str(error))

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "reader": self.reader,
            "formats": dict(self.formats),
            "read": self.read,
            "written": self.written,
            "skipped": sum(len(v) for v in self.skipped.values()),
            "skipped_by_reason": {
                reason: {"count": len(where), "rows": where[:MAX_LISTED]}
                for reason, where in sorted(self.skipped.items())
            },
            "decontaminated": self.decontaminated,
            "messages_per_sample": {str(k): v for k, v in sorted(self.messages.items())},
            "reflection_rounds": {str(k): v for k, v in sorted(self.rounds.items())},
        }


def _reason_kind(reason: str) -> str:
    """The part of a reason that names its kind (before any quoted detail)."""
    for stop in (" (", ":", " '", ' "', ", got", ", missing"):
        reason = reason.split(stop, 1)[0]
    return reason.strip()


def reflection_rounds(sample: dict) -> int:
    """Code blocks run in the reflection sequence (messages between the first and the
    instruction again): 1 = the first attempt only, 2 = one reflection and fix, ..."""
    middle = sample["messages"][1:-2]
    return sum(b.get("type") == "execution" for m in middle for b in m["content"])


@dataclass
class PrepareResult:
    out: Path
    manifest: Path
    inputs: list[InputStats]
    contamination: dict | None

    @property
    def written(self) -> int:
        return sum(s.written for s in self.inputs)

    def summary(self) -> str:
        read = sum(s.read for s in self.inputs)
        skipped = sum(sum(len(v) for v in s.skipped.values()) for s in self.inputs)
        contaminated = sum(s.decontaminated for s in self.inputs)
        action = "kept" if self.contamination and self.contamination["kept"] else "dropped"
        return (
            f"wrote {self.out}: {self.written} of {read} rows ({skipped} bad skipped, "
            f"{contaminated} contaminated {action}); manifest {self.manifest}"
        )


def manifest_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl") + ".manifest.json")


def prepare(
    inputs: list[str | Path],
    out: str | Path,
    fmt: str | None = None,
    index: BenchmarkIndex | None = None,
    keep_contaminated: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Read, convert, validate and (with ``index``) decontaminate every input into ``out``.

    Bad rows are skipped and listed; the output and its manifest appear atomically (written
    to temporary files, then renamed), so a failed run leaves any earlier output as it was.
    """
    out = Path(out)
    sources = _checked_sources(inputs, out, fmt)
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # innermost first
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    mpath = manifest_path(out)
    mtmp = mpath.with_name(f".{mpath.name}.tmp{os.getpid()}")
    report = ContaminationReport()
    bar = Progress(None, "prepare", unit="row", enabled=progress, every=10000)
    try:
        with tmp.open("w", encoding="utf-8") as f:
            stats = []
            for reader, path in sources:
                s = _write_input(f, reader, path, fmt, index, keep_contaminated, report, bar)
                _refuse_wrong_format(s, fmt)
                stats.append(s)
            _refuse_nothing_converted(stats)
        contamination = None
        if index is not None:
            contamination = {
                "kept": keep_contaminated,
                "benchmarks": report.as_dict(index),
            }
        manifest = {
            "output": str(out),
            "written": sum(s.written for s in stats),
            "format": fmt or "auto",
            "inputs": [s.as_dict() for s in stats],
            "decontamination": contamination,
        }
        mtmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
        os.replace(mtmp, mpath)
    except BaseException as err:  # a failed run (an unreadable input, Ctrl-C) leaves no new folder
        tmp.unlink(missing_ok=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        named = {str(tmp): out, str(mtmp): mpath}  # the user's path, not our temporary file's
        if isinstance(err, OSError) and err.strerror and err.filename in named:
            raise OSError(err.errno, err.strerror, str(named[err.filename])) from err
        raise
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    return PrepareResult(out, mpath, stats, contamination)


def _checked_sources(
    inputs: list[str | Path], out: Path, fmt: str | None
) -> list[tuple[str, Path]]:
    """(reader, path) of every input file; a UsageError for a bad format or output, or an
    input named twice or also the output."""
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(
            f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}", field="--format"
        )
    if out.is_dir():
        raise UsageError(f"{out} is a folder; name the output .jsonl file", field="--out")
    sources = [pair for path in inputs for pair in expand_input(path)]
    seen: set[Path] = set()
    for _, path in sources:
        if path.resolve() == out.resolve():
            raise UsageError(f"{out} is also an input; choose another output file", field="--out")
        if path.resolve() in seen:  # its rows would be written twice
            raise UsageError(f"{path} is named twice", field="--in")
        seen.add(path.resolve())
    return sources


def _refuse_wrong_format(s: InputStats, fmt: str | None) -> None:
    """A UsageError when ``--format`` converted none of an input's rows: the format is wrong for
    the file (its rows are not bad one by one), and an empty output would pass for a result."""
    if fmt is None or not s.read or sum(s.formats.values()):
        return
    detected = [name for name, _ in s.looks_like.most_common() if name not in (fmt, None)]
    hint = f" (its rows look like {' / '.join(detected)})" if detected else ""
    raise UsageError(
        f"{fmt!r} converts none of the {s.read} rows of {s.path}{hint}; formats: "
        f"{', '.join(FORMATS)}, or leave --format out to detect each row's",
        field="--format",
    )


def _refuse_nothing_converted(stats: list[InputStats]) -> None:
    """A UserError when no row of any input converted (empty files, or every row bad): an
    empty output and exit 0 would pass for a result. Names the first bad row (file:line:field)."""
    if any(sum(s.formats.values()) for s in stats):
        return
    read = sum(s.read for s in stats)
    first = next((rows[0] for s in stats for rows in s.skipped.values() if rows), None)
    if first is None:
        raise UserError("no rows to convert: the input files are empty", field="--in")
    raise UserError(f"{first}; none of the {read} rows read could be converted, nothing written")


def _write_input(
    f: TextIO,
    reader: str,
    path: Path,
    fmt: str | None,
    index: BenchmarkIndex | None,
    keep_contaminated: bool,
    report: ContaminationReport,
    bar: Progress,
) -> InputStats:
    """Every good row of one input, converted, written to ``f`` (less the contaminated ones,
    unless kept); what it gave."""
    s = InputStats(str(path), reader)
    for source, row in read_rows(reader, path):
        s.read += 1
        bar.update()
        sample = _convert(row, fmt, source, s)
        if sample is None:
            continue
        hits = index.hits(sample_text(sample)) if index is not None else []
        if hits:
            report.add(source, hits)
            s.decontaminated += 1
            if not keep_contaminated:
                continue
        f.write(json.dumps(sample, ensure_ascii=False) + "\n")
        s.written += 1
    return s


def _convert(row: object, fmt: str | None, source: str, s: InputStats) -> dict | None:
    """The ReflectionSeq row for ``row``, validated (SPEC §1), or None when it is bad."""
    try:
        if isinstance(row, DataError):
            raise row
        found, sample = convert_row(row, fmt, source)
        parsed = parse_sample(sample, source)
    except DataError as e:
        s.skip(e)
        s.looks_like[detect_format(row)] += 1
        return None
    s.formats[found] += 1
    s.messages[len(parsed.messages)] += 1
    if parsed.is_reflection:
        s.rounds[reflection_rounds(sample)] += 1
    return sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``reflectioncoder prepare-data`` flags."""
    parser.add_argument(
        "--in",
        dest="inputs",
        action="append",
        required=True,
        metavar="FILE_OR_DIR",
        help="jsonl / json / parquet file, hub snapshot folder or save_to_disk folder (repeat)",
    )
    parser.add_argument("--out", required=True, help="output ReflectionSeq jsonl file")
    parser.add_argument(
        "--format", choices=FORMATS, default=None, help="input format (default: detected per row)"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="benchmark data for decontamination (default: ../shared/evaldata)",
    )
    parser.add_argument(
        "--keep-contaminated",
        action="store_true",
        help="keep samples that overlap a benchmark (they are still reported)",
    )
    parser.add_argument(
        "--no-decontaminate", action="store_true", help="skip the benchmark overlap check"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def main(args: argparse.Namespace) -> int:
    """Prepare, print a summary and each benchmark's overlap count."""
    refuse_overwriting_input(args.out, "--out", {"--in": args.inputs})
    require_writable_output(args.out, "--out")
    index = None
    if not args.no_decontaminate:
        from reflectioncoder.eval.tasks import default_data_dir

        data_dir = args.data_dir or default_data_dir()
        if data_dir is None:
            raise UsageError(
                "no benchmark data found (../shared/evaldata); pass --data-dir or "
                "--no-decontaminate",
                field="--data-dir",
            )
        index = BenchmarkIndex.load(data_dir)
    result = prepare(
        args.inputs,
        args.out,
        args.format,
        index,
        args.keep_contaminated,
        progress=not args.no_progress,
    )
    print(result.summary())
    for s in result.inputs:
        skipped = ", ".join(f"{k}: {len(v)}" for k, v in s.skipped.items()) or "none"
        print(
            f"  {printable(s.path)}: read {s.read}, wrote {s.written}, skipped ({skipped}), "
            f"contaminated {s.decontaminated}"
        )
        for rows in s.skipped.values():  # where each kind first happened (all: the manifest)
            print(f"    e.g. {printable(rows[0])}")  # quotes the row's fields
        if s.read and not s.written and not s.decontaminated:  # (a wrong --format raised)
            print(
                f"warning: {printable(s.path)}: none of its {s.read} rows could be converted; "
                f"formats read: {', '.join(FORMATS)} (--format)",
                file=sys.stderr,
            )
    if result.contamination is not None:
        action = "kept" if args.keep_contaminated else "dropped"
        for bench, r in result.contamination["benchmarks"].items():
            print(f"  {bench}: {r['samples_matched']} samples overlap ({action})")
    return 0
