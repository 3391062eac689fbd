"""The loss alone with the statistics in the logits GEMM's epilogue (kernels/fused_loss_stats.py),
in the CPU interpreter with small tiles: several chunks, row blocks, vocabulary tiles with a
ragged tail and K steps with a ragged tail, against the float64 reference."""

import inspect

import numpy as np
import pytest
import torch
import triton.language as tl
from reference.loss import reflection_loss_reference
from reflectioncoder.kernels import fused_loss_stats
from reflectioncoder.kernels.fused_loss import linear_reflection_loss
from reflectioncoder.kernels.fused_loss_stats import GemmTiles
from test_fused_loss import budget, make_case, rel_err
from triton.runtime import interpreter

SMALL = GemmTiles(block_m=16, block_v=16, block_k=16, num_warps=1, num_stages=1)


@pytest.fixture
def gpu_bf16(monkeypatch):
    """bf16 in Triton 3.9's interpreter as on the GPU. The interpreter multiplies bf16 tiles as
    their uint16 bit patterns (its ``create_dot`` widens only 8-bit floats) and truncates fp32
    to bf16; tensor cores multiply bf16 exactly and add in fp32 (numpy on the operands widened
    to fp32), and the GPU rounds fp32 to bf16 to nearest even (torch's cast)."""
    builder = interpreter.InterpreterBuilder
    dot, trunc = builder.create_dot, builder.create_fp_trunc

    def widen(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        data = interpreter._convert_float(x.data, tl.bfloat16, tl.float32, None)
        return interpreter.TensorHandle(data.view(np.float32), tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    def create_fp_trunc(self, src, dst_type):
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:
            return trunc(self, src, dst_type)
        rounded = torch.from_numpy(np.ascontiguousarray(src.data)).bfloat16()
        return interpreter.TensorHandle(
            rounded.view(torch.int16).numpy().view(np.uint16), tl.bfloat16
        )

    monkeypatch.setattr(builder, "create_dot", create_dot)
    monkeypatch.setattr(builder, "create_fp_trunc", create_fp_trunc)


def loss_alone(case, schedule, rows=6):
    hidden, weight, *rest = case
    return linear_reflection_loss(
        hidden, weight, *rest, backend="triton", budget=budget(rows), gemm_tiles=SMALL,
        need_grad=False, loss_only_schedule=schedule,
    )  # fmt: skip


def test_matches_float64(seed):
    """fp32: loss, CE and KL within 3e-5 of float64 (pairs with a row in several of them,
    CE-only rows, ignored targets; D = 37 and V = 101 leave ragged K and V tiles)."""
    case = make_case(23, 37, 101, 9)
    loss, parts = loss_alone(case, "stats_epilogue")
    ref = reflection_loss_reference(*case)
    for got, want in zip((loss, parts["ce"], parts["kl"]), ref, strict=True):
        assert rel_err(got, want) <= 3e-5
    assert not loss.requires_grad


def test_statistics_stay_fp32_under_another_default_dtype(seed):
    """The tile statistics are fp32 whatever ``torch.set_default_dtype`` says (a user's
    script may set bf16): the loss as accurate as under fp32's default."""
    case = make_case(23, 37, 101, 9)
    ref = reflection_loss_reference(*case)
    torch.set_default_dtype(torch.bfloat16)
    try:
        loss, _ = loss_alone(case, "stats_epilogue")
    finally:
        torch.set_default_dtype(torch.float32)
    assert rel_err(loss, ref[0]) <= 3e-5


def test_bf16_as_the_gemm_then_rows_path(seed, gpu_bf16):
    """bf16: the statistics come from the logits rounded to bf16, as the default path's buffer
    holds them, so both schedules agree to fp32 summation order and both are within bf16's error
    of float64."""
    case = make_case(30, 40, 77, 10, dtype=torch.bfloat16)
    ref = reflection_loss_reference(*case)[0]
    ours, _ = loss_alone(case, "stats_epilogue")
    rows, _ = loss_alone(case, "gemm_rows")
    assert rel_err(ours, rows.double()) <= 1e-5
    assert rel_err(ours, ref) <= 2 * rel_err(rows, ref) + 1e-5


@pytest.mark.parametrize(
    "backend, schedule", [("torch", "stats_epilogue"), ("triton", "gemm_rows_and_stats")]
)
def test_bad_schedule_raises(seed, backend, schedule):
    hidden, weight, *rest = make_case(4, 8, 16, 2)
    with pytest.raises(ValueError, match="loss_only_schedule"):
        linear_reflection_loss(
            hidden, weight, *rest, backend=backend, need_grad=False, loss_only_schedule=schedule
        )


def test_no_atomics_so_runs_are_bitwise_equal():
    """Bitwise reproducible on the GPU because every statistic has one writer and the fold runs
    in a fixed order: no atomic adds in the module (the interpreter runs programs one after
    another, so two runs there are equal with atomics too and would prove nothing)."""
    source = inspect.getsource(fused_loss_stats)
    assert "tl.atomic" not in source and "index_add" not in source and "scatter_add" not in source
