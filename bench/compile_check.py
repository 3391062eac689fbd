"""Compile every Triton kernel of the project ahead of time for sm_80 and sm_90; no GPU needed.

    python -m bench.compile_check --out bench/results/compile_check.json

Discovery: every module under kernels/ (imported as reflectioncoder.kernels.NAME) that defines
``COMPILE_SPECS`` registers its kernels there. ``COMPILE_SPECS`` is a list of dicts, one per
production configuration (block sizes and dtypes as launched), with keys:
  name        str: unique label, e.g. "fused_loss_fwd/bf16"
  kernel      the @triton.jit function itself ("fn" is accepted too)
  signature   dict: every argument name -> Triton type ("*bf16", "*fp32", "*i64", "i32", "i64",
              "fp32", ...) or "constexpr" for tl.constexpr arguments
  constexprs  dict: constexpr argument name -> value
  num_warps   int;  num_stages  int (optional, default 3)
Each spec is compiled with ``triton.compile(ASTSource(fn, signature, constexprs),
target=GPUTarget("cuda", cap, 32))``; registers, stack and local (spill) bytes come from the
cuobjdump bundled with Triton (``--dump-resource-usage`` on the cubin), shared memory from the
compiled metadata. Exit status 1 when a kernel fails to compile or needs more shared memory per
block than the card has (sm_80: 163 KiB, sm_90: 227 KiB); spills are reported, not fatal.
The interpreter must be off for ``triton.jit`` to build compilable functions: the module unsets
TRITON_INTERPRET before anything imports the kernels.
"""

from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # before the kernels are imported (see docstring)
# Triton 3.9 warns that its fp-fusion default changes in 3.10: pin today's default (fusion on).
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import pkgutil  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # bytes of shared memory per block
SPEC_KEYS = {"name", "kernel", "signature", "constexprs", "num_warps"}


def cuobjdump_path() -> Path:
    """The cuobjdump that ships with Triton's NVIDIA backend."""
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def discover_specs(package: str = "reflectioncoder.kernels") -> list[tuple[str, dict]]:
    """(module name, spec) for every COMPILE_SPECS entry of every module in ``package``."""
    pkg = importlib.import_module(package)
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{package}.{info.name}")
        for spec in getattr(module, "COMPILE_SPECS", []):
            spec = dict(spec)
            spec.setdefault("kernel", spec.pop("fn", None))
            spec.setdefault("num_stages", 3)
            missing = {k for k in SPEC_KEYS if spec.get(k) is None}
            if missing:
                raise ValueError(
                    f"{module.__name__}.COMPILE_SPECS: {spec.get('name')} lacks {missing}"
                )
            found.append((module.__name__, spec))
    return found


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG / STACK / LOCAL / SHARED (static) of the single function in a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [str(cuobjdump_path()), "--dump-resource-usage", f.name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text.split("Function", 1)[-1]))
    return {k.lower(): int(v) for k, v in fields.items()}


def compile_one(spec: dict, cap: int) -> dict:
    """Compile one spec for sm_<cap>; a row of the report."""
    row = {"kernel": spec["name"], "arch": f"sm_{cap}", "num_warps": spec["num_warps"]}
    row["num_stages"] = spec["num_stages"]
    row["constexprs"] = {k: v for k, v in spec["constexprs"].items()}
    start = time.perf_counter()
    try:
        compiled = triton.compile(
            ASTSource(spec["kernel"], spec["signature"], spec["constexprs"]),
            target=GPUTarget("cuda", cap, 32),
            options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]},
        )
    except Exception as exc:  # report every failure, then exit non-zero
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
        return row
    usage = resource_usage(compiled.asm["cubin"])
    shared = int(compiled.metadata.shared) + usage.get("shared", 0)
    row.update(
        ok=shared <= SHARED_LIMIT[cap],
        registers=usage.get("reg"),
        stack_bytes=usage.get("stack"),
        spill_bytes=usage.get("local"),
        shared_bytes=shared,
        shared_limit_bytes=SHARED_LIMIT[cap],
        compile_s=round(time.perf_counter() - start, 2),
    )
    if not row["ok"]:
        row["error"] = f"shared memory {shared} B exceeds the sm_{cap} limit {SHARED_LIMIT[cap]} B"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/compile_check.json"))
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=[80, 90])
    parser.add_argument("--only", default="", help="compile only kernels whose name has this")
    args = parser.parse_args(argv)
    if not cuobjdump_path().is_file():
        print(f"compile_check: {cuobjdump_path()} not found", file=sys.stderr)
        return 1
    specs = [(m, s) for m, s in discover_specs() if args.only in s["name"]]
    if not specs:
        print("compile_check: no COMPILE_SPECS found under kernels/", file=sys.stderr)
        return 1
    rows = []
    for module, spec in specs:
        if not isinstance(spec["kernel"], triton.runtime.JITFunction):
            print(f"compile_check: {spec['name']} is interpreted; unset TRITON_INTERPRET")
            return 1
        for cap in args.arch:
            row = compile_one(spec, cap)
            row["module"] = module
            rows.append(row)
            status = "ok" if row["ok"] else "FAIL"
            detail = row.get("error") or (
                f"reg {row['registers']} stack {row['stack_bytes']} spill {row['spill_bytes']} "
                f"smem {row['shared_bytes']} B"
            )
            print(f"{status:4} {row['kernel']:40} {row['arch']}  {detail}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"triton": triton.__version__, "kernels": rows}
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    failed = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(failed)}/{len(rows)} compiled within limits -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
