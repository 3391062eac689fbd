"""MultiPL-E scoring: ``prompt + completion + "\\n" + tests`` compiled and run in the sandbox.

Each language follows MultiPL-E's own evaluator (nuprl/MultiPL-E ``evaluation/src/eval_*.py``):
its file name, compiler and runtime command, and its pass rule. The rule is the exit status
(the tests are assertions that abort), plus, where the runtime exits 0 after a failed test,
what MultiPL-E also reads: stderr for C# (mono's ``Debug.Assert``), Racket and Scala, an
``ERROR`` line for Perl. On top of that every program prints a fresh nonce after its last
assertion, and a run that does not print it fails: a completion that exits 0 before the tests
ran (``System.exit(0)``, ``os.exit(0)``, ``quit()``) does not pass.

One table, ``LANGUAGES``, holds everything about a language: the Debian packages that provide
its toolchain (``reflectioncoder eval-setup`` installs them), the executables it needs, the
host paths the toolchain reads (for a sandbox that binds only those), the commands, and the
sandbox limits. Languages run only where their toolchain is on the machine;
``available_languages`` says which, and ``toolchain_problem`` why not.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

from reflectioncoder.errors import ctrl_c_to_main_thread
from reflectioncoder.eval.samples import Sample, number_samples
from reflectioncoder.eval.sandbox import (
    SANDBOX_UID,
    harness_files,
    python_env,
    run_sandboxed,
    toolchain_binds,
)
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
]

JAVATUPLES_JAR = "/usr/share/java/javatuples.jar"  # Debian's libjavatuples-java
SCALA_LIBRARY_JAR = "/usr/share/java/scala-library.jar"  # Debian's scala
_SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
# ``timeout -v`` says this on stderr when it kills the run at its limit.
_RUN_TIMEOUT_NOTE = "timeout: sending signal KILL"


@dataclass(frozen=True)
class Language:
    """How one MultiPL-E language is built, run and judged.

    ``command`` runs in ``sh -c`` inside the sandbox: ``{src}`` is the read-only directory
    holding ``file``, ``{work}`` the writable cwd, ``{run}`` the prefix that limits the run
    phase to ``run_s`` seconds (compilation gets ``build_s`` more). ``nonce`` prints the run's
    nonce (``{nonce}``) in the language; ``nonce_at`` says where it goes: ``end`` of the
    program, before the ``brace-1``/``brace-2`` last closing brace (the test function's end),
    or ``lua`` (between luaunit's run and its ``os.exit``). ``stderr_fails`` / ``fail_marks``
    are MultiPL-E's extra rules for runtimes that exit 0 after a failed test.
    """

    file: str
    command: str
    needs: tuple[str, ...]  # executables that must be on PATH
    packages: tuple[str, ...]  # Debian packages that provide them (empty: none packaged)
    nonce: str
    nonce_at: str = "end"
    library: str = ""  # the test library the tests import, found by running ``probe``
    probe: tuple[str, ...] = ()
    binds: tuple[str, ...] = ()  # host paths (globs) it reads beyond /usr and /lib: bound ro
    env: tuple[tuple[str, str], ...] = ()
    stderr_fails: bool = False
    fail_marks: tuple[str, ...] = ()  # text in stdout or stderr that fails a run
    unavailable: str = ""  # why the toolchain cannot be installed from Debian's packages
    memory_mb: int = 4096  # the run's memory (cgroup) and each process's address space
    processes: int = 64  # pids cgroup: threads count too (JVM, Go)
    build_s: float = 0.0  # wall budget of the compile step
    run_s: float = 15.0  # wall limit of the run (MultiPL-E's default timeout)


# A small, fast-starting JVM: one GC thread, C1 only, small reserved ranges (3 GiB of address
# space is then enough), deep recursion as before.
_JVM_FLAGS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:CompressedClassSpaceSize=64m",
    "-XX:ReservedCodeCacheSize=32m",
    "-Xss64m",
    "-Xmx512m",
)
_JVM = " ".join(_JVM_FLAGS)
_JAVAC_JVM = " ".join("-J" + flag for flag in _JVM_FLAGS)

LANGUAGES: dict[str, Language] = {
    # through the harness: its audit guard and seccomp filter in the fallback level
    "python": Language(
        "main.py", "{run} {python} -I -B {src}/runner.pyc --run {src}/main.py", (), (),
        "import os as _rc_os; print(_rc_os.read(3, 256).decode())", memory_mb=1024,
    ),
    "cpp": Language(
        "main.cpp",
        "g++ -std=c++17 -o {work}/a.out {src}/main.cpp && {run} {work}/a.out",
        ("g++",), ("g++",),
        '{ std::ifstream rc_f("/dev/fd/3"); std::string rc_s; std::getline(rc_f, rc_s); '
        "std::cout << rc_s << std::endl; }",
        "brace-1",
        memory_mb=2048, build_s=60,
    ),
    "cs": Language(
        "Problem.cs",
        "mcs -d:DEBUG -r:System.Numerics.dll -out:{work}/Problem.exe {src}/Problem.cs >&2 && "
        "{run} mono {work}/Problem.exe",
        ("mcs", "mono"), ("mono-mcs", "mono-runtime"),
        'Console.WriteLine("{nonce}");', "brace-2",
        binds=("/etc/mono",),
        # mono reports a failed Debug.Assert on this listener and goes on with exit status 0
        env=(("MONO_TRACE_LISTENER", "Console.Error"),),
        fail_marks=("DEBUG ASSERTION FAILED", "DefaultTraceListener.Fail", "Unhandled Exception"),
        memory_mb=2048, processes=64, build_s=60,
    ),
    "d": Language(
        "main.d",
        "ldc2 -unittest -od={work} -of={work}/main {src}/main.d && {run} {work}/main",
        ("ldc2",), ("ldc",),
        'unittest { import core.stdc.stdio : puts; puts("{nonce}"); }',
        binds=("/etc/ldc2.conf",), memory_mb=2048, build_s=90,
    ),
    "go": Language(
        "main_test.go",
        # compiled once into a test binary (what `go test` runs), then run under the limit
        "cp {src}/main_test.go {work}/ && cd {work} && GOCACHE={work}/.gocache GOPATH={work}/go "
        "GO111MODULE=off go test -c -o {work}/main.test ./main_test.go && "
        "{run} {work}/main.test -test.v",
        ("go",), ("golang-go",), 'fmt.Println("{nonce}")', "brace-1",
        memory_mb=4096, processes=128, build_s=60,
    ),
    "java": Language(
        "Problem.java",
        f"javac {_JAVAC_JVM} -encoding UTF8 "
        f"-cp {JAVATUPLES_JAR} -d {{work}} {{src}}/Problem.java && "
        f"{{run}} java {_JVM} -ea -cp {{work}}:{JAVATUPLES_JAR} Problem",
        ("javac", "java"), ("default-jdk-headless", "libjavatuples-java"),
        "try { System.out.println(new String(java.nio.file.Files.readAllBytes("
        'java.nio.file.Paths.get("/dev/fd/3")))); } catch (Exception rc_e) { }',
        "brace-2",
        library=JAVATUPLES_JAR, probe=("test", "-f", JAVATUPLES_JAR),
        binds=("/etc/java-*",), memory_mb=3072, processes=128, build_s=60,
    ),
    "jl": Language(
        "main.jl", "{run} julia {src}/main.jl", ("julia",), (), 'println("{nonce}")',
        unavailable="Debian 12 does not package Julia; julialang.org has it",
        memory_mb=16384, processes=256,
    ),
    "js": Language(
        "main.js", "{run} node {src}/main.js", ("node",), ("nodejs",),
        'console.log(require("fs").readFileSync("/dev/fd/3", "utf8"));', memory_mb=2048,
    ),
    "lua": Language(
        "main.lua", "{run} lua5.4 {src}/main.lua", ("lua5.4",), ("lua5.4", "lua-unit"),
        'io.write(io.open("/dev/fd/3"):read("a"), "\\n")', "lua", memory_mb=1024,
        library="luaunit", probe=("lua5.4", "-e", "require('luaunit')"),
    ),
    "php": Language(
        "main.php", "{run} php {src}/main.php", ("php",), ("php-cli",),
        'echo "\\n", file_get_contents("php://fd/3"), "\\n";',
        binds=("/etc/php",), memory_mb=1024,
    ),
    "pl": Language(
        "main.pl", "{run} perl {src}/main.pl", ("perl",), ("perl", "libtest-deep-perl"),
        'open(my $rc_fh, "<&=", 3); print "\\n", <$rc_fh>, "\\n";', memory_mb=1024,
        fail_marks=("ERROR",), library="Test::Deep", probe=("perl", "-MTest::Deep", "-e", "1"),
    ),
    "r": Language(
        "main.r", "{run} Rscript {src}/main.r", ("Rscript",), ("r-base-core",),
        'cat("{nonce}\\n")', binds=("/etc/R",), memory_mb=2048,  # R_HOME/etc links there
    ),
    "rb": Language(
        "main.rb", "{run} ruby {src}/main.rb", ("ruby",), ("ruby", "ruby-test-unit"),
        # test-unit runs its cases at exit; this one sorts after every test_<name> case
        "class TestHumanEval\n  def test_zzzz_rc_nonce\n"
        "    puts \"\\n\" + IO.new(3).read\n  end\nend",
        memory_mb=1024,
        library="test-unit", probe=("ruby", "-e", "gem 'test-unit'"),
    ),
    "rkt": Language(
        "main.rkt", "{run} racket {src}/main.rkt", ("racket",), ("racket",),
        '(displayln "{nonce}")', binds=("/etc/racket",),
        library="rackunit", probe=("racket", "-l", "racket/base", "-l", "rackunit", "-e", "1"),
        stderr_fails=True,  # rackunit reports a failed check on stderr and exits 0
        memory_mb=2048, run_s=30,
    ),
    "rs": Language(
        "main.rs",
        # {rustc}: the toolchain's own compiler, not rustup's proxy (which reads RUSTUP_HOME)
        "{rustc} --edition 2021 -o {work}/main {src}/main.rs && {run} {work}/main",
        ("rustc",), ("rustc",),
        'println!("{}", std::fs::read_to_string("/dev/fd/3").unwrap_or_default());', "brace-1",
        memory_mb=2048, build_s=60,
    ),
    "scala": Language(
        "Problem.scala",
        # MultiPL-E runs `scala -cp . Problem`: the same main on the same JVM, without the
        # runner script and its MainGenericRunner in front (seconds under load)
        f"scalac {_JAVAC_JVM} -d {{work}} {{src}}/Problem.scala && "
        f"{{run}} java {_JVM} -cp {{work}}:{SCALA_LIBRARY_JAR} Problem",
        ("scalac", "java"), ("scala",), 'println("{nonce}")', "brace-2",
        library=SCALA_LIBRARY_JAR, probe=("test", "-f", SCALA_LIBRARY_JAR),
        binds=("/etc/java-*",), memory_mb=3072, processes=128, build_s=120,
        stderr_fails=True,  # MultiPL-E: exit 0 and nothing on stderr
    ),
    "sh": Language(
        "main.sh", "{run} bash {src}/main.sh", ("bash",), ("bash",), "echo; cat <&3; echo",
        memory_mb=1024,
    ),
    "swift": Language(
        "main.swift",
        "swiftc -o {work}/main {src}/main.swift && {run} {work}/main",
        ("swiftc",), (), 'print("{nonce}")',
        unavailable="Debian 12 does not package the Swift compiler (its `swift` is OpenStack's "
        "object store); swift.org has it",
        memory_mb=16384, processes=256, build_s=120,
    ),
    "ts": Language(
        "main.ts",
        # --skipLibCheck: the bundled lib .d.ts files are not re-checked (half of tsc's time)
        "tsc --target esnext --skipLibCheck --outDir {work} {src}/main.ts && "
        "{run} node {work}/main.js",
        ("tsc", "node"), ("node-typescript", "nodejs"),
        'console.log(require("fs").readFileSync("/dev/fd/3", "utf8"));',
        memory_mb=2048, build_s=60,
    ),
}  # fmt: skip


def toolchain_problem(language: str) -> str | None:
    """None when ``language`` can run here, else a sentence saying why not."""
    lang = LANGUAGES.get(language)
    if lang is None:
        supported = ", ".join(LANGUAGES)
        return f"multiple-{language}: skipped, no runner for this language (supported: {supported})"
    missing = [tool for tool in lang.needs if shutil.which(tool) is None]
    if not missing and lang.probe and not _probe_ok(lang.probe):
        missing.append(lang.library)
    if not missing:
        return None
    how = lang.unavailable or (
        f"`reflectioncoder eval-setup --languages {language}` installs " + " ".join(lang.packages)
    )
    return f"multiple-{language}: unavailable, {', '.join(missing)} not installed ({how})"


@cache
def _probe_ok(argv: tuple[str, ...]) -> bool:
    """Whether the toolchain finds its test library (a fixed, trusted command)."""
    try:
        return subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def forget_probes() -> None:
    """Probe again next time (after an install)."""
    _probe_ok.cache_clear()


def available_languages() -> list[str]:
    return [name for name in LANGUAGES if toolchain_problem(name) is None]


def setup_packages(languages: Iterable[str]) -> list[str]:
    """Debian packages still needed for ``languages`` (the sandbox's bubblewrap included)."""
    wanted = [] if shutil.which("bwrap") else ["bubblewrap"]
    for name in languages:
        if toolchain_problem(name) is not None:
            wanted += [p for p in LANGUAGES[name].packages if p not in wanted]
    return wanted


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
    if task.language == "python":
        tests += f"\ncheck({_python_entry_point(task.prompt)})\n"
    if nonce:
        tests = _tests_with_nonce(LANGUAGES[task.language], tests, nonce)
    return task.prompt + completion + "\n" + tests


@dataclass
class MultiplEResult:
    """Verdict of one completion (its fields in the order of the details table's row)."""

    task_id: str
    completion_id: int
    status: str  # pass | fail | timeout
    exit_code: int | None
    reason: str  # why a run that exited 0 still failed
    stderr_tail: str
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
        command = command.replace("{rustc}", os.path.join(_rust_sysroot() or "/usr", "bin/rustc"))
    if nonce_fd is not None:
        build, run, rest = command.partition("{run}")
        run += rest + (f" 3<&{nonce_fd} {nonce_fd}<&-" if nonce_fd != 3 else "")
        build = build.strip().removesuffix("&&").strip()
        command = f"{{ {build} ; }} {nonce_fd}<&- && {run}" if build else run
    # SIGKILL: some runtimes (Racket) turn SIGTERM into an exception a test framework catches
    return command.replace("{run}", f"timeout -v -s KILL {run_s:g}")


def nonce_in_source(language: str) -> bool:
    """Whether the language's nonce statement carries the nonce itself (in the source, so in
    a binary or class file too) rather than reading it from descriptor 3 at run time: the
    languages not tested here, and Go, whose prompt imports no file API a completion could
    read the source with."""
    return "{nonce}" in LANGUAGES[language].nonce


def toolchain_env(language: str) -> tuple[dict[str, str], list[str]]:
    """The environment a language's commands need, and the host paths to bind for them: the
    directories of its programs and libraries, never a home folder (``CARGO_HOME`` keeps
    registry tokens, ``RUSTUP_HOME`` its settings, ``~`` an ``.npmrc``...)."""
    lang = LANGUAGES[language]
    env = dict(lang.env)
    if language == "rs":  # the toolchain's sysroot only (its rustc, libraries and linker)
        sysroot = _rust_sysroot()
        binds = [sysroot] if sysroot else []
    else:
        binds = toolchain_binds(lang.needs)
    binds += [p for g in lang.binds for p in glob.glob(g)]
    return env, binds


@cache
def _rust_sysroot() -> str | None:
    """The active Rust toolchain's directory (``rustc --print sysroot``: under rustup,
    ``$RUSTUP_HOME/toolchains/<name>``), found once on the host by a fixed, trusted command."""
    try:
        out = subprocess.run(
            ["rustc", "--print", "sysroot"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = out.stdout.strip()
    return path if out.returncode == 0 and os.path.isdir(path) else None


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
        os.close(write_end)
        if os.geteuid() == 0:  # reopened as /dev/fd/3 by the box's uid: the pipe is its own
            os.fchown(read_end, SANDBOX_UID, SANDBOX_UID)
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


def _verdict(lang: Language, res, nonce: str) -> tuple[str, str]:
    """(status, reason) of one run under ``lang``'s pass rule."""
    if res.timed_out or (res.exit_code == 137 and _RUN_TIMEOUT_NOTE in res.stderr):
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
        status, reason = _verdict(LANGUAGES[task.language], res, nonce)
        if progress:
            progress(1)
        return MultiplEResult(
            task.task_id,
            sample.completion_id,
            status,
            res.exit_code,
            reason,
            res.stderr[-500:],
            res.duration_s,
        )

    with ThreadPoolExecutor(max(1, parallel), initializer=ctrl_c_to_main_thread) as pool:
        return list(pool.map(one, jobs))
