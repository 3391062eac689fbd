"""The ``reflectioncoder`` command: a thin dispatcher to each room's own command module.

Each command module defines ``add_arguments(parser)`` and ``main(args) -> int``; it is imported
only when its command runs, so ``reflectioncoder evaluate`` never pays for torch's or DeepSpeed's
import, for instance.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("reflectioncoder.train.cli", "train a model with the ReflectionCoder method"),
    "inspect": ("reflectioncoder.data.inspect", "show what the teacher and the student see"),
    "evaluate": ("reflectioncoder.eval.cli", "generate and score pass@k in a sandbox"),
    "eval-setup": (
        "reflectioncoder.eval.toolchains",
        "install the toolchains of MultiPL-E's languages (Debian packages)",
    ),
    "build-data": ("reflectioncoder.construct.cli", "build reflection sequences by execution"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The `deepspeed` launcher puts --local_rank=N before the command; ranks read LOCAL_RANK.
    argv = [a for a in argv if not a.startswith("--local_rank=")]
    parser = argparse.ArgumentParser(prog="reflectioncoder", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    command = argparse.ArgumentParser(prog=f"reflectioncoder {argv[0]}", description=module.__doc__)
    module.add_arguments(command)
    return int(module.main(command.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
