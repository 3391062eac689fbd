"""review15: varlen_attention at its edges, against the float64 reference (tests/reference).

Failed before the fixes: an empty packed batch (T = 0) gave an output outside the autograd
graph, so a loss over it could not run backward (and the custom op's rerun backward returned
aliased gradients); ``cu_seqlens`` not starting at 0 was accepted on the SDPA path.
"""

import pytest
import torch
from reference.varlen_attention import varlen_attention_reference
from reflectioncoder.kernels import varlen_attention
from reflectioncoder.kernels.varlen_attention_op import varlen_attention_op

CALLS = {
    "function": lambda q, k, v, cu, mx: varlen_attention(q, k, v, cu, mx),
    "custom op": lambda q, k, v, cu, mx: varlen_attention_op(
        q, k, v, cu, mx, True, q.shape[-1] ** -0.5, "auto"
    ),
}


def cu_of(seqlens):
    return torch.tensor([0, *torch.tensor(seqlens).cumsum(0).tolist()], dtype=torch.int32)


@pytest.mark.parametrize("call", sorted(CALLS))
def test_empty_batch_runs_backward(call):
    q = torch.randn(0, 4, 8, requires_grad=True)
    k = torch.randn(0, 2, 8, requires_grad=True)
    v = torch.randn(0, 2, 8, requires_grad=True)
    out = CALLS[call](q, k, v, cu_of([0, 0]), 0)
    assert out.shape == (0, 4, 8)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape


def test_cu_seqlens_must_start_at_zero():
    q = torch.randn(7, 2, 8)
    with pytest.raises(ValueError, match="cu_seqlens"):
        varlen_attention(q, q, q, torch.tensor([2, 5, 9], dtype=torch.int32), 4)


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
def test_zero_and_one_length_segments_gqa(seed, call, dtype, tol):
    """Zero- and one-token segments, GQA 3:1, head size 12, a non-contiguous q (a view of a
    fused projection): output and gradients against float64."""
    seqlens = [0, 5, 1, 0, 9, 1]
    t = sum(seqlens)
    qkv = torch.randn(t, 5, 12).to(dtype)
    q = qkv[:, :3].clone().requires_grad_()
    q_view = torch.cat([q, q], 1)[:, :3]  # non-contiguous, still in q's graph
    k = qkv[:, 3:4].clone().requires_grad_()
    v = qkv[:, 4:5].clone().requires_grad_()
    grad = torch.randn(t, 3, 12)
    out = CALLS[call](q_view, k, v, cu_of(seqlens), max(seqlens))
    (out.float() * grad).sum().backward()
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = varlen_attention_reference(*leaves, seqlens)
    (ref * grad.double()).sum().backward()
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, q.grad, k.grad, v.grad),
                          (ref, *(x.grad for x in leaves)), strict=True):  # fmt: skip
        a, b = a.detach().double(), b.detach()
        err = float((a - b).abs().max() / b.abs().max())
        assert err <= tol, f"{name}: rel err {err:.1e}"
