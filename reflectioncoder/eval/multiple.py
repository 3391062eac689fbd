"""MultiPL-E scoring: ``prompt + completion + "\\n" + tests`` compiled and run in the sandbox.

Each language follows MultiPL-E's own evaluator (nuprl/MultiPL-E ``evaluation/src/eval_*.py``):
its file name, compiler and runtime command, and its pass rule. The rule is the exit status
(the tests are assertions that abort), plus, where the runtime exits 0 after a failed test,
what MultiPL-E also reads: stderr for C# (mono's ``Debug.Assert``), Racket and Scala, an
``ERROR`` line for Perl. On top of that every program prints a fresh nonce after its last
assertion, and a run that does not print it fails: a completion that exits 0 before the tests
ran (``System.exit(0)``, ``os.exit(0)``, ``quit()``) does not pass.

Everything about a language (commands, packages, limits) is one row of ``LANGUAGES``
(``multiple_languages``); this module builds each sample's program, runs it and judges it.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reflectioncoder.errors import ctrl_c_to_main_thread
from reflectioncoder.eval.multiple_languages import (
    LANGUAGES,
    Language,
    available_languages,
    rust_sysroot,
    scala_helper_dir,
    setup_packages,
    toolchain_env,
    toolchain_problem,
)
from reflectioncoder.eval.samples import Sample, number_samples
from reflectioncoder.eval.sandbox import harness_files, python_env, run_sandboxed
from reflectioncoder.eval.tasks import MultiplETask

__all__ = [
    "LANGUAGES",
    "Language",
    "MultiplEResult",
    "available_languages",
    "command_line",
    "toolchain_env",
    "program_files",
    "program_text",
    "run_program",
    "score_multiple_samples",
    "setup_packages",
    "toolchain_problem",
    "verdict",
]

_SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
# ``timeout -v`` says this on stderr when it kills the run at its limit.
_RUN_TIMEOUT_NOTE = "timeout: sending signal KILL"


# a top-level call of the tests' check function (``check(f)``, ``test_check()``)
_CALLS_CHECK = re.compile(r"^(check\(\w+\)|test_check\(\))", re.MULTILINE)


def _python_entry_point(prompt: str) -> str:
    names = re.findall(r"^def (\w+)\(", prompt, re.M)
    if not names:
        raise ValueError("multiple-python: no function definition in the prompt")
    return names[-1]


def _insert_before_brace(tests: str, statement: str, nth: int) -> str:
    """``statement`` before the ``nth`` closing brace from the end (the test function's)."""
    at = len(tests)
    for _ in range(nth):
        at = tests.rfind("}", 0, at)
        if at < 0:
            raise ValueError("the tests have no closing brace to put the nonce before")
    return tests[:at] + "    " + statement + "\n" + tests[at:]


def _tests_with_nonce(lang: Language, tests: str, nonce: str) -> str:
    statement = lang.nonce.replace("{nonce}", nonce)
    if lang.nonce_at.startswith("brace-"):
        return _insert_before_brace(tests, statement, int(lang.nonce_at.removeprefix("brace-")))
    if lang.nonce_at == "lua":
        exit_call = "os.exit(lu.LuaUnit.run())"
        if exit_call not in tests:
            raise ValueError(f"the lua tests do not end with {exit_call}")
        head, _, tail = tests.rpartition(exit_call)
        # only when every test passed: a completion that replaces os.exit gains nothing
        run = "local rc_status = lu.LuaUnit.run()\n"
        return f"{head}{run}if rc_status == 0 then {statement} end\nos.exit(rc_status){tail}"
    return tests.rstrip("\n") + "\n" + statement + "\n"


def program_text(task: MultiplETask, completion: str, nonce: str = "") -> str:
    """The whole program MultiPL-E runs; with ``nonce``, printing it after the last test."""
    tests = task.tests
    if task.language == "python" and not _CALLS_CHECK.search(tests):
        # MultiPL-E's own files end with the call; a copy without it gets it, once
        tests += f"\ncheck({_python_entry_point(task.prompt)})\n"
    lang = LANGUAGES[task.language]
    for text, replacement in lang.checks:  # the tests' checks, the scorer's own
        tests = tests.replace(text, replacement)
    if lang.rewrite is not None:
        tests = lang.rewrite(tests)
    if nonce:
        tests = _tests_with_nonce(lang, tests, nonce)
    return lang.prelude + task.prompt + completion + "\n" + tests


@dataclass
class MultiplEResult:
    """Verdict of one completion (its fields in the order of the details table's row)."""

    task_id: str
    completion_id: int
    status: str  # pass | fail | timeout
    exit_code: int | None
    reason: str  # why a run that exited 0 still failed
    stderr_tail: str
    stdout_tail: str  # of a run that did not pass (tsc prints its errors there)
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def command_line(language: str, run_s: float, nonce_fd: int | None = None) -> str:
    """The shell command of one sample (``{src}``/``{work}`` still to fill). ``nonce_fd``: the
    descriptor holding the run's nonce, given to the run as its descriptor 3 and closed for
    the build (compile-time code never holds it)."""
    lang = LANGUAGES[language]
    command = lang.command.replace("{python}", sys.executable)
    if "{rustc}" in command:
        command = command.replace("{rustc}", os.path.join(rust_sysroot() or "/usr", "bin/rustc"))
    if "{helper}" in command:
        command = command.replace("{helper}", scala_helper_dir())
    if nonce_fd is not None:
        build, run, rest = command.partition("{run}")
        run += rest + (f" 3<&{nonce_fd} {nonce_fd}<&-" if nonce_fd != 3 else "")
        build = build.strip().removesuffix("&&").strip()
        command = f"{{ {build} ; }} {nonce_fd}<&- && {run}" if build else run
    # SIGKILL: some runtimes (Racket) turn SIGTERM into an exception a test framework catches
    return command.replace("{run}", f"timeout -v -s KILL {run_s:g}")


def nonce_in_source(language: str) -> bool:
    """Whether the language's nonce statement carries the nonce itself (in the source, so in
    a binary or class file too) rather than reading it from descriptor 3 at run time: Julia
    and Swift (not packaged by Debian 12, never run here), and Go, whose prompt imports no
    file API a completion could read the source with."""
    return "{nonce}" in LANGUAGES[language].nonce


def program_files(language: str, program: str) -> dict[str, str | bytes]:
    """The files of one run: the program, and for Python the sandbox's runner that runs it."""
    files: dict[str, str | bytes] = {LANGUAGES[language].file: program}
    if language == "python":
        files.update(harness_files())
    return files


def run_program(language: str, program: str, *, run_s: float | None = None, nonce: str = ""):
    """Build and run one program (one compile, one run); returns the sandbox's ExecResult.
    ``nonce``: what the run reads on its descriptor 3 (a pipe whose write end is closed before
    the program starts: nothing in the source, the binary or the environment holds it)."""
    problem = toolchain_problem(language)
    if problem:
        raise RuntimeError(problem)
    lang = LANGUAGES[language]
    run_s = run_s or lang.run_s
    env, binds = toolchain_env(language)
    if language == "python":  # the harness's guard is on in the fallback level
        env.update(python_env())
    wall_s = lang.build_s + run_s + 5
    read_end = None
    if nonce and not nonce_in_source(language):
        read_end, write_end = os.pipe()
        os.write(write_end, nonce.encode())
        os.close(write_end)  # the sandbox hands the pipe to the program's uid
    try:
        return run_sandboxed(
            # bash: dash redirects only descriptors 0-9, and the pipe's number may be higher
            [_SHELL, "-c", command_line(language, run_s, read_end)],
            env=env,
            ro_binds=binds,  # bwrap binds nothing else beyond the system's directories
            files=program_files(language, program),
            timeout_s=wall_s,
            memory_mb=lang.memory_mb,
            max_processes=lang.processes,
            cpu_s=wall_s,  # counted by the run's cgroup, which gets one core
            output_limit=64 << 10,
            pass_fds=() if read_end is None else (read_end,),
        )
    finally:
        if read_end is not None:
            os.close(read_end)


def verdict(lang: Language, res, nonce: str) -> tuple[str, str]:
    """(status, reason) of one run under ``lang``'s pass rule."""
    # coreutils `timeout` kills itself: 137 from a shell (bwrap), -9 from its parent (fallback)
    killed = res.exit_code in (137, -9)
    if res.timed_out or (killed and _RUN_TIMEOUT_NOTE in res.stderr):
        return "timeout", ""
    if not res.ok:  # how it ended, as the sandbox saw it (a signal, the memory limit, ...)
        return "fail", res.ending.describe() if res.ending else ""
    if lang.stderr_fails and res.stderr.strip():
        return "fail", "stderr not empty"
    marks = [m for m in lang.fail_marks if m in res.stdout or m in res.stderr]
    if marks:
        return "fail", f"{marks[0]!r} in the output"
    # the end of a line: output the program left unfinished may precede it, while the
    # statement that prints it (a program echoing its source) ends in a quote
    if not any(line.rstrip().endswith(nonce) for line in res.stdout.splitlines()):
        return "fail", "exited before its last test"
    return "pass", ""


def score_multiple_samples(
    tasks: dict[str, MultiplETask],
    samples: Iterable[dict],
    *,
    parallel: int = 2,
    progress: Callable[[int], None] | None = None,
    timeout_s: float | None = None,
) -> list[MultiplEResult]:
    """Score samples (``task_id``, ``completion``: the text after the prompt). ``timeout_s``
    replaces the language's run limit (compilation keeps its own budget)."""
    jobs = number_samples(tasks, samples, solutions=False)

    def one(sample: Sample) -> MultiplEResult:
        task = tasks[sample.task_id]
        # fresh per run, and (see nonce_in_source) not in the program: read at its end from
        # descriptor 3, which a completion written for this scorer can read too (the table
        # in docs/evaluation.md says where that and other forgeries hold)
        nonce = f"rc-done-{uuid.uuid4().hex}"
        program = program_text(task, sample.text, nonce)
        res = run_program(task.language, program, run_s=timeout_s, nonce=nonce)
        status, reason = verdict(LANGUAGES[task.language], res, nonce)
        if progress:
            progress(1)
        return MultiplEResult(
            task.task_id,
            sample.completion_id,
            status,
            res.exit_code,
            reason,
            res.stderr[-500:],
            "" if status == "pass" else res.stdout[-500:],
            res.duration_s,
        )

    with ThreadPoolExecutor(max(1, parallel), initializer=ctrl_c_to_main_thread) as pool:
        return list(pool.map(one, jobs))
