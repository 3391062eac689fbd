"""MultiPL-E's languages, one declarative table (``LANGUAGES``): for each, the Debian packages
that provide its toolchain (``reflectioncoder eval-setup`` installs them), the executables it
needs, the host paths the toolchain reads (for a sandbox that binds only those), its build and
run command, where its nonce goes, its pass rule's extras and its sandbox limits. Languages run
only where their toolchain is on the machine: ``available_languages`` says which, and
``toolchain_problem`` why not.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from reflectioncoder.eval.sandbox import toolchain_binds

__all__ = [
    "LANGUAGES",
    "Language",
    "available_languages",
    "forget_probes",
    "rust_sysroot",
    "scala_helper_dir",
    "setup_packages",
    "toolchain_env",
    "toolchain_problem",
]

JAVATUPLES_JAR = "/usr/share/java/javatuples.jar"  # Debian's libjavatuples-java
SCALA_LIBRARY_JAR = "/usr/share/java/scala-library.jar"  # Debian's scala


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
    # the tests' checks made the scorer's own, so that a completion redefining a check by its
    # usual name gains nothing: (text, replacement) pairs applied to the tests in order, and
    # code put before the program (it runs before any of the completion's)
    checks: tuple[tuple[str, str], ...] = ()
    prelude: str = ""
    rewrite: Callable[[str], str] | None = None  # of the tests, after ``checks``
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

# The checks of C++, C# and JS/TS tests, the scorer's own (``Language.checks``; round 9: a wrong
# completion that #defined assert away, cleared C#'s trace listeners, or patched node:assert
# passed). C++: <assert.h> again (it defines assert anew at each inclusion) after undoing what
# would switch it off; C#: mono's Debug.Assert reports to the trace listeners and goes on (the
# run then failed on stderr), so the tests call a method of their own class that ends the run
# (a completion declaring one of that name does not compile); JS/TS: node:assert taken and
# frozen before the completion's code runs, and the tests' require of it replaced by that
_CPP_ASSERT = "#undef NDEBUG\n#undef assert\n#undef __assert_fail\n#include <assert.h>\n"
_CS_ASSERT = (
    "static void RcAssert(bool ok) {\n"
    '        if (!ok) { Console.Error.WriteLine("DEBUG ASSERTION FAILED"); Environment.Exit(1); }\n'
    "    }\n    "
)
_JS_ASSERT = "const rc_assert = Object.freeze(require('node:assert'));\n"
_JS_CHECKS = (("require('node:assert')", "rc_assert"),)


def java_expected_first(tests: str) -> str:
    """Java's ``assert(A.equals(B));`` lines as ``assert(java.util.Objects.equals(B, A));``: the
    expected value's own ``equals`` (a JDK or javatuples class the tests build) judges what
    the completion returned, not the returned object's (round 9: round 7's ArrayList whose
    ``equals`` says yes to everything passed wrong; the JDK's collections compare element by
    element with the expected elements' ``equals``). A line of another shape is left as is."""
    lines = []
    for line in tests.split("\n"):
        found = re.fullmatch(r"(\s*)assert\((.*)\);(\s*)", line)
        parts = _receiver_and_argument(found.group(2)) if found else None
        if parts:
            line = f"{found.group(1)}assert(java.util.Objects.equals({parts[1]}, {parts[0]}));"
        lines.append(line)
    return "\n".join(lines)


def _receiver_and_argument(text: str) -> tuple[str, str] | None:
    """``(A, B)`` where ``text`` is exactly ``A.equals(B)`` at the top level (string and char
    literals skipped), else None."""
    depth, quote, i, opened, closed = 0, "", 0, -1, -1
    while i < len(text):
        ch = text[i]
        if quote:
            i += 2 if ch == "\\" else 1
            quote = "" if ch == quote else quote
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "([{":
            if depth == 0 and ch == "(" and text.endswith(".equals", 0, i):
                opened = i
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0 and opened >= 0 and closed < opened:
                closed = i
        i += 1
    if opened < 0 or depth != 0 or closed != len(text) - 1:
        return None
    return text[: opened - len(".equals")], text[opened + 1 : closed]


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
        # assert as <assert.h> defines it, whatever the completion #defined
        checks=(("int main() {", _CPP_ASSERT + "int main() {"),),
        memory_mb=2048, build_s=60,
    ),
    "cs": Language(
        "Problem.cs",
        "mcs -d:DEBUG -r:System.Numerics.dll -out:{work}/Problem.exe {src}/Problem.cs >&2 && "
        "{run} mono {work}/Problem.exe",
        ("mcs", "mono"), ("mono-mcs", "mono-runtime"),
        'Console.WriteLine(System.IO.File.ReadAllText("/dev/fd/3"));', "brace-2",
        binds=("/etc/mono",),
        # mono reports a failed Debug.Assert on this listener and goes on with exit status 0
        env=(("MONO_TRACE_LISTENER", "Console.Error"),),
        fail_marks=("DEBUG ASSERTION FAILED", "DefaultTraceListener.Fail", "Unhandled Exception"),
        checks=(("public static void Main(", _CS_ASSERT + "public static void Main("),
                ("Debug.Assert(", "RcAssert(")),
        memory_mb=2048, processes=64, build_s=60,
    ),
    "d": Language(
        "main.d",
        "ldc2 -unittest -od={work} -of={work}/main {src}/main.d && {run} {work}/main",
        ("ldc2",), ("ldc",),
        # core.stdc, not Phobos: importing std.file and std.stdio adds seconds of compile time
        "unittest { import core.stdc.stdio : fopen, fgets, puts; char[128] rc_b; "
        'auto rc_f = fopen("/dev/fd/3", "r"); if (rc_f && fgets(rc_b.ptr, rc_b.length, rc_f)) '
        "puts(rc_b.ptr); }",
        binds=("/etc/ldc2.conf",), memory_mb=2048, build_s=90,
    ),
    "go": Language(
        "main_test.go",
        # compiled once into a test binary (what `go test` runs), then run under the limit
        "cp {src}/main_test.go {work}/ && cd {work} && GOCACHE={work}/.gocache GOPATH={work}/go "
        "GO111MODULE=off go test -c -o {work}/main.test ./main_test.go && "
        "{run} {work}/main.test -test.v",
        ("go",), ("golang-go",),
        # the scorer's own TestMain: the nonce only when every test passed; a completion that
        # declares one (to exit 0 through testing.Main after failing tests) does not compile
        'func TestMain(m *testing.M) {\n\tif m.Run() == 0 {\n\t\tfmt.Println("{nonce}")\n\t}\n}',
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
        rewrite=java_expected_first,
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
        checks=_JS_CHECKS, prelude=_JS_ASSERT,
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
        'cat("\\n", readLines("/dev/fd/3", warn = FALSE), "\\n", sep = "")',
        binds=("/etc/R",), memory_mb=2048,  # R_HOME/etc links there
    ),
    "rb": Language(
        "main.rb", "{run} ruby {src}/main.rb", ("ruby",), ("ruby", "ruby-test-unit"),
        # test-unit runs its cases at exit; this one sorts after every test_<name> case and
        # prints only when none failed (test-unit goes on after a failure: an at_exit exit!(0)
        # made a failed run exit 0 after the nonce, round 9)
        "class TestHumanEval\n  def test_zzzz_rc_nonce\n"
        "    puts \"\\n\" + IO.new(3).read if current_result.passed?\n  end\nend",
        memory_mb=1024,
        library="test-unit", probe=("ruby", "-e", "gem 'test-unit'"),
    ),
    "rkt": Language(
        "main.rkt", "{run} racket {src}/main.rkt", ("racket",), ("racket",),
        '(displayln (file->string "/dev/fd/3"))', binds=("/etc/racket",),
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
        checks=(("assert_eq!(", "::std::assert_eq!("),),  # no macro_rules! shadows a path
        memory_mb=2048, build_s=60,
    ),
    "scala": Language(
        "Problem.scala",
        # MultiPL-E runs `scala -cp . Problem`: the same main on the same JVM, without the
        # runner script and its MainGenericRunner in front (seconds under load)
        # {helper}: RcNonce, compiled once on the host (scala_helper_dir): the program calls
        # it, so scalac types no java.io and each sample compiles what it did before fd 3
        f"scalac {_JAVAC_JVM} -cp {{helper}} -d {{work}} {{src}}/Problem.scala && "
        f"{{run}} java {_JVM} -cp {{work}}:{SCALA_LIBRARY_JAR}:{{helper}} Problem",
        ("scalac", "java"), ("scala",),
        "RcNonce.print()",
        "brace-2",
        checks=(("assert(", "_root_.scala.Predef.assert("),),  # no member shadows _root_
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
        checks=_JS_CHECKS, prelude=_JS_ASSERT,
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


def toolchain_env(language: str) -> tuple[dict[str, str], list[str]]:
    """The environment a language's commands need, and the host paths to bind for them: the
    directories of its programs and libraries, never a home folder (``CARGO_HOME`` keeps
    registry tokens, ``RUSTUP_HOME`` its settings, ``~`` an ``.npmrc``...)."""
    lang = LANGUAGES[language]
    env = dict(lang.env)
    if language == "rs":  # the toolchain's sysroot only (its rustc, libraries and linker)
        sysroot = rust_sysroot()
        binds = [sysroot] if sysroot else []
    else:
        binds = toolchain_binds(lang.needs)
    binds += [p for g in lang.binds for p in glob.glob(g)]
    if "{helper}" in lang.command:
        binds.append(scala_helper_dir())
    return env, binds


# Reads the run's nonce from descriptor 3 (java.io, loaded with the JVM: NIO's classes cost a
# run a class-loading pause) and prints it. Compiled once, so no sample's scalac types it.
SCALA_NONCE_HELPER = """object RcNonce {
  def print(): Unit = {
    val b = new Array[Byte](128)
    val n = new java.io.FileInputStream("/dev/fd/3").read(b)
    println(new String(b, 0, if (n > 0) n else 0))
  }
}
"""


@cache
def scala_helper_dir() -> str:
    """The folder holding RcNonce's class files, built once per helper source on the host by a
    fixed, trusted command (``scalac``) into the cache; bound read-only into each Scala box."""
    from reflectioncoder.eval.expected import cache_dir

    digest = hashlib.sha256(SCALA_NONCE_HELPER.encode()).hexdigest()[:16]
    folder = cache_dir().parent / "multiple" / f"scala-nonce-{digest}"
    if (folder / "RcNonce.class").is_file():
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        source = Path(tmp, "RcNonce.scala")
        source.write_text(SCALA_NONCE_HELPER)
        out = Path(tmp, "classes")
        out.mkdir()
        argv = ["scalac", *_JAVAC_JVM.split(), "-d", str(out), str(source)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if done.returncode != 0 or not (out / "RcNonce.class").is_file():
            raise RuntimeError(f"scalac could not build the nonce helper: {done.stderr[-500:]}")
        out.chmod(0o755)
        try:
            os.rename(out, folder)
        except OSError:  # another process built it first
            if not (folder / "RcNonce.class").is_file():
                raise
    return str(folder)


@cache
def rust_sysroot() -> str | None:
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
