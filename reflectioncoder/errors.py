"""Errors a user can fix, and how the command line shows them: one line, no traceback.

Raise ``UserError`` (a run error, exit 1) or ``UsageError`` (a bad argument or config value,
exit 2) with the file, line, column and field where there is one; ``reflectioncoder.cli`` prints
``reflectioncoder CMD: file:line:col: field: message``. The errors our loaders already raise
(``FileNotFoundError``, ``ValueError`` and its ``DataError``, JSON and YAML errors) are shown
the same way, so a new command gets this without code of its own.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from reflectioncoder.printable import printable


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, ``scancel``, ``docker stop``, ``timeout``, torchrun
    ending the other ranks) taken as a Ctrl-C: the same clean exit, said as ``terminated``."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises ``Terminated`` in the main thread, so that the ``finally`` blocks
    run (the trackers flushed and closed, a save left whole) instead of a silent death."""

    def raise_terminated(signum: int, frame: object) -> None:
        raise Terminated

    if threading.current_thread() is not threading.main_thread():  # only it takes signals
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_field(cond: bool, name: str, msg: str) -> None:
    """A config section's own check (``__post_init__``): ``ValueError("name: msg")`` unless
    ``cond``."""
    if not cond:
        raise ValueError(f"{name}: {msg}")


def did_you_mean(key: str, names: object, where: str = "") -> str:
    """`` (did you mean train.max_steps?)`` when one of ``names`` is close to a misspelt
    ``key`` (``where``: the section it is in, prefixed to the suggestion); empty otherwise. The
    one home of the hint for config fields, presets and DeepSpeed JSON keys."""
    name, colon, value = str(key).partition(":")
    if colon and name.strip() in map(str, names):  # YAML reads {a:1} as the key "a:1"
        return f" (YAML needs a space after the colon: {name.strip()}: {value.strip()})"
    close = difflib.get_close_matches(str(key), sorted(map(str, names)), n=1, cutoff=0.7)
    return f" (did you mean {where + '.' if where else ''}{close[0]}?)" if close else ""


def hint(value: object, choices: object) -> str:
    """`` (did you mean cosine?)`` for a string value close to one of ``choices`` (a field's
    named values: ``optim.schedule: cosin``); empty otherwise."""
    return did_you_mean(value, choices) if isinstance(value, str) else ""


def lone_surrogate(text: str) -> str | None:
    """Why ``text`` is not Unicode text (None when it is): JSON's escapes can spell a lone
    UTF-16 surrogate (``"\\ud83d"``, half of an emoji's pair), which no tokenizer, compiler
    or file can take as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        char = f"\\u{ord(text[e.start]):04x}"
        return f"a lone surrogate {char} at character {e.start + 1} (not Unicode text)"
    return None


class UserError(ValueError):
    """A mistake in what the user gave (a file, a folder, a value): exit 1. A ValueError, so
    that code which checks its input with ValueError keeps working."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike | None = None,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.line = line
        self.column = column
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.file, self.line, self.column) if p is not None)
        parts = [p for p in (where, self.field, self.message) if p]
        return ": ".join(parts)


class UsageError(UserError):
    """A bad command-line argument or config value: exit 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A config field with a bad type or value (the field is ``section.name``)."""


def one_line(err: BaseException) -> tuple[str, int]:
    """The message and exit code the command line shows for ``err`` (no traceback)."""
    if isinstance(err, UserError):
        return _flat(str(err)), err.exit_code
    if isinstance(err, json.JSONDecodeError):
        return _flat(f"line {err.lineno} column {err.colno}: invalid JSON: {err.msg}"), 1
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return _flat(f"{err.filename}: {err.strerror}"), 1
    try:
        import yaml

        if isinstance(err, yaml.YAMLError):
            return _flat(f"invalid YAML: {err}"), 2
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        pass
    if isinstance(err, ValueError | OSError | LookupError):
        return _flat(str(err) or type(err).__name__), 1
    return _flat(f"{type(err).__name__}: {err}"), 1


def is_expected(err: BaseException) -> bool:
    """Whether ``err`` is a user's mistake (as opposed to a bug in reflectioncoder)."""
    return isinstance(err, UserError | ValueError | OSError)


def raised_in_run(err: BaseException, run_folder: Path) -> None:
    """Note on ``err`` the run folder whose steps it stopped: an internal error's traceback is
    kept there (:func:`keep_traceback`), where a run stopped at step 40000 would otherwise
    have only "rerun with --debug" to go on."""
    with contextlib.suppress(AttributeError):  # an exception type without a __dict__
        err.run_folder = Path(run_folder)


def keep_traceback(err: BaseException) -> Path | None:
    """``err``'s traceback appended to OUT/logs/traceback-rank-N.txt (this rank's) of the run
    it stopped (:func:`raised_in_run`); that file, or None (no run, or a disk that refuses)."""
    import time
    import traceback

    folder = getattr(err, "run_folder", None)
    if folder is None:
        return None
    path = folder / "logs" / f"traceback-rank-{os.environ.get('RANK', '0')}.txt"
    try:
        path.parent.mkdir(exist_ok=True)
        with path.open("a", encoding="utf-8") as file:
            file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}, pid {os.getpid()}\n")
            file.write("".join(traceback.format_exception(err)))
    except OSError:
        return None
    return path


def _flat(text: str) -> str:
    # a message may quote a file, a program's output or a server's reply: escapes escaped
    return printable(" ".join(line.strip() for line in text.splitlines() if line.strip()))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: a kill or Ctrl-C
    leaves either the old file or the whole new one, never half of it."""
    path = Path(path)
    if path.is_dir():  # os.replace would fail only after the whole file was written beside it
        raise UserError("is a folder; give a file name", file=path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        if err.strerror is None:
            raise
        # the same error (the same subclass, from errno), naming the user's path, not our temporary
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def refuse_overwriting_input(
    out: str | os.PathLike | None, out_field: str, inputs: dict[str, object]
) -> None:
    """A ``UsageError`` if the output file ``out`` is one of the inputs (``{flag: path or
    paths}``): the command would replace what it reads. Found before any work is done."""
    if out is None:
        return
    target = Path(out).resolve()
    for flag, given in inputs.items():
        paths = [] if given is None else [given] if isinstance(given, str | os.PathLike) else given
        if any(Path(p).resolve() == target for p in paths):
            raise UsageError(
                f"is the {flag} file: the output would overwrite it; give another name",
                file=out,
                field=out_field,
            )


def refuse_replacing_input(out: Path, given: Path, given_flag: str, out_flag: str) -> None:
    """A UserError if the folder ``out``, which the command replaces whole, holds the input
    ``given`` (``convert-gguf models/m/m.gguf models/m --overwrite``): it would be deleted."""
    if out.exists() and given.resolve().is_relative_to(out.resolve()):
        raise UserError(
            f"holds the {given_flag} {given}: replacing the folder would delete it; move the "
            "file out first or give another folder",
            file=out,
            field=out_flag,
        )


def require_writable_output(
    path: str | os.PathLike, field: str | None = None, folder: bool = False
) -> Path:
    """Check, before any work, that the output ``path`` (a file, or a ``folder``) can be made:
    a UserError naming the file in the way (``out/x.jsonl`` under a file ``out``; the OS says
    "File exists" or "Not a directory", after the work, of a temporary name) or the folder that
    cannot be written (a read-only mount, permissions)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        wanted = "is a file; give a folder" if folder else "is a folder; give a file name"
        raise UsageError(wanted, file=path, field=field)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if existing != path and not existing.is_dir():
        raise UserError(
            f"cannot be created: {existing} is a file, not a folder", file=path, field=field
        )
    if not os.access(existing if existing.is_dir() else existing.parent, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot be written ({existing} is read-only to this user)", file=path, field=field
        )
    return path


def not_utf8(err: UnicodeDecodeError, of: str = "the line") -> str:
    """``not UTF-8 (byte 198 of the line is 0xff: ...)``: "byte 198" alone read as a byte's value
    as well as its place; the value tells Latin-1 (0xe9) from a binary file (0x00)."""
    return (f"not UTF-8 (byte {err.start + 1} of {of} is 0x{err.object[err.start]:02x}: save the "
            "file as UTF-8)")  # fmt: skip


def require_file(path: str | os.PathLike, what: str, field: str | None = None) -> Path:
    """``path`` as a Path if it is a file, else a ``UserError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {not_a_file_state(path)}", file=path, field=field)
    return path


def not_a_file_state(path: Path) -> str:
    """Why ``path`` is not a readable regular file, in words: /dev/null or a pipe exists, so
    "not found" would send the user looking for a typo that is not there."""
    if path.is_dir():
        return "is a folder, not a file"
    if path.exists():
        return "is not a regular file (a device, pipe or socket)"
    return "not found"


def require_model_folder(path: str | os.PathLike, field: str, need: str = "model") -> Path:
    """Check a local model or tokenizer folder before transformers reads it.

    ``need``: "model" (config.json), "tokenizer" (tokenizer files) or "both". A run folder given
    instead of its ``final/`` is named as such; a missing folder is not taken for a hub name.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"folder not found{_install_hint(path)}", file=path, field=field)
    if path.suffix == ".gguf" and path.is_file():
        raise UserError(
            f"a GGUF file: convert it first (reflectioncoder convert-gguf {path} FOLDER)",
            file=path,
            field=field,
        )
    if not path.is_dir():
        raise UserError("expected a model folder, got a file", file=path, field=field)
    if (path / "final").is_dir() and not (path / "config.json").is_file():
        raise UserError(
            f"this is a run folder; its trained model is {path / 'final'}", file=path, field=field
        )
    has_model = (path / "config.json").is_file()
    if not has_model:  # a checkpoint, or a run that has no final model yet: its models
        models = sorted(path.glob("model/config.json")) or sorted(
            path.glob("checkpoints/step-*/model/config.json")
        )
        if models:
            raise UserError(
                f"not a model folder; the model in it: {models[-1].parent}", file=path, field=field
            )
    has_tokenizer = any(
        (path / name).is_file()
        for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    )
    if need in ("model", "both") and not has_model:
        raise UserError(
            "no config.json here: not a Hugging Face model folder", file=path, field=field
        )
    if need in ("tokenizer", "both") and not has_tokenizer:
        raise UserError("no tokenizer files here (tokenizer.json)", file=path, field=field)
    names = (_MODEL_JSON if need != "tokenizer" else ()) + (
        _TOKENIZER_JSON if need != "model" else ()
    )
    for name in names:
        _require_json(path / name, field)
    if need != "tokenizer":
        _require_weights(path, field)
    return path


def _install_hint(path: Path) -> str:
    """How to get ``path`` when it is where ``install-model`` puts a model (the smollm2
    preset's, README's evaluate command)."""
    from reflectioncoder.install_model import MODELS, default_folder

    for name in MODELS:
        if path.resolve() == default_folder(name).resolve():
            return f": install it with `reflectioncoder install-model {name}`"
    return ""


_MODEL_JSON = ("config.json", "generation_config.json", "model.safetensors.index.json")
_TOKENIZER_JSON = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def _require_json(path: Path, field: str) -> None:
    """A model folder's JSON file that does not parse, named with its line and column
    (transformers' own errors name neither the file nor the folder)."""
    if not path.is_file():
        return
    try:
        json.loads(path.read_bytes())
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text ({err.reason})", file=path, field=field) from err
    except json.JSONDecodeError as err:
        raise UserError(
            f"invalid JSON: {err.msg} (a damaged file?)",
            file=path,
            line=err.lineno,
            column=err.colno,
            field=field,
        ) from err


def _require_weights(path: Path, field: str) -> None:
    """Each safetensors file of the folder has a whole header that covers the file (a file cut
    short by a copy or a download shows here, named, instead of as safetensors' own error)."""
    from safetensors import SafetensorError, safe_open

    index = path / "model.safetensors.index.json"
    shards = (
        set(json.loads(index.read_bytes()).get("weight_map", {}).values())
        if index.is_file()
        else set()
    )
    for shard in sorted(shards):
        if not (path / shard).is_file():
            raise UserError(
                f"{shard} is listed by {index.name} but missing", file=path, field=field
            )
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), "np"):
                pass
        except (SafetensorError, OSError) as err:
            raise UserError(
                f"unreadable weights (damaged or cut short?): {err}", file=file, field=field
            ) from err


def ctrl_c_to_main_thread() -> None:
    """Initializer of every worker thread pool: this thread never takes SIGINT, so a Ctrl-C
    lands on the main thread, the one Python raises KeyboardInterrupt in and the one waiting on
    the pool (a lock wait is woken only by a signal to its own thread); the sandboxed children
    the thread forks start with it held (eval.sandbox releases it in their own session)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
