"""The compile report of issue 8 (bench/compile_check.py) as a reader of the issue checks it:
- the committed report (bench/results/compile_check.json) is today's: every kernel the check
  discovers, for sm_80 and sm_90, within limits, and the default schedule's kernels with no
  spills and no atomics at all;
- a kernel that spills in its hot loop is flagged, and its spill bytes are reported as ptxas
  counts them (a report that says "spill 0" of a spilling kernel hides what it is for);
- the default schedule's PTX, compiled ahead of time with the runtime's specialisation, holds no
  atomic or reduction instruction (read from the PTX, not through the SASS reader).

Compiling needs TRITON_INTERPRET unset, which the test session sets: those run in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT

REPORT = REPO_ROOT / "bench" / "results" / "compile_check.json"
# The kernels the default GPU schedule launches (kernels/fused_loss.py).
DEFAULT_SCHEDULE = ("reflection_rows/", "sum_slots/")


def _compile_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _run_probe(tmp_path, code: str) -> dict | list:
    probe = tmp_path / "probe.py"  # @triton.jit needs its source in a file
    probe.write_text(textwrap.dedent(code), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(probe)], cwd=REPO_ROOT, env=_compile_env(),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_committed_report_covers_every_kernel_on_both_targets():
    import triton

    import bench.compile_check as cc

    report = json.loads(REPORT.read_text(encoding="utf-8"))
    names = [spec["name"] for _, spec in cc.discover_specs()]
    got = {(row["kernel"], row["arch"]) for row in report["kernels"]}
    want = {(name, arch) for name in names for arch in ("sm_80", "sm_90")}
    assert got == want, f"stale report: missing {want - got}, extra {got - want}"
    assert report["triton"] == triton.__version__
    for row in report["kernels"]:
        assert row["ok"], row
        assert row["spill_ops_in_loops"] == 0 and row["fenced_atomics_in_loops"] == 0, row
        if row["kernel"].startswith(DEFAULT_SCHEDULE):
            assert row["atomics_total"] == 0 and row["membar_total"] == 0, row
            assert row["spill_bytes"] == 0 and row["stack_bytes"] == 0, row


SPILL_PROBE = """
import json, sys
import torch
import triton
import triton.language as tl
import bench.compile_check as cc

@triton.jit
def spill_loop(X, Out, n, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), tl.float32)
    acc2 = tl.zeros((BLOCK,), tl.float32)
    for k in range(0, n, BLOCK):
        x = tl.load(X + k + cols)
        acc += tl.exp(x) * acc2
        acc2 += tl.sqrt(tl.abs(x)) + acc
    tl.store(Out + cols, acc + acc2)

x = torch.empty(16)
spec = {"name": "spill_probe", "kernel": spill_loop, "num_warps": 1, "num_stages": 1,
        "args": {"X": x, "Out": x, "n": 1 << 20, "BLOCK": 4096}}
print(json.dumps(cc.compile_one(spec, 80), default=str))
"""


@pytest.mark.slow
def test_a_spill_in_a_hot_loop_fails_and_is_reported_in_bytes(tmp_path):
    """255 registers and a stack frame: ptxas -v says 264 bytes of spill stores and 232 of
    spill loads for this kernel on sm_80 (Triton 3.9); the report must not say 0."""
    row = _run_probe(tmp_path, SPILL_PROBE)
    assert not row["ok"] and "spill" in row["error"]
    assert row["spill_ops_in_loops"] > 0
    assert row["spill_bytes"] > 0, row
    assert row["spill_store_bytes"] > 0 and row["spill_load_bytes"] > 0, row


PTX_PROBE = """
import json, re
import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import make_backend
import bench.compile_check as cc
from reflectioncoder.kernels.fused_loss import COMPILE_SPECS

@triton.jit
def atomic_loop(X, Out, n, BLOCK: tl.constexpr):  # the control: what the reader must find
    cols = tl.arange(0, BLOCK)
    for k in range(0, n, BLOCK):
        tl.atomic_add(Out + cols, tl.load(X + k + cols))

x = torch.empty(16)
control = {"name": "control", "kernel": atomic_loop, "num_warps": 4,
           "args": {"X": x, "Out": x, "n": 4096, "BLOCK": 128}}
found = {}
for spec in [control, *COMPILE_SPECS]:
    for cap in (80, 90):
        target = GPUTarget("cuda", cap, 32)
        src, options = cc.runtime_source(dict(spec, num_stages=3), make_backend(target))
        ptx = triton.compile(src, target=target, options=options).asm["ptx"]
        ops = re.findall(r"^\\s*(?:@%p\\d+\\s+)?((?:atom|red|membar|fence)\\.[\\w.]*)", ptx, re.M)
        found[f"{spec['name']}@sm_{cap}"] = ops
print(json.dumps(found))
"""


@pytest.mark.slow
def test_default_schedule_ptx_has_no_atomics_or_fences(tmp_path):
    found = _run_probe(tmp_path, PTX_PROBE)
    control = [found.pop(f"control@sm_{cap}") for cap in (80, 90)]
    assert all(any(op.startswith(("atom.", "red.")) for op in ops) for ops in control), control
    assert len(found) == 12  # rows (pairs, CE only) and slot sums, bf16 and fp32, two targets
    assert all(ops == [] for ops in found.values()), {k: v for k, v in found.items() if v}


LAUNCH_PROBE = """
import json
import torch
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import make_backend
import bench.compile_check as cc
from reflectioncoder.kernels import fused_loss as fl
from reflectioncoder.kernels import fused_loss_rows as rows_module
from reflectioncoder.kernels import fused_loss_slot_sums as sums_module
from reflectioncoder.kernels.fused_loss_schedule import GPU_BUDGET

launches = []

class Recorder:
    def __init__(self, kernel):
        self.kernel = kernel
    def __getitem__(self, grid):
        def launch(*args, **kw):
            names = self.kernel.arg_names
            values = dict(zip(names, args)) | {k: v for k, v in kw.items() if k in names}
            launches.append((self.kernel, values, kw.get("num_warps")))
        return launch

rows_kernel = rows_module._reflection_rows_kernel
sums_kernel = sums_module._sum_slots_kernel
rows_module._reflection_rows_kernel = Recorder(rows_kernel)
sums_module._sum_slots_kernel = Recorder(sums_kernel)
# The launcher at the headline vocabulary in fp32 (GPU budget: 1024-slot chunks of two
# 512-slot halves), all rows in pairs, two full chunks; D = 64 stands in for 4096 (both / 16).
n, d, v = 2048, 64, 128256
hidden = torch.randn(n, d).requires_grad_()
weight = (torch.randn(v, d) / 8).requires_grad_()
targets = torch.randint(0, v, (n,))
pairs = torch.stack([torch.arange(n // 2), torch.arange(n // 2) + n // 2], 1)
loss, _ = fl.linear_reflection_loss(
    hidden, weight, targets, torch.rand(n), pairs, torch.rand(n // 2),
    backend="triton", budget=GPU_BUDGET, tiles=fl.TILES,
)
loss.backward()
target = GPUTarget("cuda", 90, 32)
backend = make_backend(target)

def specialisation(kernel, args, num_warps):
    src, _ = cc.runtime_source(
        {"kernel": kernel, "args": args, "num_warps": num_warps, "num_stages": 3}, backend
    )
    names = src.fn.arg_names
    aligned = sorted(names[k[0]] for k, a in src.attrs.items() if ["tt.divisibility", 16] in a)
    consts = {src.fn.arg_names[k[0]]: v for k, v in src.constants.items()}
    return {"signature": dict(src.signature), "aligned": aligned, "constexprs": consts}

specs = {s["name"]: s for s in fl.COMPILE_SPECS}
out = []
for kernel, args, warps in launches[:1] + [l for l in launches if l[0] is sums_kernel][:1]:
    name = "reflection_rows/pairs/fp32" if kernel is rows_kernel else "sum_slots/fp32"
    spec = specs[name]
    out.append([name, specialisation(kernel, args, warps),
                specialisation(spec["kernel"], spec["args"], spec["num_warps"])])
print(json.dumps([len(launches)] + out, default=str))
"""


@pytest.mark.slow
def test_compile_specs_are_the_launchers_real_launches(tmp_path):
    """bench/compile_check.py must compile the kernels the launcher runs: the specialisation
    Triton's runtime derives from a real launch (dtypes, constexprs, which pointers and ints
    are 16-aligned) of a full production chunk equals the one from COMPILE_SPECS."""
    count, *pairs = _run_probe(tmp_path, LAUNCH_PROBE)
    assert count == 5 and len(pairs) == 2  # 4 halves' row kernels, one slot sum
    for name, launched, registered in pairs:
        assert launched == registered, name


def test_importing_the_check_leaves_the_interpreter_on():
    """tests import bench.compile_check in a session that runs every kernel in the interpreter;
    the import popped TRITON_INTERPRET, so the Triton kernels the session ran afterwards failed
    (Gluon's lazy import asserts the interpreter; new kernels were compiled for a GPU)."""
    code = "import os, bench.compile_check; print(os.environ.get('TRITON_INTERPRET'))"
    env = _compile_env() | {"TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1"


@pytest.mark.slow
def test_the_command_still_compiles_under_an_interpreted_environment(tmp_path):
    """`TRITON_INTERPRET=1 python -m bench.compile_check` (a shell that exported it for the
    tests) still compiles the real kernels."""
    out = tmp_path / "report.json"
    env = _compile_env() | {"TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "bench.compile_check", "--only", "sum_slots/fp32", "--arch", "80"]
    done = subprocess.run(
        [*cmd, "--out", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    rows = json.loads(out.read_text(encoding="utf-8"))["kernels"]
    assert [(r["kernel"], r["arch"], r["ok"]) for r in rows] == [("sum_slots/fp32", "sm_80", True)]
