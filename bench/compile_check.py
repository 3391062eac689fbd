"""Compile every Triton kernel of the project ahead of time for sm_80 and sm_90; no GPU needed.

    python -m bench.compile_check --out bench/results/compile_check.json

Discovery: every module under kernels/ (imported as reflectioncoder.kernels.NAME), and each
kernel kept in bench/ (``BENCH_KERNELS``), that defines ``COMPILE_SPECS`` registers its kernels
there, one dict per production launch:
  name        str: unique label, e.g. "reflection_rows/pairs/bf16"
  kernel      the @triton.jit function itself ("fn" is accepted too)
  args        dict: argument name -> the value the launcher passes (tensors of the launched
              dtype whose pointers have the launcher's alignment, ints at the production shape)
              and constexpr values
  num_warps   int;  num_stages  int (optional, default 3)
The kernel is specialised exactly as Triton's runtime does at that launch: the JIT function's own
binder turns ``args`` into the signature, the constexprs (ints equal to 1 included) and the
alignment attributes (pointers and ints divisible by 16), so the cubin is the one that would run.
Legacy specs with ``signature`` / ``constexprs`` instead of ``args`` get the 16-byte pointer
alignment that torch's allocations have. Compiled with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", cap, 32))``; per kernel and target the report gives registers, stack,
shared memory, and from ``cuobjdump -sass`` (bundled with Triton) the spill bytes (LDL/STL,
as ptxas -v counts them), the tensor-core instruction shapes (HMMA / HGMMA with their n),
async copies (LDGSTS, UTMALDG), fences (MEMBAR) and atomics (ATOM/ATOMG/RED) inside loops
(the hot loops: the ranges closed by a backward branch). Exit status 1 when a kernel fails to
compile, needs more shared memory per block than the card has (sm_80: 163 KiB, sm_90: 227 KiB),
spills inside a loop (LDL/STL there), or has a fenced atomic (MEMBAR next to an atomic) inside a
loop.
The interpreter must be off for ``triton.jit`` to build compilable functions: run as a command,
the module unsets TRITON_INTERPRET before anything imports the kernels. Imported (a test in an
interpreted session), it leaves the variable alone: unset, every kernel the session defined
afterwards was compiled for a GPU the CPU does not have (tests/test_hidden9_compile_report.py).
"""

from __future__ import annotations

import os

if __name__ == "__main__":
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
from triton.compiler.compiler import make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from bench import RESULTS  # noqa: E402

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # bytes of shared memory per block
SPEC_KEYS = {"name", "kernel", "num_warps"}
ALIGNED = [["tt.divisibility", 16]]


# Triton kernels kept beside the benchmarks, not used by training (each says why).
BENCH_KERNELS = ("bench.mask_kernel",)


def cuobjdump_path() -> Path:
    """The cuobjdump that ships with Triton's NVIDIA backend."""
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def discover_specs(
    package: str = "reflectioncoder.kernels", extra: tuple[str, ...] = BENCH_KERNELS
) -> list[tuple[str, dict]]:
    """(module name, spec) for every COMPILE_SPECS entry of every module in ``package`` and of
    the ``extra`` modules."""
    pkg = importlib.import_module(package)
    names = [f"{package}.{info.name}" for info in pkgutil.iter_modules(pkg.__path__)]
    found = []
    for name in [*names, *extra]:
        module = importlib.import_module(name)
        for spec in getattr(module, "COMPILE_SPECS", []):
            spec = dict(spec)
            spec.setdefault("kernel", spec.pop("fn", None))
            spec.setdefault("num_stages", 3)
            missing = {k for k in SPEC_KEYS if spec.get(k) is None}
            if "args" not in spec and "signature" not in spec:
                missing.add("args")
            if missing:
                raise ValueError(
                    f"{module.__name__}.COMPILE_SPECS: {spec.get('name')} lacks {missing}"
                )
            found.append((module.__name__, spec))
    return found


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG / STACK / LOCAL / SHARED (static) of the single function in a cubin."""
    text = cuobjdump(cubin, "--dump-resource-usage")
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text.split("Function", 1)[-1]))
    return {k.lower(): int(v) for k, v in fields.items()}


def runtime_source(spec: dict, backend) -> tuple[ASTSource, dict]:
    """(ASTSource, options) as Triton's runtime builds them for a launch with ``spec['args']``."""
    fn = spec["kernel"]
    launch = {"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]}
    if "args" not in spec:  # legacy spec: pointers 16-byte aligned, as torch allocates them
        sig = spec["signature"]
        attrs = {(i,): ALIGNED for i, t in enumerate(sig.values()) if t.startswith("*")}
        options = backend.parse_options(launch)
        return ASTSource(fn, sig, spec["constexprs"], attrs), options.__dict__
    values = [spec["args"][name] for name in fn.arg_names]
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*values, **launch)
    options, sig, constexprs, attrs = fn._pack_args(backend, launch, bound, specialization, options)
    return ASTSource(fn, sig, constexprs, attrs), options.__dict__


def cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [str(cuobjdump_path()), flag, f.name], check=True, capture_output=True, text=True
        ).stdout


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def spill_bytes(ops: list[str], kind: str) -> int:
    """Bytes moved by the local-memory instructions ``kind`` (STL: stores, LDL: loads): what
    ptxas -v reports as spill stores / loads. cuobjdump's LOCAL said 0 of a kernel that ptxas
    says spills 264 + 232 bytes (tests/test_hidden9_compile_report.py)."""
    width = {"64": 8, "128": 16, "U8": 1, "S8": 1, "U16": 2, "S16": 2}
    total = 0
    for op in ops:
        parts = op.split(".")
        if parts[0] == kind:
            total += next((width[p] for p in parts[1:] if p in width), 4)
    return total


def sass_report(sass: str) -> dict:
    """Tensor-core shapes, async copies, fences, atomics and spills, overall and inside loops."""
    instrs = [(int(m.group(1), 16), m.group(3), m.group(4)) for m in _INSTR.finditer(sass)]
    loops = []
    for addr, op, operands in instrs:
        target = re.search(r"0x([0-9a-f]+)", operands)
        if op.startswith("BRA") and target and int(target.group(1), 16) < addr:
            loops.append((int(target.group(1), 16), addr))
    in_loop = [(a, op) for a, op, _ in instrs if any(lo <= a <= hi for lo, hi in loops)]

    def count(ops, *prefixes):
        return sum(1 for _, op in ops if op.split(".")[0] in prefixes)

    everywhere = [(a, op) for a, op, _ in instrs]
    mma = sorted({op for _, op in everywhere if op.split(".")[0] in ("HMMA", "HGMMA")})
    atomics = ("ATOM", "ATOMG", "RED", "REDG", "ATOMS")
    fenced = 0
    for k, (_, op) in enumerate(in_loop):  # an atomic with a fence right before or after it
        if op.split(".")[0] in atomics:
            near = in_loop[max(0, k - 3) : k + 4]
            fenced += count(near, "MEMBAR") > 0
    return {
        "loops": len(loops),
        "mma_shapes": mma,
        "mma_in_loops": count(in_loop, "HMMA", "HGMMA"),
        "async_copies_in_loops": count(in_loop, "LDGSTS", "UTMALDG", "UBLKCP"),
        "membar_in_loops": count(in_loop, "MEMBAR"),
        "atomics_in_loops": count(in_loop, *atomics),
        "fenced_atomics_in_loops": fenced,
        "spill_ops_in_loops": count(in_loop, "LDL", "STL"),
        "spill_store_bytes": spill_bytes([op for _, op in everywhere], "STL"),
        "spill_load_bytes": spill_bytes([op for _, op in everywhere], "LDL"),
        "atomics_total": count(everywhere, *atomics),
        "membar_total": count(everywhere, "MEMBAR"),
    }


def compile_one(spec: dict, cap: int) -> dict:
    """Compile one spec for sm_<cap> with the runtime's specialisation; a row of the report."""
    row = {"kernel": spec["name"], "arch": f"sm_{cap}", "num_warps": spec["num_warps"]}
    row["num_stages"] = spec.setdefault("num_stages", 3)
    start = time.perf_counter()
    target = GPUTarget("cuda", cap, 32)
    try:
        src, options = runtime_source(spec, make_backend(target))
        compiled = triton.compile(src, target=target, options=options)
    except Exception as exc:  # report every failure, then exit non-zero
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
        return row
    row["signature"] = dict(src.signature)
    row["aligned_args"] = sorted(
        src.fn.arg_names[k[0]] for k, v in src.attrs.items() if ["tt.divisibility", 16] in v
    )
    row["constexprs"] = {src.fn.arg_names[k[0]]: v for k, v in src.constants.items()}
    usage = resource_usage(compiled.asm["cubin"])
    shared = int(compiled.metadata.shared) + usage.get("shared", 0)
    sass = sass_report(cuobjdump(compiled.asm["cubin"], "-sass"))
    row.update(
        registers=usage.get("reg"),
        stack_bytes=usage.get("stack"),
        spill_bytes=sass["spill_store_bytes"] + sass["spill_load_bytes"],
        local_bytes=usage.get("local"),
        shared_bytes=shared,
        shared_limit_bytes=SHARED_LIMIT[cap],
        **sass,
        compile_s=round(time.perf_counter() - start, 2),
    )
    errors = []
    if shared > SHARED_LIMIT[cap]:
        errors.append(f"shared memory {shared} B exceeds the sm_{cap} limit {SHARED_LIMIT[cap]} B")
    if sass["spill_ops_in_loops"]:
        errors.append(f"{sass['spill_ops_in_loops']} spill loads/stores (LDL/STL) in a loop")
    if sass["fenced_atomics_in_loops"]:
        errors.append(f"{sass['fenced_atomics_in_loops']} fenced atomics in a loop")
    row["ok"] = not errors
    if errors:
        row["error"] = "; ".join(errors)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "compile_check.json")
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
                f"smem {row['shared_bytes']} B mma {','.join(row['mma_shapes']) or '-'} "
                f"loop: async {row['async_copies_in_loops']} membar {row['membar_in_loops']} "
                f"atomics {row['atomics_in_loops']}"
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
