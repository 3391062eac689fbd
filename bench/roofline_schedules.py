"""The loss's schedules in the roofline (bench/roofline.py's docstring): ours (``chunked``,
``pipelined``, the loss alone), the modelled ones not built, and others' (Liger, Cut
Cross-Entropy, unfused torch), each a list of kernels at one shape."""

from __future__ import annotations

import math

from reflectioncoder.kernels.fused_loss_schedule import GPU_BUDGET, ChunkBudget

from bench.roofline_kernels import (
    PR1422_BACKWARD_EFF,
    PR1422_FORWARD_EFF,
    Card,
    GemmRates,
    Kernel,
    Schedule,
    _gemm,
    _overlapped,
    _stream,
)


def chunked(
    n, d, v, e, budget=GPU_BUDGET, dh_slots=True, grads=True, rates: GemmRates = GemmRates()
) -> Schedule:
    """Ours: chunks of R slots; per chunk GEMM -> logits, row kernel (3 passes), 2 GEMMs.
    ``grads=False``: the forward-only path (GEMM -> logits, one read by the row kernel)."""
    r = budget.rows(v, e)
    ks = []
    for a in range(0, n, r):
        c = min(r, n - a)
        z = _gemm("z = h W^T", c, v, d, e, tc_eff=rates.logits)
        ks += [_stream("gather h", 2 * c * d * e), z]
        if not grads:
            ks.append(_stream("row kernel (loss only)", c * v * e))
            continue
        ks += [
            _stream("row kernel", 3 * c * v * e),
            _gemm("dh = dz W", c, d, v, e, tc_eff=rates.dh),
            _gemm("dW += dz^T h", v, d, c, e, read_c=True, tc_eff=rates.dw),
        ]
    if grads:
        ks += [_stream("zero dW", v * d * e), _stream("dW *= g", 2 * v * d * e)]
    if grads and dh_slots:
        ks.append(_stream("sum slots -> dh", 2 * n * d * e + 16 * n))
    # The tensors alive at the peak (the forward's chunk loop; backward needs less).
    r = min(r, n)
    workspace = {
        "logits (rows, V)": r * v * e,
        "gathered h (rows, D)": r * d * e,
        "plan: rows, targets, CE weight, CE out (S,); KL out (P,)": n * (8 + 8 + 4 + 4)
        + n // 2 * 4,
    }
    if grads and dh_slots:
        workspace["per-slot dh (S, D)"] = n * d * e
    return Schedule(ks, workspace)


EPILOGUE_TILE_V = 256  # vocabulary columns per GEMM output tile: one (max, sum, target) each


def pipelined(
    n, d, v, e, budget: ChunkBudget = GPU_BUDGET, epilogue=False, rates: GemmRates = GemmRates()
) -> Schedule:
    """The chunks of ``chunked`` (same buffers, same d W roundings), each run as two halves
    whose row passes sit on a side stream: half a's beside half b's logits GEMM, half b's beside
    half a's d h GEMM; then one d W GEMM over the whole chunk (the first writes d W instead of
    adding to a zeroed one). ``epilogue`` (modelled, not built): the logits GEMM also writes each
    row's (max, sum exp, target logit) per vocabulary tile, so the row pass reads the logits
    once and writes d z (2 passes instead of 3). ``rates``: the GEMMs' tensor-core efficiency."""
    r = budget.rows(v, e)
    stats = 12 * math.ceil(v / EPILOGUE_TILE_V) if epilogue else 0  # bytes per row
    passes = 2 if epilogue else 3

    def logits(c):
        k = _gemm("z = h W^T" + (" + row stats" if epilogue else ""), c, v, d, e)
        k.tc_eff = rates.logits
        k.hbm += c * stats
        return k

    def row_pass(c):
        return _stream("row pass", passes * c * v * e + c * stats)

    def dh(c):
        return _gemm("dh = dz W", c, d, v, e, tc_eff=rates.dh)

    ks = [_stream("gather h", 2 * n * d * e)]
    for i, a in enumerate(range(0, n, r)):
        c = min(r, n - a)
        ca, cb = c - c // 2, c // 2
        ks += [
            logits(ca),
            _overlapped("z(b) || row pass(a)", logits(cb), row_pass(ca)),
            _overlapped("dh(a) || row pass(b)", dh(ca), row_pass(cb)),
            dh(cb),
            _gemm("dW (+)= dz^T h", v, d, c, e, read_c=i > 0, tc_eff=rates.dw),
        ]
    ks += [_stream("dW *= g", 2 * v * d * e), _stream("sum slots -> dh", 2 * n * d * e + 16 * n)]
    workspace = dict(chunked(n, d, v, e, budget).workspace)
    if epilogue:
        workspace["row stats per vocabulary tile"] = min(r, n) * stats
    return Schedule(ks, workspace)


def fused_persistent(n, d, v, e, budget: ChunkBudget = GPU_BUDGET) -> Schedule:
    """Modelled, not built (it needs persistent WGMMA/TMA kernels: CUTLASS or CuTe DSL, not
    cuBLAS, and a GPU to develop on): per chunk one kernel writes the logits and their row
    statistics (2 R D V FLOPs at PR #1422's fused-forward rate), a small kernel finishes lse,
    CE and KL, and one backward kernel forms d z as it loads the logits and does d h and d W
    (4 R D V FLOPs at PR #1422's fused-backward rate). Both rates are borrowed from kernels
    that do not write logits (forward) or recompute them (backward): an optimistic bound."""
    r = budget.rows(v, e)
    ks = [_stream("gather h", 2 * n * d * e)]
    for i, a in enumerate(range(0, n, r)):
        c = min(r, n - a)
        fwd = _gemm("z = h W^T + row stats (persistent)", c, v, d, e, tc_eff=PR1422_FORWARD_EFF)
        fwd.hbm += c * 12 * math.ceil(v / EPILOGUE_TILE_V)
        bytes_ = (c * v + 2 * v * d + 2 * c * d) * e + (v * d * e if i > 0 else 0)
        bwd = Kernel(
            "dz on load; dh = dz W, dW (+)= dz^T h (persistent)",
            *(4.0 * c * d * v, bytes_, bytes_),
            tc_eff=PR1422_BACKWARD_EFF,
        )
        ks += [fwd, _stream("lse, CE, KL from the statistics", 12 * c * v // EPILOGUE_TILE_V), bwd]
    ks += [_stream("dW *= g", 2 * v * d * e), _stream("sum slots -> dh", 2 * n * d * e + 16 * n)]
    return Schedule(ks, dict(chunked(n, d, v, e, budget).workspace))


STATS_TILE_V = 128  # fused_loss_stats.GEMM_TILES.block_v: one statistics column per tile


def loss_alone(n, d, v, e, budget: ChunkBudget = GPU_BUDGET, rates=None, epilogue=False):
    """The forward alone (no gradient wanted), per chunk of R slots: ``gemm_rows`` (the
    launcher's default) gathers h, runs the logits GEMM into the buffer and reads it once in
    the row kernel; ``epilogue`` (kernels/fused_loss_stats.py) runs one Triton GEMM whose
    epilogue writes 7 / 2 fp32 statistics per slot and vocabulary tile of STATS_TILE_V
    (logits never stored), then folds them (a few reads of the statistics). ``rates``: the
    logits GEMM's share of the peak."""
    r = budget.rows(v, e) // 2  # the plan's halves: one chunk of the plan each
    ks = []
    for a in range(0, n, r):
        c = min(r, n - a)
        ks.append(_stream("gather h", 2 * c * d * e))
        if epilogue:
            stats = 14 * c * math.ceil(v / STATS_TILE_V)  # 7 fp32 per pair and tile
            k = _gemm("z tiles -> row stats (Triton)", c, v, d, e, tc_eff=rates)
            k.hbm += stats - c * v * e  # the logits are never written
            ks += [k, _stream("fold the tile statistics", 4 * stats, count=8)]
        else:
            ks += [_gemm("z = h W^T", c, v, d, e, tc_eff=rates), _stream("row kernel", c * v * e)]
    plan = chunked(n, d, v, e, budget, grads=False).workspace
    plan = {k: b for k, b in plan.items() if k.startswith("plan")}
    if epilogue:  # fused_loss_stats.stats_loss: one h and one statistics buffer for all chunks
        c = min(r, n)
        nt = math.ceil(v / STATS_TILE_V)
        workspace = {"gathered h (rows, D)": c * d * e, "tile statistics": 14 * c * nt}
        workspace["fold temporaries (2 of 7 statistics planes)"] = 4 * c * nt
    else:  # run_chunks: two halves share the logits and h buffers
        c = min(2 * r, n)
        workspace = {"logits (rows, V)": c * v * e, "gathered h (rows, D)": c * d * e}
    return Schedule(ks, workspace | plan)


def gemm_ceiling(n, d, v, e) -> Schedule:
    """The bound of any schedule built on GEMMs at TC_EFF: 6 N D V FLOPs and nothing else."""
    return Schedule([Kernel("6 N D V on tensor cores", flops=6.0 * n * d * v, count=0)])


def atomic_tiles(n, d, v, e, card: Card, block_rows=128, block_v=128) -> Schedule:
    """The previous kernel: forward one program per 128-slot block streaming all of W; backward
    one program per (V tile, block) recomputing logits and atomically adding into fp32 dh, dW."""
    blocks = math.ceil(n / block_rows)
    vtiles = math.ceil(v / block_v)
    waves = math.ceil(blocks / card.sms)
    h_block = block_rows * d * e
    fwd = Kernel(
        "forward (online lse, KL)",
        flops=2.0 * n * d * v,
        hbm=waves * v * d * e + blocks * vtiles * h_block,  # h re-read for every V tile
        l2=blocks * v * d * e + blocks * vtiles * h_block,
    )
    atomics = 2.0 * blocks * vtiles * block_rows * d  # dh and dW tile of every program
    bwd = Kernel(
        "backward (recompute, atomic dh, dW)",
        flops=6.0 * n * d * v,
        # h twice per program; W about twice; every V-tile wave read-modify-writes all of dh
        hbm=2 * blocks * vtiles * h_block + 2 * v * d * e + vtiles * 2 * n * d * 4,
        l2=2 * blocks * vtiles * h_block + 2 * blocks * v * d * e + atomics * 4,
        atomics=atomics,
    )
    casts = _stream("zero + cast fp32 grads", (n * d + v * d) * (4 + 4 + e), count=4)
    workspace = {
        "fp32 dW (V, D)": v * d * 4,
        "fp32 dh (N, D)": n * d * 4,
        "slots, lse": n * (8 + 8 + 4 + 4 + 4),
    }
    return Schedule([fwd, bwd, casts], workspace)


def liger_flce(n, d, v, e, kl_pairs=0, dw_add_fp32=True) -> Schedule:
    """Liger's fused linear CE (Triton, chunk = next_pow2(N / ceil(V / D)) rows), plus, with
    kl_pairs, a separate KL on the full logits of the 2P pair rows (fp32 log-softmax).
    d W per chunk: Liger 0.8 ``grad_weight += mm(dz^T, h).float()`` (dw_add_fp32: a new (V, D)
    product, an fp32 copy of it, then the add); Liger 0.4 one in-place addmm."""
    chunk = 2 ** math.ceil(math.log2(max(1, math.ceil(n / math.ceil(v / d)))))
    ks = [_stream("zero dW", v * d * e)]
    for a in range(0, n, chunk):
        c = min(chunk, n - a)
        ks += [
            _gemm("logits", c, v, d, e),
            _stream("CE kernel", 3 * c * v * e),
            _gemm("grad input", c, d, v, e),
        ]
        if dw_add_fp32:
            ks += [
                _gemm("grad weight (mm)", v, d, c, e),
                _stream(".float() + add into grad_weight", v * d * (e + 4 + e + 4 + e), count=2),
            ]
        else:
            ks.append(_gemm("grad weight (addmm)", v, d, c, e, read_c=True))
    workspace = {"logits chunk (chunk, V)": chunk * v * e}
    if dw_add_fp32:
        workspace["grad weight product + fp32 copy (V, D)"] = v * d * (e + 4)
    if kl_pairs:
        r = 2 * kl_pairs
        # fwd: bf16 logits, fp32 upcast, log_softmax x2, softmax, kl_div, sum; bwd: kl_div and
        # log_softmax backward, cast to bf16: about 70 bytes of HBM traffic per logit
        ks += [
            _gemm("KL: pair logits", r, v, d, e),
            _stream("KL: softmax / kl_div fwd + bwd", 70 * r * v, count=12),
            _gemm("KL: grad input", r, d, v, e),
            _gemm("KL: grad weight", v, d, r, e, read_c=True),
        ]
        workspace["KL: logits bf16 + 4 fp32 (2P, V)"] = r * v * (e + 16)
    return Schedule(ks, workspace)


def cutedsl_flce(n, d, v, e) -> Schedule:
    """Liger's CuTe DSL FLCE (Hopper): chunks of up to 2 GiB of logits, 3 cuBLAS GEMMs per
    chunk and a CE kernel (3 passes over the chunk's logits)."""
    big = ChunkBudget(logits_bytes=2 * 2**30, max_rows=1 << 20, row_multiple=1)
    return chunked(n, d, v, e, big, dh_slots=False)


def torch_unfused(n, d, v, e) -> Schedule:
    """logits = h W^T in bf16, F.cross_entropy(logits.float()), backward through both: the
    logits' HBM traffic (bf16 write, fp32 upcast, log-softmax fwd and bwd, bf16 cast) is about
    30 bytes per logit."""
    ks = [
        _gemm("logits", n, v, d, e),
        _stream("fp32 CE fwd + bwd", 30 * n * v, count=6),
        _gemm("grad input", n, d, v, e),
        _gemm("grad weight", v, d, n, e),
    ]
    return Schedule(ks, {"logits bf16 + fp32 copies": n * v * (e + 8)})


def cce(n, d, v, e, backward=True) -> Schedule:
    """Cut Cross-Entropy: forward one fused GEMM + online lse kernel (2 N D V); backward
    recomputes the logits and forms both gradients (6 N D V), counted with no gradient
    filtering (CCE skips blocks whose softmax is negligible, which the model cannot know)."""
    ks = [Kernel("lse forward (fused GEMM)", flops=2.0 * n * d * v, hbm=(n + v) * d * e)]
    if backward:
        ks.append(
            Kernel(
                "backward (recompute + dE + dC)",
                flops=6.0 * n * d * v,
                hbm=4 * (n + v) * d * e,
            )
        )
    return Schedule(ks, {})
