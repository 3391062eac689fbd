"""``python -m reflectioncoder.launch [torchrun's options] COMMAND [its arguments]``: torchrun
for a ``reflectioncoder`` command, whose failure ends in one readable line.

torchrun itself ends a failed run with its own Python traceback (``raise ChildFailedError``,
torchrun's code: it says that a rank failed, not where) and a report of every rank, after the
rank's one-line error. Here the same launch (``torch.distributed.run``, the same options)
ends with ``reflectioncoder launch: rank 0 of 2 failed (exit code 2): <the rank's line>`` and
exits with that rank's code (torchrun exits 1 whatever it was)::

    python -m reflectioncoder.launch --nproc_per_node 8 train --config configs/paper.yaml
"""

from __future__ import annotations

import logging
import signal
import sys

from reflectioncoder.cli import COMMANDS, guarded
from reflectioncoder.errors import Terminated, UsageError

PROG = "reflectioncoder launch"

# torchrun's own lines that the one line replaces: the agent's "failed (exitcode: ...)" and its
# note that torchrun has no error file of its own to copy the rank's into
_SAID_BY_OUR_LINE = ("failed (exitcode", "no error file defined for parent")


class _SaidByOurLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_SAID_BY_OUR_LINE)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return guarded(PROG, lambda: _launch(argv), "--debug" in argv)


def _launch(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    name_one = (
        "name the command to launch after torchrun's options, e.g. "
        "python -m reflectioncoder.launch --nproc_per_node 8 train --config configs/paper.yaml"
    )
    if not any(word in COMMANDS for word in argv):
        raise UsageError(name_one)
    # torchrun's own parser tells an option's value (--rdzv-id train) from the command
    args = get_args_parser().parse_args(argv)
    command = args.training_script
    if command not in COMMANDS or args.module or args.no_python:
        raise UsageError(f"{command!r} is not a reflectioncoder command: {name_one}")
    args.module, args.training_script = True, "reflectioncoder.cli"
    args.training_script_args = [command, *args.training_script_args]
    for name in ("torch.distributed.elastic", "torch.distributed.elastic.multiprocessing.api",
                 "torch.distributed.elastic.multiprocessing.errors.error_handler"):  # fmt: skip
        logging.getLogger(name).addFilter(_SaidByOurLine())
    try:
        run(args)
    except ChildFailedError as err:
        print(f"{PROG}: {_failure_line(err, args.nproc_per_node)}", file=sys.stderr)
        _, failure = err.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as err:  # the agent's handler: Ctrl-C, scancel, docker stop
        raise KeyboardInterrupt if err.sigval == signal.SIGINT else Terminated from None
    return 0


def _failure_line(err, nproc_per_node: str) -> str:
    """The first failed rank, its exit code (or signal) and what it said (its error file's
    line, which our command line writes there, or torchrun's words for a signal)."""
    rank, failure = err.get_first_failure()
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    if failure.exitcode < 0:
        how = f"killed by {failure.signal_name()}"
    else:
        how = f"exit code {failure.exitcode}"
    total = len(err.failures)
    others = f"; {total - 1} other rank(s) failed too" if total > 1 else ""
    said = " ".join(str(message).split()) or "no error line (see its output above)"
    return f"rank {rank} failed ({how}{others}): {said}"


if __name__ == "__main__":
    sys.exit(main())
