"""``ce_only_rows`` (the CE-only rows a packed batch hands the loss) is an argument like the
others: out of range or given twice, it raises a ValueError naming it when indices are checked
(on CPU by default). A row given twice had its CE counted twice, silently; a row past N was
an IndexError."""

from __future__ import annotations

import pytest
import torch
from reflectioncoder.kernels import fused_linear_reflection_loss


def _case(n=6, d=4, v=10):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(n, d, generator=g),
        torch.randn(v, d, generator=g),
        torch.randint(0, v, (n,), generator=g),
        torch.ones(n),
        torch.tensor([[0, 1]]),
        torch.ones(1),
    )


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([2, 3, 4, 9], r"ce_only_rows: row indices must lie in \[0, N=6\)"),
        ([-1, 2, 3, 4, 5], r"ce_only_rows: row indices must lie in \[0, N=6\)"),
        ([2, 2, 3, 4, 5], "ce_only_rows: must be strictly ascending"),
        ([5, 4, 3, 2], "ce_only_rows: must be strictly ascending"),
    ],
)
def test_bad_ce_only_rows_name_the_argument(backend, rows, message):
    case = _case()
    with pytest.raises(ValueError, match=message):
        fused_linear_reflection_loss(
            *case, backend=backend, ce_only_rows=torch.tensor(rows, dtype=torch.int64)
        )


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_the_right_ce_only_rows_give_the_loss_without_them(backend):
    case = _case()
    with_rows, _ = fused_linear_reflection_loss(
        *case, backend=backend, ce_only_rows=torch.tensor([2, 3, 4, 5])
    )
    without, _ = fused_linear_reflection_loss(*case, backend=backend)
    torch.testing.assert_close(with_rows, without)
