"""Plain ``torchrun ... -m reflectioncoder.cli train ...`` ends a failure in one line, as
``reflectioncoder launch`` does, instead of torchrun's Python traceback and its report of every
rank.

torch itself loads, into torchrun's own process as it starts, the ``torchrun.handlers`` entry
points of the installed packages (its way of adding a rendezvous backend). This package's
(setup.py) is :func:`rendezvous_plugin`: in a torchrun whose command is a reflectioncoder one,
it gives that process the ending of ``reflectioncoder launch`` (the same one line, the failed
rank's exit code, torchrun's own lines that the line replaces left out) through
``sys.excepthook`` and logging filters; it registers no working backend (``--rdzv-backend
reflectioncoder-one-line`` says so) and does nothing in any other process. torch is not
patched: without this package's metadata installed (a checkout on ``PYTHONPATH``) torchrun
ends as it always did, and the ranks print their line themselves.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

PROG = "torchrun"
# the torchrun process: its console script, or python -m torch.distributed.run
_TORCHRUN = ("torchrun", os.path.join("torch", "distributed", "run.py"))
# how a torchrun command line names a reflectioncoder command: -m MODULE or a script's path
_OUR_MODULES = ("reflectioncoder", "reflectioncoder.cli", "reflectioncoder.train")


def rendezvous_plugin():
    """The ``torchrun.handlers`` entry point torch calls as it loads it: set up this process's
    ending when it is a torchrun of a reflectioncoder command. Returns the backend creator
    torch registers under the entry point's name, which refuses to be one."""
    if launches_reflectioncoder(sys.argv):
        _end_in_one_line()
    return _not_a_rendezvous_backend


def _not_a_rendezvous_backend(params):
    raise ValueError(
        "reflectioncoder-one-line is not a rendezvous backend (reflectioncoder's hook that ends "
        "a failed torchrun in one line): use c10d"
    )


def launches_reflectioncoder(argv: list[str]) -> bool:
    """Whether ``argv`` is torchrun's, launching a reflectioncoder command (``-m
    reflectioncoder.cli``, ``-m reflectioncoder``, ``-m reflectioncoder.train``, or the
    ``reflectioncoder`` script). Read before torchrun parses it: its parser is not yet loaded."""
    if not argv or not argv[0].endswith(_TORCHRUN):
        return False
    return any(word in _OUR_MODULES or os.path.basename(word) == "reflectioncoder"
               for word in argv[1:])  # fmt: skip


def _restarts(argv: list[str]) -> int:
    """torchrun's --max-restarts in ``argv`` (0 when not given or not a number)."""
    for n, word in enumerate(argv):
        name, eq, value = word.partition("=")
        if name in ("--max-restarts", "--max_restarts"):
            value = value if eq else (argv[n + 1] if n + 1 < len(argv) else "")
            return int(value) if value.isdigit() else 0
    return 0


def _end_in_one_line() -> None:
    from reflectioncoder.cli import OUR_LAUNCHER_ENV
    from reflectioncoder.launch import hide_torchruns_own_lines

    # a rank's failure that torchrun restarts from (--max-restarts) ends nothing: its own
    # line says which rank failed, before the restarted ranks resume
    hide_torchruns_own_lines(keep_failures=_restarts(sys.argv) > 0)
    os.environ[OUR_LAUNCHER_ENV] = "1"  # the ranks' environment: this process says their line
    previous = sys.excepthook

    def one_line(kind, value, trace):
        code = _said_in_one_line(value)
        if code is None:
            previous(kind, value, trace)
            return
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # the rank's exit code: Python would exit 1 after any excepthook

    sys.excepthook = one_line


def _said_in_one_line(error: BaseException) -> int | None:
    """Print the line that ends the launch ``error`` ended; its exit code, or None when it is
    not torchrun's ending of the ranks (torchrun's own error, shown as torch shows it)."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from reflectioncoder.launch import end_tracker_runs, failure_line, root_failure

    if not isinstance(error, (ChildFailedError, SignalException)):
        return None
    command, command_args = _command()
    ended = end_tracker_runs(command, command_args)
    if isinstance(error, SignalException):  # Ctrl-C, scancel, docker stop: as our commands say
        word, code = ("interrupted", 130) if error.sigval == signal.SIGINT else ("terminated", 143)
        print(f"{PROG}: {word}{ended}", file=sys.stderr)
        return code
    rank, failure = root_failure(error)
    print(f"{PROG}: {failure_line(rank, failure, len(error.failures))}{ended}", file=sys.stderr)
    return failure.exitcode if failure.exitcode > 0 else 1


def _command() -> tuple[str, list[str]]:
    """(the reflectioncoder command torchrun launched, its arguments), from torchrun's own
    parser; ("", []) for a command line it cannot read."""
    from torch.distributed.run import get_args_parser

    try:
        args = get_args_parser().parse_args(sys.argv[1:])
    except SystemExit:
        return "", []
    words = list(args.training_script_args)
    if args.training_script == "reflectioncoder.train":
        return "train", words
    return (words[0], words[1:]) if words else ("", [])
