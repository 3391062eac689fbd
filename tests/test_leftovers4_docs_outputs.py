"""The commands a user copies from README.md, docs/*.md and ``reflectioncoder --help`` write
their outputs into a folder (runs/..., data/..., a run folder's eval/), never as loose files
in the folder they run from: that is the clone's root, where `--json he.json`, `--json
mbpp.json`, `--json result.json` and `build-data --out data.jsonl` left files beside
setup.py. Every `reflectioncoder` line of every code block is parsed by its command's own
parser, and each output it names is checked (its --json, --out, --save-samples, convert-gguf's
OUT, train's checkpoint.out_dir)."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from reflectioncoder.cli import COMMANDS, EPILOG, _command_parser

REPO = Path(__file__).resolve().parents[1]
FENCED = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)

# The argparse destinations that name a file or folder a command writes
OUTPUTS = ("json", "json_out", "out", "save_samples")


def _command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv after `reflectioncoder`) of every command line in the docs' code blocks
    (a `$ ` prompt dropped, continuations joined) and in the CLI's own examples."""
    texts = [(p.relative_to(REPO), p.read_text(encoding="utf-8"))
             for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]]  # fmt: skip
    epilog = re.sub(r"\\\n\s*", " ", EPILOG)
    found = [("reflectioncoder --help", line) for line in epilog.splitlines()]
    for path, text in texts:
        for block in FENCED.finditer(text):
            joined = re.sub(r"\\\n\s*", " ", block.group(1))
            line_no = text[: block.start()].count("\n") + 2
            found += [(f"{path}:{line_no}", line) for line in joined.splitlines()]
    commands = []
    for where, line in found:
        try:
            words = shlex.split(line.strip().removeprefix("$ "), comments=True)
        except ValueError:  # not a shell line (an output shown in the block)
            continue
        if words and Path(words[0]).name == "reflectioncoder" and len(words) > 1:
            commands.append((where, words[1:]))
    return commands


def _outputs(argv: list[str]) -> list[str]:
    """The paths ``argv`` writes, as its command's parser reads them."""
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    try:
        args, _ = _command_parser(name, module).parse_known_args(argv[1:])
    except (SystemExit, argparse.ArgumentError):  # a placeholder (--step S): the flags as given
        flags = {f"--{dest.replace('_', '-')}" for dest in OUTPUTS} | {"--json"}
        return [b for a, b in zip(argv, argv[1:], strict=False) if a in flags]
    paths = [str(getattr(args, dest)) for dest in OUTPUTS if getattr(args, dest, None)]
    for item in getattr(args, "overrides", None) or []:
        key, _, value = str(item).partition("=")
        if key.strip() == "checkpoint.out_dir":
            paths.append(value.strip())
    return paths


COMMAND_LINES = [(w, a) for w, a in _command_lines() if a[0] in COMMANDS]


def test_the_docs_commands_are_found():
    commands = {argv[0] for _, argv in COMMAND_LINES}
    assert {"train", "evaluate", "build-data", "prepare-data", "inspect"} <= commands
    helps = [argv for where, argv in COMMAND_LINES if where == "reflectioncoder --help"]
    assert ["runs/mine"] in [_outputs(argv) for argv in helps]  # a continued line, joined


@pytest.mark.parametrize("where, argv", COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_a_documented_command_writes_into_a_folder(where, argv):
    for path in _outputs(argv):
        loose = not Path(path).is_absolute() and Path(path).parent == Path(".")
        assert not loose, (
            f"{where}: `reflectioncoder {' '.join(argv)}` writes {path} into the folder it runs "
            "from (the clone's root): give it a folder (runs/..., data/...)"
        )


def test_a_loose_output_is_found():
    assert _outputs(["evaluate", "--task", "humaneval", "--samples", "s.jsonl", "--json", "a.json"])
    assert _outputs(["build-data", "--out", "data.jsonl"]) == ["data.jsonl"]
    assert _outputs(["train", "--preset", "tiny", "--set", "checkpoint.out_dir=run"]) == ["run"]
    assert _outputs(["inspect", "--step", "S", "--json", "views.json"]) == ["views.json"]


# A shell redirect of a documented command (`make demo > log.txt 2>&1`), in a code block or span
REDIRECT = re.compile(
    r"(?:reflectioncoder|make|python -m \S+)[^`\n]*?\s(?:>|>>|tee)\s*([^\s&|`;)]+)"
)


def _redirects() -> list[tuple[str, str]]:
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in REDIRECT.finditer(text):
            line = text[: match.start()].count("\n") + 1
            found.append((f"{path.relative_to(REPO)}:{line}", match.group(1)))
    return found


def test_a_documented_redirect_writes_into_a_folder():
    loose = [(w, f) for w, f in _redirects() if "/" not in f and not f.startswith("$")]
    assert not loose, f"redirected into the clone's root: {loose}"
    assert REDIRECT.search("`make demo > log.txt 2>&1`").group(1) == "log.txt"
