"""The rlimits fallback's file system (no mount namespace there): a run's uid alone still let
a completion read every file any user may read (a world-readable secret, the repository, the
evaluation data), everything where its toolchain kept ``CAP_DAC_READ_SEARCH`` (Rust here:
``/etc/shadow``), at compile time too (C++ ``#include``, Rust ``include_str!``), and write into
``/tmp`` and ``/dev/shm``, where its files outlived the run (``/dev/shm`` in memory). With
Landlock the run reads only what bubblewrap would bind and changes only its working dir.
Every attempt goes through MultiPL-E's build-and-run (``multiple.run_program``)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from reflectioncoder.eval import multiple, sandbox
from reflectioncoder.eval.sandbox import landlock

pytestmark = pytest.mark.skipif(landlock.abi() < 1, reason="the kernel has no Landlock")


@pytest.fixture
def fallback(monkeypatch) -> None:
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "rlimits")
    assert sandbox.isolation().landlock


@pytest.fixture
def secret():
    """A secret any user may read (0644 in a 0755 folder), as a C string literal."""
    value = f"rc-secret-{uuid.uuid4().hex}"
    base = Path("/var/tmp") / f"rc-redteam2-{uuid.uuid4().hex}"
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    path = base / "secret"
    path.write_text(f'"{value}"\n')
    path.chmod(0o644)
    try:
        yield value, str(path)
    finally:
        shutil.rmtree(base)


def _run(language: str, program: str) -> str:
    """stdout and stderr of ``program`` built and run as a ``language`` sample."""
    problem = multiple.toolchain_problem(language)
    if problem:
        pytest.skip(problem)
    res = multiple.run_program(language, program)
    assert res.isolation.startswith("rlimits"), res.isolation
    return res.stdout + res.stderr


SHELL = """
cat {f}
echo x > /tmp/{leave} && echo "WORKED /tmp"
echo x > /dev/shm/{leave} && echo "WORKED /dev/shm"
echo x > /var/tmp/{leave} && echo "WORKED /var/tmp"
ls {repo} > /dev/null && echo "WORKED list the repository"
cat {data}/humaneval/*.jsonl > /dev/null 2>&1 && echo "WORKED read the data"
echo probed
"""


def test_shell_reads_and_leaves_nothing(fallback, secret, shared_dir):
    value, path = secret
    leave = f"rc-redteam2-{uuid.uuid4().hex}"
    repo = Path(__file__).resolve().parents[1]
    program = SHELL.format(f=path, leave=leave, repo=repo, data=shared_dir / "evaldata")
    try:
        out = _run("sh", program)
    finally:
        for folder in ("/tmp", "/dev/shm", "/var/tmp"):
            Path(folder, leave).unlink(missing_ok=True)
    assert "probed" in out and "WORKED" not in out and value not in out, out


COMPILE_TIME = {
    "cpp": '#include <cstdio>\nint main() { std::puts(\n#include "{f}"\n); }\n',
    "rs": 'fn main() { println!("{}", include_str!("{f}")); }\n',
}


@pytest.mark.parametrize("language", sorted(COMPILE_TIME))
def test_compilers_read_nothing_outside(fallback, secret, language):
    """The compiler runs in the run's Landlock domain: the ``#include`` fails (Rust keeps
    CAP_DAC_READ_SEARCH here, its toolchain being under /root: Landlock holds all the same)."""
    value, path = secret
    out = _run(language, COMPILE_TIME[language].replace("{f}", path))
    assert value not in out


# Each language's own file API: print the secret, then "probed" whatever happened.
READERS = {
    "python": 'try:\n    print(open("{f}").read())\nexcept Exception:\n    pass\nprint("probed")\n',
    "cpp": "#include <fstream>\n#include <iostream>\n#include <string>\nint main() { "
    'std::ifstream f("{f}"); std::string s; std::getline(f, s); '
    'std::cout << s << "\\nprobed" << std::endl; }\n',
    "cs": "class Problem { static void Main() { try { System.Console.WriteLine("
    'System.IO.File.ReadAllText("{f}")); } catch (System.Exception) {} '
    'System.Console.WriteLine("probed"); } }\n',
    "d": 'import core.stdc.stdio;\nvoid main() { char[128] b; auto f = fopen("{f}", "r"); '
    'if (f && fgets(b.ptr, b.length, f)) puts(b.ptr); puts("probed"); }\n',
    "go": 'package main\nimport (\n"fmt"\n"os"\n"testing"\n)\nfunc TestR(t *testing.T) '
    '{ b, _ := os.ReadFile("{f}"); fmt.Println(string(b)); fmt.Println("probed") }\n',
    "java": "public class Problem { public static void main(String[] a) { try { "
    "System.out.println(new String(java.nio.file.Files.readAllBytes("
    'java.nio.file.Paths.get("{f}")))); } catch (Exception e) {} '
    'System.out.println("probed"); } }\n',
    "js": 'try { console.log(require("fs").readFileSync("{f}", "utf8")); } catch (e) {}\n'
    'console.log("probed");\n',
    "lua": 'local f = io.open("{f}")\nif f then print(f:read("a")) end\nprint("probed")\n',
    "php": '<?php\necho @file_get_contents("{f}"), "\\nprobed\\n";\n',
    "pl": 'if (open(my $f, "<", "{f}")) { print <$f>; }\nprint "probed\\n";\n',
    "r": 'try(cat(readLines("{f}", warn = FALSE), "\\n"), silent = TRUE)\ncat("probed\\n")\n',
    "rb": 'begin\n  puts File.read("{f}")\nrescue StandardError\nend\nputs "probed"\n',
    "rkt": '#lang racket\n(with-handlers ([exn:fail? void]) (displayln (file->string "{f}")))\n'
    '(displayln "probed")\n',
    "rs": 'fn main() { println!("{}", std::fs::read_to_string("{f}").unwrap_or_default()); '
    'println!("probed"); }\n',
    "scala": "object Problem { def main(a: Array[String]): Unit = { try { println(new String("
    'java.nio.file.Files.readAllBytes(java.nio.file.Paths.get("{f}")))) } catch '
    '{ case _: Throwable => }; println("probed") } }\n',
    "sh": 'cat "{f}" 2>/dev/null\necho probed\n',
    "ts": 'declare var require: any;\ntry { console.log(require("fs").readFileSync("{f}", '
    '"utf8")); } catch (e) {}\nconsole.log("probed");\n',
}


@pytest.mark.slow
@pytest.mark.parametrize("language", sorted(READERS))
def test_no_language_reads_a_host_file(fallback, secret, language):
    value, path = secret
    out = _run(language, READERS[language].replace("{f}", path))
    assert "probed" in out and value not in out, out[-2000:]


@pytest.mark.skipif(landlock.abi() < 6, reason="Landlock scopes signals from ABI 6 (Linux 6.12)")
def test_a_landlocked_run_signals_nothing_outside(tmp_path):
    """A fallback started by a user that is not root runs every sample as that user: the
    scorer and the siblings are then the sample's own processes, and Landlock's signal scope
    is what refuses them (here as root, in a forked child that keeps root's uid)."""
    import ctypes
    import errno

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            lib = ctypes.CDLL(None, use_errno=True)
            landlock.restrict_files(["/usr"], [str(tmp_path)], lib)
            os.kill(os.getppid(), 0)
        except PermissionError as exc:
            code = 0 if exc.errno == errno.EPERM else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the Landlocked child signalled its parent"
