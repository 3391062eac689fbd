"""The loss suite's side-by-side providers (issue 20, item 1; bench/providers/loss.py) on the
CPU: torch's ``linear_cross_entropy`` (its reference path and chunked), ours and the full-logit
reference run here, as does Liger's JSD distillation loss where Liger is installed; the CUDA-only
ones skip with their reason; each runs as the suite times it and gives its quantity within the
suite's tolerance of float64; every row records the provider's version, code path and settings,
and the ratio table lists them."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bench.providers import loss as L
from bench.report import ratio_table

CPU_NATIVE = ["reference", "ours:torch", "torch_lce", "torch_lce:chunked"]
CUDA_ONLY = ["liger:sm90", "quack", "cce"]
HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None


def test_which_providers_run_here_and_why_the_others_do_not():
    assert set(CPU_NATIVE + CUDA_ONLY) <= set(L.providers())
    for name in CPU_NATIVE:
        assert L.unavailable(name, "cpu") is None, name
    for name in CUDA_ONLY:
        reason = L.unavailable(name, "cpu")
        assert reason and reason.startswith(name) and "needs" in reason, (name, reason)
    jsd = L.unavailable("liger:jsd", "cpu")
    assert (jsd is None) == HAS_LIGER, jsd


@pytest.mark.parametrize("mode", ["full", "eval"])
@pytest.mark.parametrize("provider", [*CPU_NATIVE, "liger:jsd"])
def test_each_runs_as_timed_and_matches_float64(seed, provider, mode):
    if L.unavailable(provider, "cpu"):
        pytest.skip(L.unavailable(provider, "cpu"))
    x = L.setup_loss(96, 32, 300, torch.float32, "cpu", seed=seed)
    step = L.make_step(provider, mode, x, "cpu")
    loss = step()
    assert loss.requires_grad == (mode == "full")
    assert (x["weight"].grad is not None) == (mode == "full")
    err = L.value_error(provider, x, loss, key=(provider, mode, seed))
    assert err <= L.VALUE_TOL[torch.float32], f"{provider}: {err:.2e} off float64"
    assert L.deterministic(step, x)


def test_a_wrong_loss_is_caught():
    x = L.setup_loss(64, 16, 200, torch.float32, "cpu", seed=0)
    good = L.make_loss_fn("torch_lce", x)()
    assert L.value_error("torch_lce", x, good, key="good") <= L.VALUE_TOL[torch.float32]
    # CE alone, without the KL the recipe adds: off by far more than the tolerance
    ce = torch.nn.functional.linear_cross_entropy(x["hidden"], x["weight"], x["targets"])
    assert L.value_error("torch_lce", x, ce, key="good") > 100 * L.VALUE_TOL[torch.float32]


def test_every_row_records_version_path_and_settings():
    rows = []
    for name in L.providers():
        info = L.describe(name)
        assert {"version", "path", "settings", "kl", "quantity"} <= info.keys()
        assert info["path"] and isinstance(info["settings"], dict) and info["settings"]
        if L.unavailable(name, "cpu") is None:
            assert info["version"], name  # installed: its version is known
            rows.append(dict(info, provider=name, group="g", wall_ms=2.0, cpu_ms=1.0,
                             baseline=name == "reference"))  # fmt: skip
    assert torch.__version__ == L.describe("torch_lce")["version"]
    table = ratio_table(rows)
    notes = table.split("Providers:", 1)[1].splitlines()
    for row in rows:
        (line,) = [n for n in notes if n.startswith(f"- {row['provider']} ")]
        assert row["version"] in line and row["path"] in line
