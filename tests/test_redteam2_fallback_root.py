"""The rlimits fallback started by root (a container where bubblewrap cannot make its
namespaces, or a machine without it): programs that are not Python ran as root, so a C++ or
shell completion could write and chown any file, make a device node, open a sysctl or its
parent's cgroup for writing, lower its OOM score below the scorer's and signal the scorer or a
sibling sample. Each attempt is made here by a completion through MultiPL-E's build-and-run
(``multiple.run_program``, what ``reflectioncoder evaluate --task multiple-*`` runs): now each
run is a uid of its own with no capability, and every attempt fails. The slow test makes the
central one (a file written outside the working dir) in every available language."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import uuid
from pathlib import Path

import pytest

from reflectioncoder.eval import multiple, sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")


@pytest.fixture
def fallback(monkeypatch) -> None:
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "rlimits")


@pytest.fixture
def host(tmp_path_factory):
    """A root-owned host folder (0755, as most of the machine is) holding a file to protect."""
    base = Path("/var/tmp") / f"rc-redteam2-{uuid.uuid4().hex}"
    base.mkdir(mode=0o755)
    (base / "victim").write_text("keep")
    (base / "victim").chmod(0o644)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def _untouched(base: Path) -> bool:
    victim = base / "victim"
    st = victim.stat()
    names = sorted(p.name for p in base.iterdir())
    return (
        victim.read_text() == "keep"
        and (st.st_uid, st.st_mode & 0o777) == (0, 0o644)
        and (names == ["victim"])
    )


def _sibling() -> sandbox.PreparedRun:
    """Another sample's run, waiting (its pid is what the attacker signals)."""
    return sandbox.PreparedRun(["/bin/sleep", "30"], cpu_s=30)


# each attempt prints "WORKED <name>" when it succeeds; the cgroup file is opened for
# appending and never written, the sysctl likewise (as root both opens succeed)
SHELL = r"""
try() {
  name=$1; shift
  if ( "$@" ) 2>/dev/null; then echo "WORKED $name"; else echo "refused $name"; fi
}
try write-outside sh -c 'echo x > {base}/new'
try append-victim sh -c 'echo x >> {base}/victim'
try chmod-victim chmod 777 {base}/victim
try chown-victim chown 1:1 {base}/victim
try mknod mknod {base}/disk b 8 0
try sysctl-open sh -c 'exec 9>>/proc/sys/kernel/core_pattern'
try cgroup-leave sh -c 'exec 9>>/sys/fs/cgroup/pids/cgroup.procs'
try oom-lower sh -c 'echo -1000 > /proc/self/oom_score_adj'
try signal-scorer kill -0 {scorer}
try signal-sibling kill -0 {sibling}
try stop-sibling-reads sh -c 'cat /proc/{sibling}/environ > /dev/null'
echo probed
"""

NATIVE = r"""
#include <cstdio>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
static void attempt(const char *name, int result) {
    std::printf("%s %s\n", result < 0 ? "refused" : "WORKED", name);
}
int main() {
    attempt("write-outside", open("{base}/new", O_WRONLY | O_CREAT, 0644));
    attempt("append-victim", open("{base}/victim", O_WRONLY | O_APPEND));
    attempt("chmod-victim", chmod("{base}/victim", 0777));
    attempt("chown-victim", chown("{base}/victim", 1, 1));
    attempt("mknod", mknod("{base}/disk", S_IFBLK | 0600, makedev(8, 0)));
    attempt("sysctl-open", open("/proc/sys/kernel/core_pattern", O_WRONLY | O_APPEND));
    attempt("cgroup-leave", open("/sys/fs/cgroup/pids/cgroup.procs", O_WRONLY | O_APPEND));
    attempt("signal-scorer", kill({scorer}, 0));
    attempt("signal-sibling", kill({sibling}, 0));
    int adj = open("/proc/self/oom_score_adj", O_WRONLY);
    attempt("oom-lower", adj < 0 ? -1 : (int)write(adj, "-1000", 5));
    std::printf("probed\n");
}
"""


def _attack(language: str, template: str, base: Path) -> list[str]:
    sibling = _sibling()
    try:
        assert sibling.proc is not None
        program = (
            template.replace("{base}", str(base))
            .replace("{scorer}", str(os.getpid()))
            .replace("{sibling}", str(sibling.proc.pid))
        )
        res = multiple.run_program(language, program)
        assert sibling.proc.poll() is None, "the sibling sample was killed"
    finally:
        sibling.discard()
    assert res.isolation.startswith("rlimits"), res.isolation
    assert "probed" in res.stdout, res.stdout + res.stderr[-2000:]
    return [line for line in res.stdout.splitlines() if line.startswith("WORKED")]


def test_shell_completion_is_not_root(fallback, host):
    assert _attack("sh", SHELL, host) == []
    assert _untouched(host)


@pytest.mark.skipif(multiple.toolchain_problem("cpp") is not None, reason="no g++")
def test_native_completion_is_not_root(fallback, host):
    assert _attack("cpp", NATIVE, host) == []
    assert _untouched(host)


def test_each_run_has_its_own_uid(fallback):
    """Two runs, two uids, neither root: one sample's files and processes are not another's."""
    probe = "import os\nprint(os.getuid(), os.getgid(), os.getgroups())"
    first, second = (sandbox.run_python(probe, timeout_s=10) for _ in range(2))
    assert first.ok and second.ok, first.stderr + second.stderr
    uids = [int(res.stdout.split()[0]) for res in (first, second)]
    assert 0 not in uids and uids[0] != uids[1]
    assert first.stdout.split()[0] == first.stdout.split()[1]  # gid = uid, no root group


# Each language's own file API (no shell): create a file in a root-owned host folder. The
# program prints "probed" last, whatever happened.
WRITERS = {
    "python": 'import os\ntry:\n    open("{f}", "w").write("x")\nexcept Exception:\n    pass\n'
    'print("probed")\n',
    "cpp": '#include <fstream>\n#include <iostream>\nint main() { std::ofstream("{f}") << "x"; '
    'std::cout << "probed" << std::endl; }\n',
    "cs": 'class Problem { static void Main() { try { System.IO.File.WriteAllText("{f}", '
    '"x"); } catch (System.Exception) {} System.Console.WriteLine("probed"); } }\n',
    "d": 'import core.stdc.stdio;\nvoid main() { auto f = fopen("{f}", "w"); '
    'if (f) fputs("x", f); puts("probed"); }\n',
    "go": 'package main\nimport (\n"fmt"\n"os"\n"testing"\n)\nfunc TestW(t *testing.T) '
    '{ os.WriteFile("{f}", []byte("x"), 0644); fmt.Println("probed") }\n',
    "java": "public class Problem { public static void main(String[] a) { try { "
    'java.nio.file.Files.write(java.nio.file.Paths.get("{f}"), "x".getBytes()); } '
    'catch (Exception e) {} System.out.println("probed"); } }\n',
    "js": 'try { require("fs").writeFileSync("{f}", "x"); } catch (e) {}\nconsole.log("probed");\n',
    "lua": 'local f = io.open("{f}", "w")\nif f then f:write("x") f:close() end\nprint("probed")\n',
    "php": '<?php\n@file_put_contents("{f}", "x");\necho "probed\\n";\n',
    "pl": 'open(my $f, ">", "{f}") and print $f "x";\nprint "probed\\n";\n',
    "r": 'try(writeLines("x", "{f}"), silent = TRUE)\ncat("probed\\n")\n',
    "rb": 'begin\n  File.write("{f}", "x")\nrescue StandardError\nend\nputs "probed"\n',
    "rkt": '#lang racket\n(with-handlers ([exn:fail? void]) (with-output-to-file "{f}" '
    '(lambda () (display "x"))))\n(displayln "probed")\n',
    "rs": 'fn main() { let _ = std::fs::write("{f}", "x"); println!("probed"); }\n',
    "scala": "object Problem { def main(a: Array[String]): Unit = { try { "
    'java.nio.file.Files.write(java.nio.file.Paths.get("{f}"), "x".getBytes) } catch '
    '{ case _: Throwable => }; println("probed") } }\n',
    "sh": 'echo x > "{f}" 2>/dev/null\necho probed\n',
    "ts": 'declare var require: any;\ntry { require("fs").writeFileSync("{f}", "x"); } '
    'catch (e) {}\nconsole.log("probed");\n',
}


@pytest.mark.slow
def test_no_language_writes_outside(fallback, host):
    """Every available language, one after the other: the ones whose file landed are named."""
    wrote, ran = [], []
    for language, program in sorted(WRITERS.items()):
        if multiple.toolchain_problem(language):
            continue
        target = host / f"from-{language}"
        res = multiple.run_program(language, program.replace("{f}", str(target)))
        assert res.isolation.startswith("rlimits"), res.isolation
        assert "probed" in res.stdout, language + ": " + res.stdout + res.stderr[-2000:]
        ran.append(language)
        if target.exists():
            wrote.append(language)
    assert ran and wrote == [], f"wrote outside: {wrote}"
    assert _untouched(host)


def test_no_cgroup_nothing_outlives_the_run(fallback, monkeypatch):
    """Where no cgroup can be made, the run's processes were found by its process group and
    the marker in their environment: a child that left the group (``setsid``) and cleared its
    environment (``env -i``) outlived the verdict. Now the sweep also kills every process of
    the run's own uid."""
    from reflectioncoder.eval.sandbox import process

    monkeypatch.setattr(process, "make_cgroup", lambda *args: None)
    program = "setsid sh -c 'exec env -i /bin/sleep 60' > /dev/null 2>&1 &\necho $!\nsleep 1\n"
    res = multiple.run_program("sh", program)
    pid = int(res.stdout.split()[0])
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            alive = b"sleep" in f.read()
    except OSError:
        alive = False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not alive, "the detached child outlived its run"
