"""No toolchain home is visible in the box: a credential file planted in each home a toolchain
keeps (``CARGO_HOME``, ``RUSTUP_HOME``, ``GOPATH``, ``~/.m2``, ``~`` itself, where npm keeps
``.npmrc``) is read for from inside the box with every available language's binds, and by the
compilers at compile time (C++ ``#include``, Rust ``include_str!``): the secret never comes
back. The files carry unique names and are removed afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from test_sandbox import _levels

from reflectioncoder.eval import multiple, sandbox


def _homes() -> list[Path]:
    home = Path(os.path.expanduser("~"))
    found = {
        Path(os.environ.get("CARGO_HOME") or home / ".cargo"),
        Path(os.environ.get("RUSTUP_HOME") or home / ".rustup"),
        Path(os.environ.get("GOPATH") or home / "go"),
        home / ".m2",
        home / ".config",
        home,
    }
    return sorted(p for p in found if p.is_dir())


@pytest.fixture
def planted():
    """A secret, written (as a C string literal) into a new file in each toolchain home."""
    secret = f"rc-secret-{uuid.uuid4().hex}"
    paths = [home / f".rc-test-credentials-{uuid.uuid4().hex[:8]}" for home in _homes()]
    for path in paths:
        path.write_text(f'"{secret}"\n')
        path.chmod(0o644)  # readable by anyone who can reach it: only the mounts stop a read
    try:
        yield secret, [str(p) for p in paths]
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


READER = r"""
import json, os, sys
paths = json.loads(sys.stdin.read())
got = {}
for path in paths:
    try:
        with open(path) as f:
            got[path] = f.read()
    except OSError as exc:
        got[path] = type(exc).__name__
    try:
        got[os.path.dirname(path) + "/"] = sorted(os.listdir(os.path.dirname(path)))
    except OSError as exc:
        got[os.path.dirname(path) + "/"] = type(exc).__name__
print(json.dumps(got))
"""


@pytest.fixture(params=_levels()[:1])  # the strongest level (the fallback binds nothing)
def level(request, monkeypatch) -> str:
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", request.param)
    return request.param


@pytest.mark.parametrize("language", multiple.available_languages())
def test_no_toolchain_home_is_readable(level, planted, language):
    """The box a language's compiler and program run in, with that language's binds."""
    if level != "bwrap":
        pytest.skip("only bubblewrap mounts a chosen file system")
    secret, paths = planted
    env, binds = multiple.toolchain_env(language)
    res = sandbox.run_sandboxed(
        [sys.executable, "-I", "-S", "{src}/reader.py"],
        files={"reader.py": READER},
        stdin=json.dumps(paths),
        env=env,
        ro_binds=binds,
        timeout_s=30,
    )
    assert res.exit_code == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    assert len(got) == 2 * len(paths) >= 6
    assert secret not in res.stdout + res.stderr, got
    for path in paths:
        assert got[path] == "FileNotFoundError", (path, got[path])


CPP_INCLUDE = """#include <cstdio>
{blocks}
int main() {{ {prints} return 0; }}
"""


def test_compilers_cannot_include_a_credential(planted):
    """C++ ``#include`` and Rust ``include_str!`` of each planted file, through MultiPL-E's
    own command lines: the compile-time reads the issue found (a cargo token in the result)."""
    secret, paths = planted
    ran = 0
    if multiple.toolchain_problem("cpp") is None:
        blocks, prints = [], []
        for i, path in enumerate(paths):
            blocks.append(
                f'#if __has_include("{path}")\nconst char* leak{i} =\n#include "{path}"\n;\n'
                f'#else\nconst char* leak{i} = "unreadable";\n#endif'
            )
            prints.append(f"std::puts(leak{i});")
        res = multiple.run_program(
            "cpp", CPP_INCLUDE.format(blocks="\n".join(blocks), prints=" ".join(prints))
        )
        assert res.exit_code == 0, res.stderr[-2000:]
        assert res.stdout.split() == ["unreadable"] * len(paths)
        ran += 1
    if multiple.toolchain_problem("rs") is None:
        for path in paths:
            res = multiple.run_program(
                "rs", f'fn main() {{ println!("{{}}", include_str!("{path}")); }}'
            )
            assert res.exit_code != 0 and "couldn't read" in res.stderr, res.stderr[-2000:]
            assert secret not in res.stdout + res.stderr
        # the same program on a file the box does hold compiles: the refusal is the mounts'
        res = multiple.run_program(
            "rs", 'fn main() { println!("{}", include_str!("main.rs").len()); }'
        )
        assert res.exit_code == 0, res.stderr[-2000:]
        ran += 1
    if not ran:
        pytest.skip("neither g++ nor rustc here")


def test_rust_binds_no_home():
    if multiple.toolchain_problem("rs") is not None:
        pytest.skip("rustc not here")
    env, binds = multiple.toolchain_env("rs")
    for home in _homes():
        assert str(home) not in binds and str(home) not in env.values()
    assert not any(k in env for k in ("CARGO_HOME", "RUSTUP_HOME"))
    ran = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True)
    assert binds[:1] == [ran.stdout.strip()]
