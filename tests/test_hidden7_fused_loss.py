"""hidden7: issue 2's fused loss at the edges a caller reaches, against a float64 reference.

Fresh random inputs each run (the ``seed`` fixture); both backends (Triton in the interpreter).
What is checked here and not elsewhere: logits far from 0 (the online log-sum-exp), views that
are not contiguous (a transposed hidden, a sliced LM head), a frozen body (d W only), a NaN on a
loss row (the trainer's non-finite skip depends on seeing it) while a NaN on a row with no loss
term stays out, and arguments of the wrong rank.
"""

import math

import pytest
import torch
from reference.loss import reflection_loss_reference
from reflectioncoder.kernels import fused_linear_reflection_loss
from reflectioncoder.kernels.fused_loss import RowTiles, linear_reflection_loss
from reflectioncoder.kernels.fused_loss_schedule import ChunkBudget

SMALL = RowTiles(block_v=16, block_d=16, num_warps=1)
BACKENDS = ["torch", "triton"]


def random_case(n, d, v, p, scale=1.0):
    hidden = torch.randn(n, d) * scale
    weight = torch.randn(v, d) * (2.0 / math.sqrt(d))
    targets = torch.randint(0, v, (n,))
    targets[torch.rand(n) < 0.3] = -100
    ce_weight = torch.rand(n) * 2 + 0.05
    pairs = torch.randint(0, n, (p, 2))
    kl_weight = torch.rand(p) * 2 + 0.05
    return hidden, weight, targets, ce_weight, pairs, kl_weight


def run(backend, hidden, weight, *rest):
    """Small tiles and chunks of 6 slots: several chunks and vocabulary tiles at test sizes."""
    budget = ChunkBudget(logits_bytes=2**62, max_rows=6, row_multiple=2)
    return linear_reflection_loss(
        hidden, weight, *rest, backend=backend, budget=budget, tiles=SMALL
    )


def reference(hidden, weight, *rest, g=1.0):
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    loss = reflection_loss_reference(h, w, *rest)[0]
    (loss * g).backward()
    return loss.detach(), h.grad, w.grad


def rel_err(a, b):
    return float((a.detach().double() - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_in_the_hundreds_stay_exact(seed, backend):
    """Hidden states 60x larger: logits of a few hundred, whose exp overflows fp32 unless the
    log-sum-exp subtracts the running max. Loss and gradients still match float64."""
    args = random_case(17, 23, 61, 7, scale=60.0)
    h = args[0].clone().requires_grad_()
    w = args[1].clone().requires_grad_()
    loss, parts = run(backend, h, w, *args[2:])
    (loss * 0.6).backward()
    want = reference(*args, g=0.6)
    assert torch.isfinite(loss) and torch.isfinite(parts["kl"])
    assert want[0] > 100, "the case must have large losses to test anything"
    for name, got, ref in zip(
        ("loss", "d hidden", "d weight"), (loss, h.grad, w.grad), want, strict=True
    ):
        assert torch.isfinite(got).all(), name
        assert rel_err(got, ref) <= 1e-4, f"{name}: {rel_err(got, ref):.1e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_that_are_not_contiguous(seed, backend):
    """hidden as a transposed view and the LM head as a column slice of a wider matrix: the
    gradients land on the views' own shapes, equal to the float64 reference."""
    n, d, v = 13, 19, 37
    args = random_case(n, d, v, 5)
    hidden_t = args[0].t().contiguous().requires_grad_()  # (D, N); hidden is its .t()
    wide = torch.cat([args[1], torch.randn(v, 4)], 1).requires_grad_()  # (V, D + 4)
    hidden, weight = hidden_t.t(), wide[:, :d]
    assert not hidden.is_contiguous() and not weight.is_contiguous()
    loss, _ = run(backend, hidden, weight, *args[2:])
    loss.backward()
    want = reference(*args)
    assert rel_err(loss, want[0]) <= 3e-5
    assert rel_err(hidden_t.grad.t(), want[1]) <= 3e-5
    assert rel_err(wide.grad[:, :d], want[2]) <= 3e-5
    assert (wide.grad[:, d:] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_body_gets_only_d_weight(seed, backend):
    """hidden without grad, the head with grad (a frozen body, a trained head): d W only."""
    args = random_case(11, 14, 29, 4)
    w = args[1].clone().requires_grad_()
    loss, _ = run(backend, args[0], w, *args[2:])
    (loss * 1.9).backward()
    want = reference(*args, g=1.9)
    assert rel_err(loss, want[0]) <= 3e-5
    assert rel_err(w.grad, want[2]) <= 3e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_on_a_loss_row_is_seen_and_on_no_loss_row_is_not(seed, backend):
    """A NaN in the hidden state of a CE row, or of a pair's student, makes the loss
    non-finite (what the trainer's skip tests); a NaN on a row with no CE and no pair leaves
    loss and gradients finite and equal to those without that row's NaN."""
    hidden, weight, targets, ce_weight, pairs, kl_weight = random_case(12, 10, 33, 0)
    targets[:] = torch.randint(0, 33, (12,))
    targets[11] = -100  # row 11: no CE, in no pair
    pairs = torch.tensor([[0, 5], [1, 6]])
    kl_weight = torch.tensor([0.7, 1.3])
    targets[5] = -100  # row 5: a student with no CE of its own
    for bad_row in (3, 5):
        h = hidden.clone()
        h[bad_row, 2] = float("nan")
        loss, _ = run(backend, h, weight, targets, ce_weight, pairs, kl_weight)
        assert not torch.isfinite(loss), f"row {bad_row}'s NaN was lost"
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    clean, _ = run(backend, h, w, targets, ce_weight, pairs, kl_weight)
    clean.backward()
    h_nan = hidden.clone()
    h_nan[11] = float("nan")
    h_nan.requires_grad_()
    w2 = weight.clone().requires_grad_()
    loss, _ = run(backend, h_nan, w2, targets, ce_weight, pairs, kl_weight)
    loss.backward()
    assert torch.equal(loss, clean)
    assert torch.isfinite(w2.grad).all() and torch.equal(w2.grad, w.grad)
    assert (h_nan.grad[11] == 0).all() and torch.equal(h_nan.grad[:11], h.grad[:11])


@pytest.mark.parametrize(
    "name, change",
    [
        ("hidden", lambda a: a[0].unsqueeze(0)),  # (1, N, D): a batch dimension left in
        ("weight", lambda a: a[1].unsqueeze(0)),
        ("targets", lambda a: a[2].unsqueeze(1)),  # (N, 1)
        ("ce_weight", lambda a: a[3].unsqueeze(0)),
        ("ce_weight", lambda a: a[3].half()),
        ("kl_pairs", lambda a: a[4].reshape(-1)),  # flattened pairs
        ("kl_pairs", lambda a: a[4].t()),  # (2, P)
        ("kl_weight", lambda a: a[5].unsqueeze(1)),
        ("targets", lambda a: a[2].float()),
    ],
)
def test_wrong_rank_or_dtype_names_the_argument(seed, name, change):
    args = random_case(6, 8, 12, 3)
    names = ("hidden", "weight", "targets", "ce_weight", "kl_pairs", "kl_weight")
    kwargs = dict(zip(names, args, strict=True))
    kwargs[name] = change(args)
    with pytest.raises(ValueError, match=f"^{name}:"):
        fused_linear_reflection_loss(**kwargs)
