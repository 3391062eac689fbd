"""The lock file and the newest allowed versions, side by side.

    python .ci/drift.py freeze --out requirements/lock.txt   # write the lock from this interpreter
    python .ci/drift.py check --lock requirements/lock.txt   # the quick check, in the latest env

`check` runs in the environment that `make env LATEST=1` made (the newest versions setup.py's
ranges allow): it imports every module of the package, runs the fast tests of the loss, model,
trainer and CLI, and the demo at its smallest size, each from the repository root (where our
`kernels/` folder lies first on sys.path). When a step fails it prints one line naming the
packages that differ from the lock, those that appear in the failure first, so the lock is
updated or a range capped on purpose.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAST_TESTS = [
    "tests/test_shadowing.py",
    "tests/test_fused_loss.py",
    "tests/test_model.py",
    "tests/test_trainer.py",
    "tests/test_cli_help.py",
    "tests/test_cli_errors.py",
]
IMPORT_ALL = """
import importlib, pkgutil, reflectioncoder, reflectioncoder.kernels as kernels
names = [m.name for m in pkgutil.walk_packages(reflectioncoder.__path__, "reflectioncoder.")]
# kernels/ is installed as reflectioncoder.kernels, not a folder under reflectioncoder/
names += [m.name for m in pkgutil.walk_packages(kernels.__path__, "reflectioncoder.kernels.")]
for name in ["reflectioncoder.kernels", *names]:
    importlib.import_module(name)
import transformers.modeling_utils  # imports Hugging Face's `kernels` where it is installed
print(f"imported {len(names) + 1} modules")
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """{canonical name: version} of this interpreter's distributions, local labels dropped
    (torch's `+cpu`), so the lock also constrains a CUDA build of the same version. Read from
    site-packages, not sys.path: once imported, setuptools (torch's cpp_extension imports it)
    puts its vendored packages' metadata on sys.path."""
    paths = sysconfig.get_paths()
    versions = {}
    for dist in importlib.metadata.distributions(path=sorted({paths["purelib"], paths["platlib"]})):
        name = dist.metadata["Name"]
        if name and _canonical(name) not in {"reflectioncoder", "pip", "setuptools", "wheel"}:
            versions[_canonical(name)] = dist.version.split("+")[0]
    return versions


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            sys.exit(f"{path}:{number}: expected NAME==VERSION, got {line!r}")
        pins[_canonical(name)] = version.strip()
    return pins


def freeze(out: Path) -> None:
    versions = installed()
    header = [
        "# The versions `make env` installs (pip constraints), last tested together.",
        "# Refresh: `make lock` (a fresh env at the newest versions setup.py allows, then this).",
        f"# Python {sys.version.split()[0]}; made by .ci/drift.py freeze.",
    ]
    lines = [f"{name}=={versions[name]}" for name in sorted(versions)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header + lines) + "\n", encoding="utf-8")
    print(f"{out}: {len(lines)} packages")


def differences(lock: dict[str, str], now: dict[str, str]) -> list[str]:
    """`name old -> new` for every package whose resolved version differs from the lock."""
    changed = [name for name in sorted(now) if lock.get(name) != now[name]]
    return [f"{name} {lock.get(name, '(not locked)')} -> {now[name]}" for name in changed]


def suspects(output: str, changed: list[str]) -> list[str]:
    """The changed packages whose files or names the failure's output mentions."""
    found = []
    for row in changed:
        name = row.split()[0]
        module = name.replace("-", "_")
        pattern = rf"(site-packages/{module}\b|\b{re.escape(module)}\b|\b{re.escape(name)}\b)"
        if re.search(pattern, output, re.IGNORECASE):
            found.append(row)
    return found


def _steps(work: Path) -> list[tuple[str, list[str]]]:
    python = sys.executable
    tests = [python, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:randomly", *FAST_TESTS]
    demo = [python, "-m", "reflectioncoder.demo", "--out", str(work / "demo"), "--n", "24"]
    return [
        ("import every module", [python, "-c", IMPORT_ALL]),
        ("fast tests of the loss, model, trainer and CLI", tests),
        ("the demo at its smallest size", [*demo, "--steps", "5", "--no-progress"]),
    ]


def check(lock_path: Path) -> int:
    changed = differences(read_lock(lock_path), installed())
    print(f"drift: {len(changed)} package(s) differ from {lock_path.name}: " + "; ".join(changed))
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="drift-") as work:
        for title, command in _steps(Path(work)):
            print(f"drift: {title} ...", flush=True)
            run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            output = run.stdout + run.stderr
            print(output[-3000:], end="" if output.endswith("\n") else "\n")
            if run.returncode != 0:
                named = suspects(output, changed) or changed
                print(
                    f"drift: FAILED at '{title}' with the newest allowed versions; "
                    f"newer than the lock: {'; '.join(named) or 'none (the failure is ours)'}. "
                    "Update the lock (make lock) once fixed, or cap the range in setup.py."
                )
                return 1
    print("drift: the newest allowed versions pass the quick check")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("freeze").add_argument("--out", type=Path, required=True)
    sub.add_parser("check").add_argument("--lock", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "freeze":
        freeze(args.out)
        return 0
    return check(args.lock)


if __name__ == "__main__":
    sys.exit(main())
