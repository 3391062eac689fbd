"""Every command the docs show, not only the blocks marked runnable: each shell block (and each
`$ command` line of an output block) of README.md, docs/*.md and bench/README.md is read as a
user copies it, and each command in it must at least start: a `reflectioncoder` command (also
behind `deepspeed --module` / `torchrun -m`) parses its arguments, a `train` command's config
and `--set` fields load, an `evaluate --model` command says where its samples go (`--json`,
`--save-samples`, or a run folder's model: the command refuses anything else), a `python -m
bench.X` module exists and knows its flags, a `make` target exists, and a repository file it
names (tests/data/..., examples/..., configs/...) is there. Fast: nothing is run.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from reflectioncoder.cli import COMMANDS, _command_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
DOCS.append(REPO_ROOT / "bench" / "README.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
REPO_DIRS = ("tests/", "examples/", "configs/", "docs/", "bench/")


def _logical_lines(script: str) -> list[str]:
    """The block's lines with continuations joined and heredoc bodies left out."""
    lines, heredoc = [], None
    for line in re.sub(r"\\\n\s*", " ", script).splitlines():
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        found = re.search(r"<<-?\s*'?(\w+)'?", line)
        heredoc = found.group(1) if found else None
        lines.append(line)
    return lines


def documented_commands() -> list[tuple[str, list[str]]]:
    """(file:line, words) of every command the docs show."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for block in FENCE.finditer(text):
            lang, body = block.group(1), block.group(2)
            start = text[: block.start()].count("\n") + 2
            if lang in ("bash", "sh", "shell"):
                lines = _logical_lines(body)
            elif lang == "":  # output blocks: only the lines a user types, `$ command`
                lines = [ln[2:] for ln in _logical_lines(body) if ln.startswith("$ ")]
            else:
                continue
            for k, line in enumerate(lines, 1):
                words = shlex.split(line, comments=True)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # M=... or VAR=1 cmd
                    words = words[1:]
                if words:  # where: the block's first line, and the command's place in it
                    found.append((f"{path.relative_to(REPO_ROOT)}:{start}#{k}", words))
    return found


COMMANDS_SHOWN = documented_commands()


def _reflectioncoder_argv(words: list[str]) -> list[str] | None:
    if Path(words[0]).name == "reflectioncoder":
        return words[1:]
    for flag in ("--module", "-m"):  # deepspeed --module / torchrun -m / python -m
        for i, word in enumerate(words[:-1]):
            if word == flag and words[i + 1] == "reflectioncoder.cli":
                return words[i + 2 :]
    return None


def _bench_module(words: list[str]) -> tuple[str, list[str]] | None:
    if words[:2] == ["python", "-m"] and words[2].startswith("bench."):
        return words[2], words[3:]
    return None


def test_the_docs_show_many_commands_of_each_kind():
    kinds = [w[0] for _, w in COMMANDS_SHOWN]
    assert len(COMMANDS_SHOWN) >= 60
    assert sum(_reflectioncoder_argv(w) is not None for _, w in COMMANDS_SHOWN) >= 40
    assert {"make", "python", "deepspeed", "torchrun"} <= set(kinds)


@pytest.mark.parametrize("where, words", COMMANDS_SHOWN, ids=[w for w, _ in COMMANDS_SHOWN])
def test_documented_command_starts(where, words, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the docs' paths are relative to the clone
    argv = _reflectioncoder_argv(words)
    if argv is not None:
        _check_reflectioncoder(where, argv)
    elif (bench := _bench_module(words)) is not None:
        module, flags = bench
        source = REPO_ROOT / (module.replace(".", "/") + ".py")
        assert source.is_file(), f"{where}: {module} not found"
        text = source.read_text(encoding="utf-8")
        for flag in (w for w in flags if w.startswith("--")):
            assert f'"{flag}"' in text, f"{where}: {module} has no {flag}"
    elif words[0] == "make":
        makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
        for target in (w for w in words[1:] if "=" not in w and not w.startswith("-")):
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{where}: make {target}"
    for word in words:  # a repository file the command names exists
        for value in (word, word.partition("=")[2].strip("[]")):
            if value.startswith(REPO_DIRS) and "*" not in value and "OUT" not in value:
                if not re.search(r"\.(jsonl|json|yaml|py|md|gz|parquet)$|/prepare$", value):
                    continue  # an output folder the command makes
                if value.startswith("bench/results/"):
                    continue  # written by the command
                assert (REPO_ROOT / value).exists(), f"{where}: {value} not in the repository"


def _check_reflectioncoder(where: str, argv: list[str]) -> None:
    assert argv and argv[0] in COMMANDS, f"{where}: unknown command {argv[:1]}"
    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        args = _command_parser(argv[0], module).parse_args(argv[1:])
    except SystemExit as exit_:  # argparse's one line is on stderr
        pytest.fail(f"{where}: `reflectioncoder {shlex.join(argv)}` does not parse ({exit_})")
    if argv[0] == "train":  # its config file and every --set field load as written
        from reflectioncoder.config_loader import load_config

        load_config(args.config, args.overrides, base=args.preset)
    if argv[0] == "evaluate":  # generated samples have somewhere to go
        _check_evaluate_output(where, args)


def _check_evaluate_output(where: str, args) -> None:
    if args.model is None or args.json or args.save_samples:
        return
    # else EvalRequest.samples_out() writes into the model's run folder: RUN/final or
    # RUN/checkpoints/step-N/model, as the docs name them; anything else is refused there
    model = Path(args.model)
    if model.name != "final" and model.parent.parent.name != "checkpoints":
        pytest.fail(f"{where}: `evaluate --model {args.model}` names no --json or --save-samples")


def test_a_documented_command_with_a_bad_flag_or_field_is_caught(monkeypatch):
    """The checks above can fail: a misspelt flag, a misspelt --set field."""
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _check_reflectioncoder("x.md:1", ["evaluate", "--task", "humaneval", "--jsn", "o.json"])
    from reflectioncoder.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean train.max_steps"):
        _check_reflectioncoder("x.md:1", ["train", "--preset", "tiny", "--set", "train.max_step=3"])
    with pytest.raises(pytest.fail.Exception, match="names no --json"):  # nowhere to write
        _check_reflectioncoder("x.md:1", ["evaluate", "--task", "mbpp", "--model", "my-model"])
