"""The fused loss with a final-logit soft cap (Gemma 2's ``final_logit_softcapping``): logits
z = c tanh(W h / c) before the CE and the KL, and d z times tanh's derivative 1 - tanh^2 before
the GEMMs back to h and W. Both backends (Triton in the CPU interpreter, small tiles and chunks:
several chunks of pairs and CE-only rows, several vocabulary tiles) against the float64
reference on fresh random inputs; the loss alone (both schedules); the LM head bias and the
logit scale composed with it (scale first, then the cap, as transformers' Gemma 2 orders them).
"""

import math
import types

import pytest
import torch
from reference.loss import _weighted_loss, plain_reflection_loss, reflection_loss_reference
from reflectioncoder.kernels import fused_linear_reflection_loss
from reflectioncoder.kernels.fused_loss import linear_reflection_loss
from test_fused_loss import SMALL, TOL, assert_close, bf16_errors, budget, make_case, rel_err
from test_fused_loss_stats import SMALL as GEMM_SMALL

from reflectioncoder.loss import reflection_loss

BACKENDS = ["torch", "triton"]
# Caps that bind hard (logits of order 1-3 against c = 1.5) and loosely (Gemma 2's 30 against
# logits scaled up to order 10-30): tanh's curvature and its near-linear part.
CAPS = {1.5: 1.0, 30.0: 10.0}


def capped_case(n, d, v, p, cap, dtype=torch.float32, **kw):
    """test_fused_loss's random case in ``dtype``, its logits scaled to the cap (``CAPS``)."""
    hidden, weight, *rest = make_case(n, d, v, p, **kw)
    return (hidden.to(dtype), (weight * CAPS[cap]).to(dtype), *rest)


def run(backend, case, cap, rows=6, tiles=SMALL, **kw):
    hidden, weight, *rest = case
    return linear_reflection_loss(
        hidden, weight, *rest, backend=backend, budget=budget(rows), tiles=tiles, softcap=cap,
        **kw,
    )  # fmt: skip


def ours_with_grads(backend, case, cap, g, **kw):
    hidden, weight, *rest = case
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, parts = run(backend, (h, w, *rest), cap, **kw)
    (loss * g).backward()
    return loss.detach(), parts["ce"], parts["kl"], h.grad, w.grad


def reference_with_grads(case, cap, g):
    hidden, weight, *rest = case
    h, w = hidden.double().requires_grad_(), weight.double().requires_grad_()
    loss, ce, kl = reflection_loss_reference(h, w, *rest, softcap=cap)
    (loss * g).backward()
    return loss.detach(), ce.detach(), kl.detach(), h.grad, w.grad


@pytest.mark.parametrize("cap", sorted(CAPS))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "n, d, v, p",
    [
        (23, 37, 101, 9),  # odd everything, several pair chunks and CE-only chunks
        (13, 45, 67, 0),  # no KL pairs: CE-only chunks alone
        (11, 21, 35, 7),  # more pairs than CE-only rows
    ],
)
def test_softcapped_loss_and_gradients_match_float64(seed, backend, cap, n, d, v, p):
    case = capped_case(n, d, v, p, cap)
    g = 0.3 + torch.rand(()).item() * 2  # an upstream gradient other than 1
    ours = ours_with_grads(backend, case, cap, g)
    ref = reference_with_grads(case, cap, g)
    assert_close(ours, ref, TOL[torch.float32])
    plain = reflection_loss_reference(*case)[0]  # the cap is applied, not dropped
    assert rel_err(ours[0], plain) > 10 * TOL[torch.float32]


def test_float64_is_exact_and_passes_gradcheck(seed):
    """fp64 inputs run the torch backend in fp64 throughout: the float64 reference to 1e-12,
    and finite differences of the CE rows (torch.autograd.gradcheck; the KL's teacher is
    detached, so its finite differences are not the KL's gradient) agree with d h and d W."""
    hidden, weight, *rest = capped_case(9, 7, 23, 4, 1.5)
    case64 = (hidden.double(), weight.double(), *rest)
    ours = ours_with_grads("torch", case64, 1.5, 1.3)
    assert_close(ours, reference_with_grads(case64, 1.5, 1.3), 1e-12)
    h, w = (x.double().requires_grad_() for x in (hidden, weight))
    no_pairs = (torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0))
    ce_only = (*rest[:2], *no_pairs)
    assert torch.autograd.gradcheck(lambda h, w: run("torch", (h, w, *ce_only), 1.5)[0], (h, w))


@pytest.mark.parametrize("backend", BACKENDS)
def test_teachers_get_no_kl_gradient_through_the_cap(seed, backend):
    """No CE anywhere: the loss is the KL of the capped logits alone; teachers get nothing."""
    case = capped_case(11, 21, 35, 7, 1.5, ignore=1.0)
    ours = ours_with_grads(backend, case, 1.5, 1.0)
    assert_close(ours, reference_with_grads(case, 1.5, 1.0), TOL[torch.float32])
    teachers_only = torch.ones(11, dtype=torch.bool)
    teachers_only[case[4][:, 1]] = False
    assert (ours[3][teachers_only] == 0).all(), "a teacher row got a KL gradient"


@pytest.mark.parametrize(
    ("backend", "dtype"),
    [
        ("torch", torch.bfloat16),
        ("torch", torch.float16),
        pytest.param("triton", torch.bfloat16, marks=pytest.mark.slow),  # 8 s interpreted
        pytest.param("triton", torch.float16, marks=pytest.mark.slow),
    ],
)
def test_low_precision_within_twice_torch_error(seed, backend, dtype):
    """bf16 / fp16 with the cap: error against float64 at most twice plain PyTorch's in the
    same dtype (its cap in that dtype too, as transformers computes it), summed over 8 batches
    as test_fused_loss's rule does."""
    tiles = SMALL.__class__(block_v=32, block_d=32, num_warps=1)
    ours, plain = [0.0] * 3, [0.0] * 3
    for _ in range(8):
        case = capped_case(24, 48, 97, 8, 30.0, dtype=dtype)
        ref = reference_with_grads(case, 30.0, 1.0)
        hidden, weight, *rest = case
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss, ce, kl = plain_reflection_loss(h, w, *rest, softcap=30.0)
        loss.backward()
        errs = bf16_errors((loss.detach(), ce, kl, h.grad, w.grad), ref)
        plain = [a + b for a, b in zip(plain, errs, strict=True)]
        got = ours_with_grads(backend, case, 30.0, 1.0, tiles=tiles, rows=8)
        assert all(t.dtype == dtype for t in got[3:]), "gradients in the input dtype"
        ours = [a + b for a, b in zip(ours, bf16_errors(got, ref), strict=True)]
    for name, a, b in zip(("loss", "d hidden", "d weight"), ours, plain, strict=True):
        assert a <= 2 * b, f"{name}: {dtype} error {a:.2e} > 2 x PyTorch's {b:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_loss_alone_is_the_full_paths(seed, backend):
    """need_grad=False with the cap: bitwise the full path's loss and parts, no graph."""
    case = capped_case(15, 19, 45, 6, 1.5)
    full = ours_with_grads(backend, case, 1.5, 1.0)
    loss, parts = run(backend, case, 1.5, need_grad=False)
    assert loss.grad_fn is None
    for got, want in zip((loss, parts["ce"], parts["kl"]), full[:3], strict=True):
        assert torch.equal(got, want)


def test_the_statistics_epilogue_applies_the_cap(seed):
    """The loss alone with the statistics in the GEMM's epilogue (Triton): float64's, capped."""
    case = capped_case(23, 37, 101, 9, 1.5)
    hidden, weight, *rest = case
    loss, parts = linear_reflection_loss(
        hidden, weight, *rest, backend="triton", budget=budget(6), gemm_tiles=GEMM_SMALL,
        need_grad=False, loss_only_schedule="stats_epilogue", softcap=1.5,
    )  # fmt: skip
    ref = reflection_loss_reference(*case, softcap=1.5)
    for got, want in zip((loss, parts["ce"], parts["kl"]), ref, strict=True):
        assert rel_err(got, want) <= TOL[torch.float32]


def _head_rows(dtype):
    n, d, v = 12, 16, 40
    hidden = torch.randn(n, d, dtype=dtype, requires_grad=True)
    weight = (torch.randn(v, d, dtype=dtype) / math.sqrt(d)).requires_grad_()
    bias = (3 * torch.randn(v, dtype=dtype)).requires_grad_()
    batch = types.SimpleNamespace(
        loss_rows=torch.tensor([0, 2, 3, 5, 7, 8, 11]),
        targets=torch.tensor([4, -100, 9, 33, 1, -100, 20]),
        ce_weight=torch.rand(7) * torch.tensor([1.0, 0, 1, 1, 1, 0, 1]),
        kl_pairs=torch.tensor([[1, 4], [2, 6], [5, 3]]),
        kl_weight=torch.rand(3) + 0.1,
    )
    return hidden, weight, bias, batch


@pytest.mark.parametrize(
    ("backend", "dtype"), [("torch", torch.float64), ("triton", torch.float32)]
)
def test_bias_and_scale_compose_with_the_cap(seed, backend, dtype):
    """logits = c tanh(s (W h + b) / c): the loss module's order (the scale on h and b, the
    bias as [W | b] [h; 1], then the cap in the fused loss); value and d h, d W, d b."""
    hidden, weight, bias, batch = _head_rows(dtype)
    scale, cap = 2.5, 4.0
    loss, parts = reflection_loss(
        hidden * scale, batch, weight, backend=backend, lm_head_bias=bias * scale, softcap=cap
    )
    loss.backward()
    h, w, b = (x.detach().double().requires_grad_() for x in (hidden, weight, bias))
    logits = cap * torch.tanh(scale * (h[batch.loss_rows] @ w.T + b) / cap)
    want = _weighted_loss(logits, batch.targets, batch.ce_weight, batch.kl_pairs,
                          batch.kl_weight)  # fmt: skip
    want[0].backward()
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    for got, ref in zip((loss, parts["ce"], parts["kl"]), want, strict=True):
        torch.testing.assert_close(got.double(), ref.detach(), **tol)
    got = (hidden.grad, weight.grad, bias.grad)
    for name, g, r in zip(("d h", "d W", "d b"), got, (h.grad, w.grad, b.grad), strict=True):
        torch.testing.assert_close(g.double(), r, **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("cap", [0.0, -30.0, float("inf"), float("nan"), "30", True])
def test_a_bad_cap_is_refused(cap):
    case = make_case(4, 8, 16, 1)
    with pytest.raises(ValueError, match=r"^softcap: expected"):
        fused_linear_reflection_loss(*case, softcap=cap)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vocab_over_64k(seed, backend):
    """V above 64K (and odd): tiny N and D, several 16K vocabulary tiles, the cap binding."""
    case = capped_case(5, 7, 65_599, 3, 1.5)
    tiles = SMALL.__class__(block_v=16384, block_d=16, num_warps=1)
    ours = ours_with_grads(backend, case, 1.5, 0.7, tiles=tiles, rows=4)
    # fp32 sums over 65K terms: test_fused_loss's looser bound for this shape
    assert_close(ours, reference_with_grads(case, 1.5, 0.7), 5 * TOL[torch.float32])
