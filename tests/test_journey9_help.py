"""Each command's ``--help`` is written for its user: the commands' descriptions showed their
docstrings' ``double backquotes`` (reStructuredText) and the runs command an internal function's
name. ``reflectioncoder launch --help`` is a user's usage (the form, examples, where the command's
and torchrun's options are listed): it printed the module's docstring, written for developers
(``raise ChildFailedError``, ``cli.OUR_LAUNCHER_ENV``), with no usage line. ``launch`` alone
prints the same usage to stderr, exit 2, as a bad argument."""

from __future__ import annotations

import pytest
from torch.distributed.run import get_args_parser

from reflectioncoder import launch
from reflectioncoder.cli import COMMANDS, main


def test_launch_help_is_a_usage(capsys):
    assert main(["launch", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: reflectioncoder launch [torchrun's options] COMMAND [its flags]")
    assert "``" not in out and "OUR_LAUNCHER_ENV" not in out and "ChildFailedError" not in out
    examples = out.split("examples:\n", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    for example in examples.splitlines():  # each parses as torchrun's options, then a command
        words = example.replace("$NODE_RANK", "0").split()
        assert words[:2] == ["reflectioncoder", "launch"], example
        assert get_args_parser().parse_args(words[2:]).training_script in COMMANDS, example
    assert "torchrun --help" in out and "reflectioncoder COMMAND --help" in out


def test_launch_alone_prints_the_usage_as_a_bad_argument(capsys):
    assert launch.main([]) == 2
    said = capsys.readouterr()
    assert said.out == "" and said.err.startswith("usage: reflectioncoder launch ")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_commands_help_shows_code_as_the_rest_of_help_does(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: reflectioncoder {command}")
    assert "``" not in out and "checkpoint_files" not in out, out
