"""fused_linear_reflection_loss, both backends, against the float64 reference (tests/reference).

The Triton kernels run in the CPU interpreter (conftest sets TRITON_INTERPRET=1) with small
tiles and chunks, so every shape below spans several chunks, vocabulary tiles and D tiles; the
production tiles and chunk sizes have their own tests below.
"""

import math

import pytest
import torch
from reference.loss import (
    plain_reflection_loss,
    reflection_loss_reference,
    reflection_loss_reference_chunked,
)
from reflectioncoder.kernels import fused_linear_reflection_loss
from reflectioncoder.kernels.fused_loss import (
    TILES,
    RowTiles,
    linear_reflection_loss,
    triton_interpreted,
)
from reflectioncoder.kernels.fused_loss_schedule import (
    CPU_BUDGET,
    GPU_BUDGET,
    ChunkBudget,
    build_plan,
)

SMALL = RowTiles(block_v=16, block_d=16, num_warps=1)
# fp32 tolerance, relative to the largest reference value of each output
TOL = {torch.float32: 3e-5}


def budget(rows: int) -> ChunkBudget:
    """A chunk budget of exactly ``rows`` slots at any V (tests: several chunks)."""
    return ChunkBudget(logits_bytes=2**62, max_rows=rows, row_multiple=2)


def run_backend(backend: str, *args, tiles: RowTiles = SMALL, rows: int = 6):
    """Small tiles / chunks so that the multi-tile, multi-chunk paths run at test sizes."""
    return linear_reflection_loss(*args, backend=backend, budget=budget(rows), tiles=tiles)


def make_case(n, d, v, p, dtype=torch.float32, ignore=0.3, dup=True):
    """Random inputs; logits of order 1-3 so that softmaxes are neither flat nor one-hot."""
    hidden = torch.randn(n, d).to(dtype)
    weight = (torch.randn(v, d) * (2.0 / math.sqrt(d))).to(dtype)
    targets = torch.randint(0, v, (n,))
    targets[torch.rand(n) < ignore] = -100
    ce_weight = torch.rand(n) * 2 + 0.05
    pairs = torch.stack([torch.randint(0, n, (p,)), torch.randint(0, n, (p,))], 1)
    if dup and p >= 3:  # a row in several pairs, as student and as teacher
        pairs[1, 1] = pairs[0, 1]
        pairs[2, 0] = pairs[0, 1]
    kl_weight = torch.rand(p) * 2 + 0.05
    return hidden, weight, targets, ce_weight, pairs, kl_weight


def reference_with_grads(case, grad_out: float):
    hidden, weight, *rest = case
    h = hidden.double().requires_grad_()
    w = weight.double().requires_grad_()
    loss, ce, kl = reflection_loss_reference(h, w, *rest)
    (loss * grad_out).backward()
    return loss.detach(), ce.detach(), kl.detach(), h.grad, w.grad


def ours_with_grads(backend, case, grad_out: float, **kw):
    hidden, weight, *rest = case
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss, parts = run_backend(backend, h, w, *rest, **kw)
    (loss * grad_out).backward()
    return loss.detach(), parts["ce"], parts["kl"], h.grad, w.grad


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().clamp_min(1e-12)
    return float((ours.double() - ref).abs().max() / scale)


def assert_close(ours, ref, tol):
    names = ("loss", "ce", "kl", "d hidden", "d weight")
    for name, a, b in zip(names, ours, ref, strict=True):
        assert torch.isfinite(a).all(), name
        if b.abs().max() == 0:
            assert (a == 0).all(), f"{name}: expected exact zeros"
        else:
            assert rel_err(a, b) <= tol, f"{name}: rel err {rel_err(a, b):.2e} > {tol:.0e}"


BACKENDS = ["torch", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "n, d, v, p",
    [
        (23, 37, 101, 9),  # odd everything, several pair chunks and CE-only chunks
        (13, 45, 67, 0),  # no KL pairs
        (1, 17, 19, 0),  # one row
        (31, 24, 50, 13),  # more pairs than solo rows
    ],
)
def test_matches_reference(seed, backend, n, d, v, p):
    case = make_case(n, d, v, p)
    g = 0.3 + torch.rand(()).item() * 2  # an upstream gradient other than 1
    assert_close(
        ours_with_grads(backend, case, g), reference_with_grads(case, g), TOL[torch.float32]
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_kl_pairs(seed, backend):
    """No CE anywhere: the loss is the KL alone, teachers get no gradient."""
    case = make_case(11, 21, 35, 7, ignore=1.0)
    ours = ours_with_grads(backend, case, 1.0)
    ref = reference_with_grads(case, 1.0)
    assert_close(ours, ref, TOL[torch.float32])
    assert ours[1] == 0
    pairs = case[4]
    teachers_only = torch.ones(11, dtype=torch.bool)
    teachers_only[pairs[:, 1]] = False
    assert (ours[3][teachers_only] == 0).all(), "a teacher row got a KL gradient"


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_rows_ignored(seed, backend):
    """No CE and no pairs: loss 0, gradients 0, no NaN."""
    case = make_case(9, 19, 29, 0, ignore=1.0)
    loss, ce, kl, dh, dw = ours_with_grads(backend, case, 1.7)
    assert loss == 0 and ce == 0 and kl == 0
    assert (dh == 0).all() and (dw == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_without_grad(seed, backend):
    """A frozen LM head: d weight is skipped, d hidden unchanged."""
    hidden, weight, *rest = make_case(10, 20, 33, 5)
    h = hidden.clone().requires_grad_()
    loss, _ = run_backend(backend, h, weight, *rest)
    loss.backward()
    ref_h = hidden.double().requires_grad_()
    reflection_loss_reference(ref_h, weight.double(), *rest)[0].backward()
    assert weight.grad is None
    assert rel_err(h.grad, ref_h.grad) <= TOL[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
def test_vocab_over_64k(seed, backend):
    """V above 64K (and odd): tiny N and D, several vocabulary tiles."""
    case = make_case(5, 7, 65_599, 3)
    tiles = RowTiles(block_v=16384, block_d=16, num_warps=1)
    ours = ours_with_grads(backend, case, 0.7, tiles=tiles, rows=4)
    # fp32 sums over 65K terms: a looser bound than the small cases
    assert_close(ours, reference_with_grads(case, 0.7), 5 * TOL[torch.float32])


def bf16_errors(outputs, ref):
    """Relative max error of loss, d hidden, d weight."""
    return [rel_err(outputs[i].float(), ref[i]) for i in (0, 3, 4)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_within_twice_torch_error(seed, backend, dtype):
    """bf16 and fp16 (the one-process engine's fp16 mode): our error vs float64 at most twice
    that of plain PyTorch computing in the same dtype, the gradients in the input dtype.

    Errors are summed over 8 batches: one scalar loss's error is too noisy to compare (with 3
    the ratio reached 2.10 at TEST_SEED=998136806; over 40 seeds with 8 the largest was 1.67;
    fp16's worst over 3 seeds was 1.09, d W)."""
    tiles = RowTiles(block_v=32, block_d=32, num_warps=1)
    ours, plain = [0.0] * 3, [0.0] * 3
    for _ in range(8):
        case = make_case(24, 48, 97, 8, dtype=dtype)
        ref = reference_with_grads(case, 1.0)
        hidden, weight, *rest = case
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        loss, ce, kl = plain_reflection_loss(h, w, *rest)
        loss.backward()
        errs = bf16_errors((loss.detach(), ce, kl, h.grad, w.grad), ref)
        plain = [a + b for a, b in zip(plain, errs, strict=True)]
        got = ours_with_grads(backend, case, 1.0, tiles=tiles, rows=8)
        assert all(t.dtype == dtype for t in got[3:]), "gradients in the input dtype"
        errs = bf16_errors(got, ref)
        ours = [a + b for a, b in zip(ours, errs, strict=True)]
    for name, a, b in zip(("loss", "d hidden", "d weight"), ours, plain, strict=True):
        assert a <= 2 * b, f"{name}: {dtype} error {a:.2e} > 2 x PyTorch's {b:.2e}"


def test_bf16_rule_over_many_chunks(seed):
    """d W is kept in bf16 across chunks (one rounding per chunk): with 7 pair chunks and the
    CE-only rows' (the headline shape has 8 chunks), the bf16 rule still holds (torch backend:
    the same GEMM accumulation as the GPU path). Errors summed over 12 batches: the rule is on
    the error's size, and a sum over few batches is a noisy measure of it (with 6 the d W ratio
    reached 2.08 at TEST_SEED=688, 1 seed in 800; with 12 the worst of those 800 was 1.73;
    about 16 chunks reach 2.1)."""
    ours, plain = [0.0] * 3, [0.0] * 3
    for _ in range(12):
        case = make_case(64, 48, 97, 28, dtype=torch.bfloat16, ignore=0.1)
        ref = reference_with_grads(case, 1.0)
        hidden, weight, *rest = case
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        loss, ce, kl = plain_reflection_loss(h, w, *rest)
        loss.backward()
        plain = [
            a + b
            for a, b in zip(
                plain, bf16_errors((loss.detach(), ce, kl, h.grad, w.grad), ref), strict=True
            )
        ]
        ours = [
            a + b
            for a, b in zip(
                ours, bf16_errors(ours_with_grads("torch", case, 1.0, rows=8), ref), strict=True
            )
        ]
    for name, a, b in zip(("loss", "d hidden", "d weight"), ours, plain, strict=True):
        assert a <= 2 * b, f"{name}: bf16 error {a:.2e} > 2 x PyTorch's {b:.2e}"


FORWARD_ONLY = {
    "no_grad": lambda run, h, w: _under_no_grad(run, h.requires_grad_(), w.requires_grad_()),
    "inputs without grad": lambda run, h, w: run(h, w, None),
    "need_grad=False": lambda run, h, w: run(h.requires_grad_(), w.requires_grad_(), False),
}


def _under_no_grad(run, h, w):
    with torch.no_grad():
        return run(h, w, None)


@pytest.mark.parametrize("how", sorted(FORWARD_ONLY))
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_only_equals_full_path(seed, backend, how):
    """The loss alone (each way of asking for it): bitwise the full path's loss and parts, the
    float64 reference's within tolerance, no graph, and no gradient work (the row maths never
    asked to write d z)."""
    case = make_case(15, 19, 45, 6)  # several chunks of halves, small for the interpreter
    hidden, weight, *rest = case
    full = ours_with_grads(backend, case, 1.0)
    calls = []

    def run(h, w, need_grad):
        return linear_reflection_loss(
            h, w, *rest, backend=backend, budget=budget(6), tiles=SMALL, need_grad=need_grad
        )

    from reflectioncoder.kernels import fused_loss_schedule

    real = fused_loss_schedule.run_chunks
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            "reflectioncoder.kernels.fused_loss.run_chunks",
            lambda *a: calls.append(a[4:]) or real(*a),
        )
        loss, parts = FORWARD_ONLY[how](run, hidden.clone(), weight.clone())
    assert calls == [(False, False)], "the forward-only call asked for gradients"
    assert not loss.requires_grad and loss.grad_fn is None
    for got, want in zip((loss, parts["ce"], parts["kl"]), full[:3], strict=True):
        assert torch.equal(got, want)
    ref = reflection_loss_reference(*case)
    assert rel_err(loss, ref[0]) <= TOL[torch.float32]
    assert rel_err(parts["kl"], ref[2]) <= TOL[torch.float32]


class LateSideStream:
    """A side stream at its most asynchronous: each row-maths call runs only when the main
    stream waits for it, so a GEMM that read d z too early, or overwrote logits whose row maths
    had not run, would give wrong values (on the CPU, what CUDA's second stream allows)."""

    def __init__(self, device):
        self.pending = []

    def run(self, fn):
        self.pending.append(fn)
        return fn

    def wait(self, fn):
        self.pending.remove(fn)
        fn()

    def wait_all(self):
        while self.pending:
            self.wait(self.pending[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_side_stream_waits_before_each_use(seed, backend, monkeypatch):
    """The pipelined schedule's synchronisation: with the row maths deferred to the last moment
    the main stream allows, loss and gradients still match float64 (several chunks of two
    halves, pairs and CE-only rows), and so does the forward alone."""
    from reflectioncoder.kernels import fused_loss_schedule

    monkeypatch.setattr(fused_loss_schedule, "SideStream", LateSideStream)
    case = make_case(23, 37, 101, 9)
    g = 0.3 + torch.rand(()).item() * 2
    assert_close(
        ours_with_grads(backend, case, g), reference_with_grads(case, g), TOL[torch.float32]
    )
    hidden, weight, *rest = case
    loss, _ = linear_reflection_loss(
        hidden, weight, *rest, backend=backend, budget=budget(6), tiles=SMALL, need_grad=False
    )
    assert rel_err(loss, reflection_loss_reference(*case)[0]) <= TOL[torch.float32]


def test_chunked_reference_matches_autograd(seed):
    """The hand-written float64 reference (GPU headline check) equals autograd's, rows in chunks
    that split teachers from their students; each row a student at most once."""
    case = make_case(37, 12, 53, 9, dup=False)
    students = torch.randperm(37)[:9]
    case[4][:, 1] = students  # unique students; teachers anywhere (a teacher may be a student)
    loss, _, _, dh, dw = reference_with_grads(case, 1.0)
    got = reflection_loss_reference_chunked(*case, rows=5)
    for name, a, b in zip(("loss", "d hidden", "d weight"), got, (loss, dh, dw), strict=True):
        assert rel_err(a, b) <= 1e-12, f"{name}: {rel_err(a, b):.1e}"


def test_auto_backend_is_torch_on_cpu_and_matches(seed):
    case = make_case(12, 16, 40, 4)
    loss, parts = fused_linear_reflection_loss(*case)
    ref = reflection_loss_reference(*case)
    assert rel_err(loss, ref[0]) <= TOL[torch.float32]
    assert rel_err(parts["ce"], ref[1]) <= TOL[torch.float32]
    assert rel_err(parts["kl"], ref[2]) <= TOL[torch.float32]
    assert parts["ce"].dim() == 0 and not parts["ce"].requires_grad
    assert torch.equal(loss, fused_linear_reflection_loss(*case, backend="torch")[0])
    if triton_interpreted():
        loss_t, _ = fused_linear_reflection_loss(*case, backend="triton")
        assert rel_err(loss_t, ref[0]) <= TOL[torch.float32]


def test_every_loss_slot_once(seed):
    """Plan: every CE row once, each pair's teacher and student in one chunk, no extra row."""
    _, _, targets, ce_weight, pairs, kl_weight = make_case(40, 4, 9, 11)
    plan = build_plan(targets, ce_weight, pairs, kl_weight, chunk_rows=8)
    for c in plan.chunks:
        if c.pairs:
            half = (c.stop - c.start) // 2
            got = plan.rows[c.start : c.stop].view(2, half).T
            assert torch.equal(got, pairs[c.pair0 : c.pair0 + half])
    assert sum(c.stop - c.start for c in plan.chunks) == plan.rows.shape[0]
    assert max(c.stop - c.start for c in plan.chunks) <= 8
    has_ce = plan.targets != -100
    ce_rows = plan.rows[has_ce]
    assert sorted(ce_rows.tolist()) == sorted((targets != -100).nonzero().squeeze(1).tolist())
    assert torch.equal(plan.ce_weight[has_ce], ce_weight[ce_rows])
    assert (plan.ce_weight[~has_ce] == 0).all()


def test_chunk_budget_at_production_shapes():
    """The GPU chunk at the headline shape (V = 128256, bf16): 2048 rows, 501 MiB of logits;
    at V = 32000, 8192 rows. CPU: about 64 MiB of logits, independent of N."""
    assert GPU_BUDGET.rows(128_256, 2) == 2048
    assert GPU_BUDGET.rows(32_000, 2) == 8192
    assert 2048 * 128_256 * 2 <= GPU_BUDGET.logits_bytes
    assert CPU_BUDGET.rows(32_000, 4) * 32_000 * 4 <= CPU_BUDGET.logits_bytes
    assert CPU_BUDGET.rows(128_256, 2) >= 2 and CPU_BUDGET.rows(7, 4) <= CPU_BUDGET.max_rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_production_tiles(seed, backend):
    """The production row-kernel tiles (BLOCK_V = 2048, three V tiles with a ragged tail) and
    a 256-row-multiple chunk budget, bf16, against the float64 reference."""
    case = make_case(40, 24, 5000, 12, dtype=torch.bfloat16)
    prod = ChunkBudget(logits_bytes=16 * 5000 * 2, max_rows=4096, row_multiple=8)
    hidden, weight, *rest = case
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss, parts = linear_reflection_loss(h, w, *rest, backend=backend, budget=prod, tiles=TILES)
    loss.backward()
    ref = reference_with_grads(case, 1.0)
    for name, ours, want in zip(
        ("loss", "d hidden", "d weight"),
        (loss, h.grad, w.grad),
        (ref[0], ref[3], ref[4]),
        strict=True,
    ):
        assert rel_err(ours.detach().float(), want) <= 3e-2, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_bitwise_reproducible(seed, backend):
    """Two runs on the same inputs give bitwise identical loss and gradients (no atomics)."""
    case = make_case(30, 20, 77, 10, dtype=torch.bfloat16)
    first = ours_with_grads(backend, case, 0.9)
    second = ours_with_grads(backend, case, 0.9)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def _bad(case, **changes):
    args = dict(
        zip(
            ("hidden", "weight", "targets", "ce_weight", "kl_pairs", "kl_weight"), case, strict=True
        )
    )
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "name, change",
    [
        ("hidden", lambda c: c[0][0]),
        ("hidden", lambda c: c[0].long()),
        ("weight", lambda c: c[1][:, :-1]),
        ("weight", lambda c: c[1].double()),
        ("targets", lambda c: c[2][:-1]),
        ("targets", lambda c: c[2].int()),
        ("targets", lambda c: torch.full_like(c[2], 40)),
        ("targets", lambda c: torch.full_like(c[2], -1)),
        ("ce_weight", lambda c: c[3].double()),
        ("ce_weight", lambda c: c[3][:3]),
        ("kl_pairs", lambda c: c[4][:, :1]),
        ("kl_pairs", lambda c: c[4].int()),
        ("kl_pairs", lambda c: c[4] + 12),
        ("kl_pairs", lambda c: c[4] - 12),
        ("kl_weight", lambda c: c[5][:-1]),
        ("kl_weight", lambda c: c[5].half()),
    ],
)
def test_bad_arguments_raise(seed, name, change):
    case = make_case(12, 16, 40, 4)
    with pytest.raises(ValueError, match=name):
        fused_linear_reflection_loss(**_bad(case, **{name: change(case)}))


def test_bad_backend_raises(seed):
    with pytest.raises(ValueError, match="backend"):
        fused_linear_reflection_loss(*make_case(4, 8, 10, 1), backend="cuda")
