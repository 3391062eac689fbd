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
