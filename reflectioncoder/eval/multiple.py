"""MultiPL-E scoring: ``prompt + completion + "\\n" + tests`` compiled and run in the sandbox.

A program passes when it exits with status 0 within the time limit (MultiPL-E's own rule: its
tests are assertions that abort). Languages run only where their toolchain is on the machine;
``available_languages`` says which, and ``toolchain_problem`` why not.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reflectioncoder.eval.sandbox import (
    _harness_source,
    python_env,
    run_sandboxed,
    toolchain_binds,
)
from reflectioncoder.eval.tasks import MultiplETask

__all__ = [
    "LANGUAGES",
    "MultiplEResult",
    "available_languages",
    "run_program",
    "score_multiple_samples",
    "toolchain_problem",
]


@dataclass(frozen=True)
class Language:
    """How to build and run one language: ``command`` runs in ``sh -c`` in the sandbox, with
    ``{src}`` (read-only dir holding ``file``) and ``{work}`` (writable cwd)."""

    file: str
    command: str
    needs: tuple[str, ...]
    memory_mb: int = 4096
    timeout_s: float = 30.0
    processes: int = 64


LANGUAGES: dict[str, Language] = {
    # through the harness: its audit guard and seccomp filter in the fallback level
    "python": Language(
        "main.py", "{python} -I -B {src}/harness.py --run {src}/main.py", (), 1024, 15.0
    ),
    "cpp": Language(
        "main.cpp", "g++ -std=c++17 -o {work}/a.out {src}/main.cpp && {work}/a.out", ("g++",)
    ),
    "java": Language(
        "Problem.java",
        "javac -encoding UTF-8 -d {work} {src}/Problem.java && java -ea -Xss64m -cp {work} Problem",
        ("javac", "java"),
        memory_mb=16384,  # the JVM reserves large virtual ranges; RLIMIT_AS counts them
        processes=256,
    ),
    "js": Language("main.js", "node {src}/main.js", ("node",), memory_mb=16384),
    "rs": Language(
        "main.rs", "rustc --edition 2021 -o {work}/main {src}/main.rs && {work}/main", ("rustc",)
    ),
    "go": Language(
        "main_test.go",
        "cp {src}/main_test.go {work}/ && cd {work} && GOCACHE={work}/.gocache GOPATH={work}/go "
        "GO111MODULE=off go test ./main_test.go",
        ("go",),
        memory_mb=16384,
        processes=256,
    ),
    "php": Language("main.php", "php {src}/main.php", ("php",)),
    "sh": Language("main.sh", "bash {src}/main.sh", ("bash",)),
}

_JAVATUPLES_IMPORT = re.compile(r"^import org\.javatuples\.\*;\n", re.M)


def _javatuples_jar() -> str | None:
    hits = glob.glob("/usr/share/java/javatuples*.jar") + glob.glob(
        "/root/.m2/repository/org/javatuples/**/*.jar", recursive=True
    )
    return hits[0] if hits else None


def toolchain_problem(language: str) -> str | None:
    """None when ``language`` can run here, else a sentence saying why not."""
    lang = LANGUAGES.get(language)
    if lang is None:
        supported = ", ".join(LANGUAGES)
        return f"multiple-{language}: skipped, no runner for this language (supported: {supported})"
    missing = [tool for tool in lang.needs if shutil.which(tool) is None]
    if missing:
        return f"multiple-{language}: skipped, toolchain not installed ({', '.join(missing)})"
    return None


def available_languages() -> list[str]:
    return [name for name in LANGUAGES if toolchain_problem(name) is None]


def _python_entry_point(prompt: str) -> str:
    names = re.findall(r"^def (\w+)\(", prompt, re.M)
    if not names:
        raise ValueError("multiple-python: no function definition in the prompt")
    return names[-1]


def program_text(task: MultiplETask, completion: str) -> str:
    """The whole program MultiPL-E runs."""
    text = task.prompt + completion + "\n" + task.tests
    if task.language == "python":
        text += f"\ncheck({_python_entry_point(task.prompt)})\n"
    if task.language == "java" and _javatuples_jar() is None:
        # Without the jar the import alone breaks every program; tasks that use tuples fail.
        text = _JAVATUPLES_IMPORT.sub("", text)
    return text


@dataclass
class MultiplEResult:
    task_id: str
    completion_id: int
    status: str  # pass | fail | timeout
    exit_code: int | None
    stderr_tail: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def run_program(language: str, program: str, *, timeout_s: float | None = None):
    """Build and run one program; returns the sandbox's ExecResult."""
    problem = toolchain_problem(language)
    if problem:
        raise RuntimeError(problem)
    lang = LANGUAGES[language]
    command = lang.command.replace("{python}", sys.executable)
    jar = _javatuples_jar()
    if language == "java" and jar:
        command = command.replace("-d {work}", f"-cp {jar} -d {{work}}").replace(
            "-cp {work}", f"-cp {{work}}:{jar}"
        )
    env, files = {}, {lang.file: program}
    if language == "rs":  # rustup's proxies find their toolchain through these
        for var, default in (("RUSTUP_HOME", "~/.rustup"), ("CARGO_HOME", "~/.cargo")):
            path = os.environ.get(var) or os.path.expanduser(default)
            if os.path.isdir(path):
                env[var] = path
    binds = list(env.values())
    if language == "python":
        env.update(python_env())
        files["harness.py"] = _harness_source()
    return run_sandboxed(
        ["/bin/sh", "-c", command],
        env=env,
        ro_binds=[*toolchain_binds(lang.needs), *binds],  # bwrap binds nothing else
        files=files,
        timeout_s=timeout_s or lang.timeout_s,
        memory_mb=lang.memory_mb,
        max_processes=lang.processes,
        cpu_s=int((timeout_s or lang.timeout_s) * 2) + 1,  # compilers may use both cores
        output_limit=64 << 10,
    )


def score_multiple_samples(
    tasks: dict[str, MultiplETask],
    samples: Iterable[dict],
    *,
    parallel: int = 2,
    progress: Callable[[int], None] | None = None,
    timeout_s: float | None = None,
) -> list[MultiplEResult]:
    """Score samples (``task_id``, ``completion``: the text after the prompt)."""
    jobs = []
    counts: dict[str, int] = {}
    for n, s in enumerate(samples, 1):
        tid = s.get("task_id")
        if tid not in tasks:
            raise ValueError(f"samples:{n}:task_id: {tid!r} is not a task of this benchmark")
        if not isinstance(s.get("completion"), str):
            raise ValueError(f"samples:{n}:completion: must be a string")
        jobs.append((tid, counts.get(tid, 0), s["completion"]))
        counts[tid] = counts.get(tid, 0) + 1

    def one(job: tuple[str, int, str]) -> MultiplEResult:
        tid, cid, completion = job
        task = tasks[tid]
        res = run_program(task.language, program_text(task, completion), timeout_s=timeout_s)
        status = "timeout" if res.timed_out else ("pass" if res.ok else "fail")
        if progress:
            progress(1)
        return MultiplEResult(tid, cid, status, res.exit_code, res.stderr[-500:], res.duration_s)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(one, jobs))
