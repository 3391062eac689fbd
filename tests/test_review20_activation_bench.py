"""bench/bench_activation_memory.py measures the same bytes whichever row a process measures
first (its first forward left memory behind that the first row counted: ``none`` came out 6%
low at every shape), and at a shape it was never fitted on the formula holds: the plan's
``none`` plus the CPU's per-segment attention copy, the checkpointed policies as they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from reflectioncoder import memory_plan as mp
from reflectioncoder.train.flops import ModelShape

FRESH = {"vocab": 512, "arch": {"hidden_size": 192, "intermediate_size": 512, "num_heads": 6,
                                "num_kv_heads": 3}}  # fmt: skip
SCRIPT = """
import json, sys
from bench.bench_activation_memory import per_token_and_layer
sizes = json.loads(sys.argv[1])
rows = [per_token_and_layer(p, sizes, 2048)["bytes_per_token_layer"]
        for p in ("none", "none", "save_gemms", "mlp_rerun", "full")]
print(json.dumps(rows))
"""


@pytest.mark.slow
def test_first_row_of_a_process_and_an_unseen_shape():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", SCRIPT, json.dumps(FRESH)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    first, again, save_gemms, mlp_rerun, full = json.loads(done.stdout.splitlines()[-1])
    assert first == pytest.approx(again, rel=0.005)
    a = FRESH["arch"]
    shape = ModelShape.llama(a["hidden_size"], a["intermediate_size"], 2, a["num_heads"],
                             a["num_kv_heads"], FRESH["vocab"])  # fmt: skip
    cpu_copy = 4 * shape.attn_width
    assert first == pytest.approx(mp.kept_per_token("none", shape, 4) + cpu_copy, rel=0.02)
    for policy, measured in (("save_gemms", save_gemms), ("mlp_rerun", mlp_rerun), ("full", full)):
        want = mp.kept_per_token(policy, shape, 4)
        assert abs(measured - want) <= max(0.02 * measured, 100), (policy, measured, want)
