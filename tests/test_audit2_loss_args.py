"""A hidden size that does not match the LM head's is named on both sides: the ValueError says
`hidden` as well as `weight`, whichever of the two the caller got wrong (issue 2: bad arguments
raise a ValueError that names the argument)."""

from __future__ import annotations

import pytest
import torch
from reflectioncoder.kernels import fused_linear_reflection_loss


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("wrong", ["hidden", "weight"])
def test_hidden_size_mismatch_names_both_arguments(backend, wrong):
    n, d, v = 5, 6, 9
    hidden = torch.randn(n, d + (wrong == "hidden"))
    weight = torch.randn(v, d + (wrong == "weight"))
    targets = torch.randint(0, v, (n,))
    pairs = torch.tensor([[0, 1]])
    args = (hidden, weight, targets, torch.ones(n), pairs, torch.ones(1))
    with pytest.raises(ValueError, match="hidden") as err:
        fused_linear_reflection_loss(*args, backend=backend)
    assert "weight" in str(err.value) and str(tuple(hidden.shape)) in str(err.value)
