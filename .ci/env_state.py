"""What `make env` says around pip (standard library only: it runs before the environment works).

    python3 .ci/env_state.py before --venv .venv --lock requirements/lock.txt
    python3 .ci/env_state.py failed --venv .venv --lock requirements/lock.txt

`before` says why an existing environment is installed into again (the lock or setup.py changed
since its stamp) and that this needs the package index. `failed` runs when pip failed: it asks
the index pip uses whether it answers, so the last line says "no network to the index" rather
than pip's "ResolutionImpossible", and what state the environment was left in.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

PYPI = "https://pypi.org/simple/"


def _stamp(venv: Path) -> Path:
    return venv / ".installed"


def python_needed(setup: Path = Path("setup.py")) -> tuple[int, int] | None:
    """setup.py's python_requires lower bound, e.g. (3, 11)."""
    found = re.search(r"python_requires=\"\s*>=\s*(\d+)\.(\d+)", setup.read_text(encoding="utf-8"))
    return (int(found[1]), int(found[2])) if found else None


def before(venv: Path, lock: str) -> int:
    """Stops on a Python older than setup.py allows (pip would first fetch torch for it, then
    fail on a pin); one line when an environment made before is installed into again."""
    needed = python_needed()
    if needed and sys.version_info[:2] < needed:
        print(
            f"make env: FAILED: {sys.executable} is Python {sys.version.split()[0]}; "
            f"reflectioncoder needs {needed[0]}.{needed[1]} or newer (setup.py's python_requires): "
            f"make env PYTHON=python{needed[0]}.{needed[1]} (any newer one works too)",
            file=sys.stderr,
        )
        return 1
    if not _stamp(venv).is_file():
        if venv.is_dir():
            print(f"make env: {venv} has no stamp (made by hand, or its install was cut short):")
            print(f"make env: installing into it; this needs the package index ({index_url(venv)})")
        return 0
    made_from = _stamp(venv).read_text(encoding="utf-8").strip() or "the newest allowed versions"
    changed = [p for p in ("setup.py", lock) if p and Path(p).stat().st_mtime > _mtime(venv)]
    print(
        f"make env: {venv} was made from {made_from} before {' and '.join(changed)} changed: "
        f"bringing it to {lock or 'the newest allowed versions'} "
        f"(needs the package index, {index_url(venv)})"
    )
    return 0


def _mtime(venv: Path) -> float:
    return _stamp(venv).stat().st_mtime


def index_url(venv: Path) -> str:
    """The index pip uses: PIP_INDEX_URL, else pip's configuration, else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    python = venv / "bin" / "python"
    try:
        run = subprocess.run(
            [str(python), "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return PYPI
    for line in run.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".index-url") and not key.endswith("extra-index-url"):
            return value.strip().strip("'\"")
    return PYPI


def reachable(url: str, timeout: float = 10) -> str | None:
    """None when `url` answers (any HTTP status), else why not."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as err:
        return str(getattr(err, "reason", err))
    return None


def failed(venv: Path, lock: str) -> int:
    """The last lines after pip failed: the index unreachable, or pip's own error above."""
    url = index_url(venv)
    wanted = f"the versions of {lock}" if lock else "the newest allowed versions"
    if _stamp(venv).is_file():
        state = (
            f"{venv} is still the environment of its stamp (or partly updated); "
            "`make env` tries again, and until then it runs as it is: "
            f"{venv}/bin/python -m reflectioncoder.demo --out runs/demo"
        )
    else:
        state = f"{venv} is incomplete (no stamp): `make env` installs again once it can"
    why = reachable(url)
    if why is not None:
        cause = f"no connection to the package index {url} ({why}); installing {wanted} needs it"
        cause += " (or a mirror: PIP_INDEX_URL)"
    else:
        cause = f"pip could not install {wanted} (its error is above; the index {url} answers)"
    print(f"make env: FAILED: {cause}. {state}.", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["before", "failed"])
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--lock", default="", help="the lock the environment is pinned by, if any")
    args = parser.parse_args()
    return (before if args.step == "before" else failed)(args.venv, args.lock)


if __name__ == "__main__":
    sys.exit(main())
