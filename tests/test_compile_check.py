"""bench/compile_check.py reads real cubins: the runtime's specialisation reaches the compiler,
and its SASS reader finds fenced atomics and spills in loops (a kernel made to have them).

Compiles for sm_90 with no GPU, in a subprocess (the check needs TRITON_INTERPRET unset, which
the test session sets)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT

PROBE = textwrap.dedent(
    """
    import json, sys
    import bench.compile_check as cc
    import torch, triton
    import triton.language as tl

    @triton.jit
    def atomic_loop(X, Out, n, BLOCK: tl.constexpr):
        cols = tl.arange(0, BLOCK)
        for k in range(0, n, BLOCK):
            tl.atomic_add(Out + cols, tl.load(X + k + cols))  # default sem: acq_rel (fenced)

    x = torch.empty(16)
    spec = {"name": "probe", "kernel": atomic_loop, "num_warps": 4, "num_stages": 3,
            "args": {"X": x, "Out": x, "n": 4096, "BLOCK": 128}}
    row = cc.compile_one(spec, 90)
    from reflectioncoder.kernels.fused_loss import COMPILE_SPECS
    rows = cc.compile_one(next(s for s in COMPILE_SPECS if "pairs/bf16" in s["name"]), 90)
    json.dump([row, rows], sys.stdout, default=str)
    """
)


@pytest.mark.slow
def test_sass_reader_and_runtime_specialisation(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    probe_file = tmp_path / "probe.py"  # @triton.jit needs its source in a file
    probe_file.write_text(PROBE)
    done = subprocess.run(
        [sys.executable, str(probe_file)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    probe, rows = json.loads(done.stdout)
    assert probe["loops"] >= 1 and probe["atomics_in_loops"] >= 1
    assert probe["fenced_atomics_in_loops"] >= 1 and not probe["ok"]
    assert "fenced atomics" in probe["error"]
    # the production row kernel: specialised as launched (16-byte aligned pointers, V and the
    # stride divisible by 16), no atomics, fences or spills in its loops
    assert {"Z_ptr", "Tgt_ptr", "V", "Z_stride"} <= set(rows["aligned_args"])
    assert rows["constexprs"]["BLOCK_V"] == 2048 and rows["constexprs"]["PAIRS"] is True
    assert rows["ok"] and rows["atomics_total"] == 0 and rows["spill_ops_in_loops"] == 0


def test_the_loss_doc_counts_every_kernel_the_check_compiles():
    """docs/loss.md shows the check's last line: as many kernels as it compiles today, each for
    sm_80 and sm_90 (--arch's default)."""
    import re

    import bench.compile_check as cc

    compiled = 2 * len(cc.discover_specs())
    text = (REPO_ROOT / "docs" / "loss.md").read_text(encoding="utf-8")
    shown = re.findall(r"(\d+)/(\d+) compiled within limits", text)
    assert shown == [(str(compiled), str(compiled))]
