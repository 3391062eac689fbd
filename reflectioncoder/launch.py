"""``reflectioncoder launch [torchrun's options] COMMAND [its arguments]`` (or ``python -m
reflectioncoder.launch``): torchrun for a ``reflectioncoder`` command, whose failure ends in one
readable line.

torchrun itself ends a failed run with its own Python traceback (``raise ChildFailedError``,
torchrun's code: it says that a rank failed, not where) and a report of every rank, after the
rank's one-line error. Here the same launch (``torch.distributed.run``, the same options)
ends with ``reflectioncoder launch: rank 0 of 2 failed (exit code 2): <the rank's line>`` and
exits with that rank's code (torchrun exits 1 whatever it was). The ranks leave their line to
it (``cli.OUR_LAUNCHER_ENV``): the launch ends in that one line, not the rank's and then
ours. A ``train`` whose rank 0 was killed outright (the OOM killer) has its MLflow run, left
RUNNING, marked KILLED once the ranks have ended, and the line says so::

    python -m reflectioncoder.launch --nproc_per_node 8 train --config configs/paper.yaml
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from reflectioncoder.cli import COMMANDS, OUR_LAUNCHER_ENV, PEER_GONE_LINE, guarded
from reflectioncoder.errors import Terminated, UsageError
from reflectioncoder.printable import printable

PROG = "reflectioncoder launch"

# What --help prints: the module's docstring is for the developers (torchrun's internals)
HELP = f"""\
usage: {PROG} [torchrun's options] COMMAND [its flags]
       (or: python -m reflectioncoder.launch [torchrun's options] COMMAND [its flags])

torchrun for a reflectioncoder command: the same options and ranks, but a failed launch ends in
one line naming the rank and its reason, and exits with that rank's code:
  {PROG}: rank 0 of 2 failed (exit code 2): <the rank's one-line error>

examples:
  {PROG} --nproc_per_node 8 train --config configs/paper.yaml
  {PROG} --nproc_per_node 8 train --config configs/paper.yaml --resume
  {PROG} --nnodes 4 --nproc_per_node 8 --node_rank $NODE_RANK \\
      --master_addr node1 --master_port 29500 train --config configs/paper.yaml

COMMAND: one of {", ".join(COMMANDS)}
(its flags: reflectioncoder COMMAND --help).
torchrun's options (--nproc_per_node, --nnodes, --rdzv-endpoint, --max-restarts, ...):
torchrun --help. More: docs/training.md, "Many GPUs, many nodes"."""

# torchrun's own lines that the one line replaces: the agent's "failed (exitcode: ...)", its
# note that torchrun has no error file of its own to copy the rank's into, its ending the other
# ranks once one failed, and the signal that stopped it (said "terminated", "interrupted");
# and its banner setting OMP_NUM_THREADS=1, which asks for tuning the trainer does: each rank
# sets its threads itself and logs how many (train.threads)
_SAID_BY_OUR_LINE = (
    "failed (exitcode",
    "no error file defined for parent",
    "Sending process",
    "Received %s death signal",
    "\n*****************************************\nSetting OMP_NUM_THREADS",
)


class _SaidByOurLine(logging.Filter):
    def __init__(self, said: tuple[str, ...]) -> None:
        super().__init__()
        self.said = said

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.said)


def hide_torchruns_own_lines(keep_failures: bool = False) -> None:
    """Leave out torchrun's log lines that the one line ending a failed launch says
    (``keep_failures``: its "failed (exitcode ...)", the one word of a rank it restarts)."""
    said = tuple(s for s in _SAID_BY_OUR_LINE if not (keep_failures and s == "failed (exitcode"))
    # torchrun's own logger is __main__ under python -m torch.distributed.run
    for name in ("torch.distributed.run", "__main__", "torch.distributed.elastic",
                 "torch.distributed.elastic.multiprocessing.api",
                 "torch.distributed.elastic.multiprocessing.errors.error_handler",
                 "torch.distributed.elastic.agent.server.api"):  # fmt: skip
        logging.getLogger(name).addFilter(_SaidByOurLine(said))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in ([], ["-h"], ["--help"]):
        print(HELP, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
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
    hide_torchruns_own_lines(keep_failures=args.max_restarts > 0)
    os.environ[OUR_LAUNCHER_ENV] = "1"  # the ranks' environment: this process says their line
    try:
        run(args)
    except ChildFailedError as err:
        rank, failure = root_failure(err)
        ended = end_tracker_runs(command, args.training_script_args[1:])
        print(f"{PROG}: {failure_line(rank, failure, len(err.failures))}{ended}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as err:  # the agent's handler: Ctrl-C, scancel, docker stop
        end_tracker_runs(command, args.training_script_args[1:])
        raise KeyboardInterrupt if err.sigval == signal.SIGINT else Terminated from None
    finally:
        os.environ.pop(OUR_LAUNCHER_ENV, None)
    return 0


def _said(failure) -> str:
    """The line the rank wrote into its error file (cli._tell_launcher), or ""."""
    message = failure.error_file_data.get("message", "")  # {"message": "<NONE>"}: no file
    if isinstance(message, dict):
        message = message.get("message", "")
    # a rank's uncaught exception, recorded by torch, may quote a program's output or a file
    return "" if message == "<NONE>" else printable(" ".join(str(message).split()))


def root_failure(err):
    """(rank, failure) that says what went wrong: a rank's own error line first, then a rank
    killed by a signal (the OOM killer; SIGTERM, what the agent ends the others with, after
    the rest), then one stopped because another failed (whatever ended it then), then the
    rest (ended by the agent), each the earliest of its kind."""

    def rank_of(item) -> tuple[int, int]:
        _, failure = item
        said = _said(failure)
        if said and PEER_GONE_LINE not in said:
            return 0, failure.timestamp
        if said:
            return 3, failure.timestamp
        if failure.exitcode < 0:
            return (2 if -failure.exitcode == signal.SIGTERM else 1), failure.timestamp
        return 4, failure.timestamp

    return min(err.failures.items(), key=rank_of)


def failure_line(rank: int, failure, total: int) -> str:
    """The failed rank, its exit code (or signal) and the line it said."""
    said = _said(failure)
    if failure.exitcode == -signal.SIGTERM and said:  # the agent ended it on its way out
        how = "ended by SIGTERM after its error"
    elif failure.exitcode < 0:
        how = f"killed by {failure.signal_name()}"
    else:
        how = f"exit code {failure.exitcode}"
    others = f"; {total - 1} other rank(s) failed too" if total > 1 else ""
    if said:
        return f"rank {rank} failed ({how}{others}): {said}"
    if failure.exitcode < 0:  # the signal is what there is to say
        return f"rank {rank} failed ({how}{others})"
    return f"rank {rank} failed ({how}{others}): no error line (see its output above)"


def end_tracker_runs(command: str, command_args: list[str]) -> str:
    """Once a ``train`` launch's ranks have ended: its MLflow run, left RUNNING by a rank 0
    killed outright, marked KILLED (``; its MLflow run ID ...``), or ""."""
    if command != "train":
        return ""
    from reflectioncoder.train.cli import run_folder_of
    from reflectioncoder.train.tracker_names import end_killed_launch

    try:
        out_dir = run_folder_of(command_args)
    except Exception:  # noqa: BLE001 - a command line the ranks refused: they said why
        return ""
    run_id = end_killed_launch(out_dir)
    return f"; its MLflow run {run_id}, left RUNNING, marked KILLED" if run_id else ""


if __name__ == "__main__":
    sys.exit(main())
