"""Install the toolchains MultiPL-E's languages need, from Debian's packages.

reflectioncoder eval-setup                         # every language Debian packages
reflectioncoder eval-setup --languages cs ts java  # just these
reflectioncoder eval-setup --print                 # print the apt-get command, install nothing

As root with apt-get it installs what is missing (and bubblewrap, the sandbox); otherwise it
prints the command to run. Then it prints which languages run here and why the others do not.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable

from reflectioncoder.errors import UsageError
from reflectioncoder.eval import multiple_languages as ml
from reflectioncoder.printable import printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--languages",
        nargs="+",
        default=None,
        metavar="LANG",
        help=f"MultiPL-E languages (default: all; known: {' '.join(ml.LANGUAGES)})",
    )
    parser.add_argument(
        "--print", action="store_true", help="print the install command instead of running it"
    )


def install_command(packages: list[str]) -> str:
    return (
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
        "--no-install-recommends " + " ".join(packages)
    )


def _install(packages: list[str]) -> int:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    t0 = time.monotonic()
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        print("$ " + " ".join(argv), file=sys.stderr)
        proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            tail = " / ".join(proc.stderr.decode(errors="replace").strip().splitlines()[-3:])
            tail = printable(tail)  # apt quotes what it read: a mirror's reply
            print(f"error: {argv[0]} {argv[1]} failed: {tail}", file=sys.stderr)
            return proc.returncode
    print(f"installed {len(packages)} packages in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return 0


# What people call the languages MultiPL-E names by their files' extensions
_CALLED = {"c++": "cpp", "csharp": "cs", "c#": "cs", "javascript": "js", "typescript": "ts",
           "rust": "rs", "ruby": "rb", "julia": "jl", "perl": "pl", "racket": "rkt",
           "bash": "sh", "shell": "sh", "golang": "go"}  # fmt: skip


def meant_languages(unknown: Iterable[str]) -> str:
    """`` (did you mean rs for rust?)`` for names that are not MultiPL-E's (empty if none)."""
    meant = []
    for name in unknown:
        close = difflib.get_close_matches(name.lower(), ml.LANGUAGES, n=1, cutoff=0.7)
        close = [_CALLED[name.lower()]] if name.lower() in _CALLED else close
        meant += [f"{close[0]} for {name}"] if close else []
    return f" (did you mean {', '.join(meant)}?)" if meant else ""


def main(args: argparse.Namespace) -> int:
    chosen = args.languages or list(ml.LANGUAGES)
    unknown = [lang for lang in chosen if lang not in ml.LANGUAGES]
    if unknown:
        raise UsageError(
            f"unknown {' '.join(unknown)}{meant_languages(unknown)} (known: "
            f"{' '.join(ml.LANGUAGES)})",
            field="--languages",
        )
    packages = ml.setup_packages(lang for lang in chosen if not ml.LANGUAGES[lang].unavailable)
    if packages:
        can_install = os.geteuid() == 0 and shutil.which("apt-get") is not None
        if args.print or not can_install:
            if not args.print:
                print("not root or no apt-get: run this as root", file=sys.stderr)
            print(install_command(packages))
        elif _install(packages) != 0:
            return 1
        ml.forget_probes()  # the libraries may be there now
    missing = 0
    for lang in chosen:
        problem = ml.toolchain_problem(lang)
        print(printable(f"{lang:<7} {'available' if problem is None else problem}"))
        # Julia and Swift are not packaged: only a failure when asked for by name
        asked = args.languages is not None or not ml.LANGUAGES[lang].unavailable
        missing += problem is not None and asked
    return 1 if missing else 0
