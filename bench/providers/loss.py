"""The reflection loss (CE + KL from hidden states), per provider: every fused linear CE a user
could pick instead of ours, each called as its documentation shows.

- ``ours:<backend>``: ``fused_linear_reflection_loss`` (``torch``: chunked PyTorch; ``triton``);
- ``reference``: the recipe (full logits, ``F.cross_entropy`` mean, ``kl_div`` batchmean);
- ``torch_lce``: ``F.linear_cross_entropy(options=None)`` (torch's reference path);
- ``torch_lce:chunked``: ``F.linear_cross_entropy(options=LinearCrossEntropyOptions())``;
- ``liger:triton``: ``LigerFusedLinearCrossEntropyLoss`` (Triton);
- ``liger:sm90``: ``LigerFusedLinearCrossEntropySM90Function`` (CuTe DSL, Hopper only);
- ``liger:jsd``: ``LigerFusedLinearJSDLoss(beta=0)``, forward KL + hard-label CE, chunked;
- ``quack``: ``quack.linear_cross_entropy.chunked_linear_cross_entropy`` (CuTe DSL);
- ``cce``: ``cut_cross_entropy.linear_cross_entropy(impl="cce")`` (Triton).

A provider that gives CE only is timed as its CE plus our fused loss with the CE weights zeroed
(the KL of the pairs alone, the same cost added to each of them); ``kl`` in the row says so.
Every provider but ``liger:jsd`` computes the recipe's number (mean CE over every labelled row +
batchmean KL over the pairs). ``liger:jsd`` computes its own: CE of the STUDENT rows only, and
the KL only of pairs whose student has a label, both over the labelled student rows (no teacher
CE): its value is checked against float64 of that quantity (``quantity`` in the row).

Batch (``setup_loss``): N loss rows, D, V; rows [0, N/4) teachers of rows [N/2, 3N/4), P = N/4
pairs, 10% of targets ignored. Modes: ``fwd`` (the forward of a training step: inputs require
grad), ``full`` (forward + backward) and ``eval`` (the forward under ``torch.no_grad()``, as a
validation pass calls it). Useful FLOPs: 2 N D V forward, 6 N D V forward + backward.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.providers.common import REPO, synchronize

sys.path.insert(0, str(REPO / "tests"))  # reference.loss: the recipe, one place for tests too
from reference.loss import recipe_loss  # noqa: E402
from reflectioncoder.kernels import fused_linear_reflection_loss  # noqa: E402

MODES = ("fwd", "full", "eval")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Relative error of a provider's loss against float64 that the benchmark accepts, per dtype.
VALUE_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}
KL_OURS = "ours (fused_linear_reflection_loss, CE weights 0: the pairs' KL alone)"
RECIPE = "recipe: mean CE over labelled rows + batchmean KL over pairs"
JSD_QUANTITY = "student rows' CE + KL of pairs with a labelled student, both / labelled students"


@dataclass(frozen=True)
class Provider:
    name: str
    package: str  # the distribution whose version the row records
    path: str  # the function or class called
    settings: dict = field(default_factory=dict)
    kl: str = KL_OURS
    quantity: str = RECIPE
    cuda_only: str = ""  # why it needs CUDA ("" = runs on the CPU, natively or interpreted)
    interpreted: bool = False  # Triton: runs on the CPU only in the interpreter (toy sizes)
    module: str = ""  # the import that must succeed
    modes: tuple[str, ...] = MODES  # the modes where it differs from the providers before it


def _providers() -> dict[str, Provider]:
    from reflectioncoder.kernels import fused_loss

    ours = [
        Provider(
            f"ours:{b}",
            "reflectioncoder",
            f"reflectioncoder.kernels.fused_linear_reflection_loss(backend={b!r})",
            {"chunk": "GPU 512 MiB of logits / CPU 64 MiB"},
            kl="in the call",
            interpreted=b == "triton",
        )
        for b in fused_loss.BACKENDS
        if b != "auto"
    ] + [
        Provider(
            "ours:triton:stats_epilogue",
            "reflectioncoder",
            "reflectioncoder.kernels.fused_linear_reflection_loss(backend='triton', "
            "loss_only_schedule='stats_epilogue')",
            {"chunk": "GPU 512 MiB-of-logits halves", "logits": "never stored"},
            kl="in the call",
            interpreted=True,  # fp32 on the CPU: the interpreter's tl.dot is wrong for bf16
            modes=("eval",),  # the schedule of the loss alone; other modes are ours:triton's
        )
    ]
    return {
        p.name: p
        for p in ours
        + [
            Provider(
                "reference",
                "torch",
                "tests/reference/loss.py recipe_loss (F.cross_entropy + F.kl_div)",
                {"logits": "full (N, V), fp32 softmax"},
                kl="in the call",
            ),
            Provider(
                "torch_lce",
                "torch",
                "torch.nn.functional.linear_cross_entropy(options=None)",
                {"options": None, "reduction": "mean"},
            ),
            Provider(
                "torch_lce:chunked",
                "torch",
                "torch.nn.functional.linear_cross_entropy(options=LinearCrossEntropyOptions())",
                {"options": "LinearCrossEntropyOptions() (chunking_method/acc_policy auto)"},
            ),
            Provider(
                "liger:triton",
                "liger-kernel",
                "liger_kernel.transformers.LigerFusedLinearCrossEntropyLoss",
                {
                    "reduction": "mean",
                    "accum_dtype": "None (d W accumulated in the weight's dtype)",
                    "chunk": "next_pow2(ceil(N / ceil(V / D))) rows (512 at N=16K, D=4K, V=128K)",
                },
                interpreted=True,
                module="liger_kernel",
            ),
            Provider(
                "liger:sm90",
                "liger-kernel",
                "liger_kernel.ops.cutedsl.ops.fused_linear_cross_entropy_sm90."
                "LigerFusedLinearCrossEntropySM90Function",
                {"reduction": "mean", "needs": "N % 128 == 0, V % 256 == 0, bf16"},
                cuda_only="a Hopper GPU (CuTe DSL, compute capability 9.0) and bf16",
                module="liger_kernel.ops.cutedsl.ops.fused_linear_cross_entropy_sm90",
            ),
            Provider(
                "liger:jsd",
                "liger-kernel",
                "liger_kernel.chunked_loss.LigerFusedLinearJSDLoss",
                {
                    "beta": 0.0,
                    "weight_hard_loss": 1.0,
                    "weight_soft_loss": 1.0,
                    "chunk_size": 1024,
                    # torch.compile's first call takes tens of seconds: over the GPU suite's limit
                    "compiled": False,
                    "rows": "student rows = pairs' students, teacher rows gathered to match",
                },
                kl="in the call (JSD with beta = 0 is forward KL(teacher || student))",
                quantity=JSD_QUANTITY,
                module="liger_kernel.chunked_loss",
            ),
            Provider(
                "quack",
                "quack-kernels",
                "quack.linear_cross_entropy.chunked_linear_cross_entropy",
                {"chunk_size": 4096, "reduction": "mean"},
                cuda_only="an SM90 / SM100 GPU (CuTe DSL)",
                module="quack.linear_cross_entropy",
            ),
            Provider(
                "cce",
                "cut-cross-entropy",
                'cut_cross_entropy.linear_cross_entropy(impl="cce")',
                {"impl": "cce", "filter_eps": "high (default)", "reduction": "mean"},
                cuda_only="CUDA (its Triton kernels fail in Triton's CPU interpreter)",
                module="cut_cross_entropy",
            ),
        ]
    }


PROVIDERS = _providers()


def providers() -> list[str]:
    """Every provider name, ours first."""
    return list(PROVIDERS)


def describe(provider: str) -> dict:
    """The row's record of a provider: version, code path, settings, its KL, its quantity."""
    p = PROVIDERS[provider]
    try:
        version = importlib.metadata.version(p.package)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {
        "version": version,
        "path": p.path,
        "settings": dict(p.settings),
        "kl": p.kl,
        "quantity": p.quantity,
    }


def setup_loss(n: int, d: int, v: int, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """Inputs of one point, made in place (no freed temporaries to skew a CPU RSS peak)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.empty(n, d, dtype=dtype, device=device).normal_(generator=gen)
    weight = torch.empty(v, d, dtype=dtype, device=device).normal_(0, d**-0.5, generator=gen)
    targets = torch.randint(0, v, (n,), generator=gen, device=device)
    targets[torch.rand(n, generator=gen, device=device) < 0.1] = -100
    p = n // 4
    teacher = torch.arange(p, device=device)
    kl_pairs = torch.stack([teacher, teacher + n // 2], 1)
    n_ce = (targets != -100).sum()  # on the device: the weights carry the normalisation
    ce_weight = (targets != -100).float() / n_ce.clamp(min=1)
    kl_weight = torch.full((p,), 1.0 / max(p, 1), device=device)
    hidden.requires_grad_()
    weight.requires_grad_()
    return dict(
        hidden=hidden,
        weight=weight,
        targets=targets,
        ce_weight=ce_weight,
        kl_pairs=kl_pairs,
        kl_weight=kl_weight,
        no_targets=torch.full_like(targets, -100),
        no_ce=torch.zeros_like(ce_weight),
    )


def unavailable(provider: str, device: str) -> str | None:
    """Why ``provider`` cannot run on ``device`` (None: it can)."""
    p = PROVIDERS[provider]
    on_cuda = torch.device(device).type == "cuda"
    if p.cuda_only and not on_cuda:
        return f"{provider} needs {p.cuda_only}"
    if p.package == "torch" and provider != "reference":
        if not hasattr(torch.nn, "LinearCrossEntropyOptions"):
            return f"{provider}: torch {torch.__version__} has no F.linear_cross_entropy options"
    if p.module:
        try:
            missing = importlib.util.find_spec(p.module) is None
        except ModuleNotFoundError:
            missing = True
        if missing:
            return f"{provider}: {p.package} is not installed ({p.module})"
    if p.interpreted and not on_cuda:
        from reflectioncoder.kernels.fused_loss import triton_interpreted

        if not triton_interpreted():
            return f"{provider} needs CUDA or TRITON_INTERPRET=1"
    if provider == "liger:sm90" and torch.cuda.get_device_capability(device) != (9, 0):
        return f"{provider} needs {p.cuda_only}"
    return None


def _ours_kl(x: dict) -> torch.Tensor:
    """The pairs' KL alone (CE weights 0), ours on the default backend: the separate KL added
    to a provider that computes CE only."""
    args = (x["hidden"], x["weight"], x["no_targets"], x["no_ce"], x["kl_pairs"], x["kl_weight"])
    return fused_linear_reflection_loss(*args)[0]


def _ce_plus_kl(ce_fn: Callable[[], torch.Tensor], x: dict) -> Callable[[], torch.Tensor]:
    return lambda: ce_fn() + _ours_kl(x)


def make_loss_fn(provider: str, x: dict) -> Callable[[], torch.Tensor]:
    """A callable returning the 0-dim loss of ``provider`` on inputs ``x``."""
    h, w, t = x["hidden"], x["weight"], x["targets"]
    if provider == "reference":
        return lambda: recipe_loss(h, w, t, x["kl_pairs"])
    if provider.startswith("ours:"):
        backend, *schedule = provider.split(":")[1:]
        args = (h, w, t, x["ce_weight"], x["kl_pairs"], x["kl_weight"])
        kw = {"loss_only_schedule": schedule[0]} if schedule else {}
        return lambda: fused_linear_reflection_loss(*args, backend=backend, **kw)[0]
    if provider == "liger:jsd":
        return _liger_jsd_fn(x)
    factories = {
        "torch_lce": _torch_lce_fn,
        "torch_lce:chunked": _torch_chunked_fn,
        "liger:triton": _liger_triton_fn,
        "liger:sm90": _liger_sm90_fn,
        "quack": _quack_fn,
        "cce": _cce_fn,
    }
    if provider not in factories:
        raise ValueError(f"provider: expected one of {providers()}, got {provider!r}")
    return _ce_plus_kl(factories[provider](x), x)


def _torch_lce_fn(x: dict) -> Callable[[], torch.Tensor]:
    h, w, t = x["hidden"], x["weight"], x["targets"]
    return lambda: F.linear_cross_entropy(h, w, t, ignore_index=-100)


def _torch_chunked_fn(x: dict) -> Callable[[], torch.Tensor]:
    options = torch.nn.LinearCrossEntropyOptions()
    h, w, t = x["hidden"], x["weight"], x["targets"]
    return lambda: F.linear_cross_entropy(h, w, t, ignore_index=-100, options=options)


def _liger_triton_fn(x: dict) -> Callable[[], torch.Tensor]:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    flce = LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="mean")
    return lambda: flce(x["weight"], x["hidden"], x["targets"])


def _liger_sm90_fn(x: dict) -> Callable[[], torch.Tensor]:
    def ce() -> torch.Tensor:
        from liger_kernel.ops.cutedsl.ops.fused_linear_cross_entropy_sm90 import (
            LigerFusedLinearCrossEntropySM90Function as SM90,
        )

        return SM90.apply(x["hidden"], x["weight"], x["targets"], -100, "mean")

    return ce


def _quack_fn(x: dict) -> Callable[[], torch.Tensor]:
    def ce() -> torch.Tensor:
        from quack.linear_cross_entropy import chunked_linear_cross_entropy

        return chunked_linear_cross_entropy(
            x["hidden"], x["weight"], x["targets"], chunk_size=4096, ignore_index=-100
        )

    return ce


def _cce_fn(x: dict) -> Callable[[], torch.Tensor]:
    def ce() -> torch.Tensor:
        from cut_cross_entropy import linear_cross_entropy

        return linear_cross_entropy(x["hidden"], x["weight"], x["targets"], impl="cce")

    return ce


def _liger_jsd_fn(x: dict) -> Callable[[], torch.Tensor]:
    """Students and their teachers gathered to line up (row i of each is pair i)."""
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    loss = LigerFusedLinearJSDLoss(
        weight_hard_loss=1.0,
        weight_soft_loss=1.0,
        beta=0.0,
        ignore_index=-100,
        compiled=False,
        chunk_size=1024,
    )
    t_rows, s_rows = x["kl_pairs"][:, 0], x["kl_pairs"][:, 1]

    def jsd() -> torch.Tensor:
        h, w = x["hidden"], x["weight"]
        return loss(h[s_rows], w, h[t_rows], w, x["targets"][s_rows])

    return jsd


def quantity_weights(provider: str, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(ce_weight (N,), kl_weight (P,)) that make our weighted loss the provider's quantity."""
    if PROVIDERS[provider].quantity == RECIPE:
        return x["ce_weight"], x["kl_weight"]
    students = x["kl_pairs"][:, 1]
    labelled = (x["targets"][students] != -100).float()
    count = labelled.sum().clamp(min=1)
    ce_weight = torch.zeros_like(x["ce_weight"])
    ce_weight[students] = labelled / count
    return ce_weight, labelled / count


_FP64: dict[tuple, float] = {}


@torch.no_grad()
def fp64_value(x: dict, ce_weight: torch.Tensor, kl_weight: torch.Tensor) -> float:
    """sum_i c_i CE_i + sum_j k_j KL(p_t || p_s) in float64, rows in chunks of <= 128 MiB."""
    h, w = x["hidden"].detach().double(), x["weight"].detach().double()
    rows = max(1, 2**27 // (8 * w.shape[0]))
    lse = torch.cat([torch.logsumexp(h[a : a + rows] @ w.T, -1) for a in range(0, len(h), rows)])
    t = x["targets"]
    picked = (h * w[t.clamp(min=0)]).sum(-1)
    total = (ce_weight.double() * torch.where(t != -100, lse - picked, 0.0)).sum()
    pairs = x["kl_pairs"]
    for a in range(0, len(pairs), rows):
        tr, sr = pairs[a : a + rows, 0], pairs[a : a + rows, 1]
        lpt = h[tr] @ w.T - lse[tr, None]
        lps = h[sr] @ w.T - lse[sr, None]
        kl = (lpt.exp() * (lpt - lps)).sum(-1)
        total += (kl_weight[a : a + rows].double() * kl).sum()
    return float(total)


def value_error(provider: str, x: dict, loss: torch.Tensor, key: tuple) -> float:
    """Relative error of ``loss`` against float64 of the provider's quantity (cached per key)."""
    quantity = PROVIDERS[provider].quantity
    if (key, quantity) not in _FP64:
        _FP64[key, quantity] = fp64_value(x, *quantity_weights(provider, x))
    want = _FP64[key, quantity]
    return abs(float(loss.detach()) - want) / max(abs(want), 1e-12)


def make_step(provider: str, mode: str, x: dict, device: str) -> Callable[[], torch.Tensor]:
    """One timed call: the loss (``fwd``, ``eval`` under no_grad) or loss + backward (``full``),
    synchronised."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    fn = make_loss_fn(provider, x)

    def step() -> torch.Tensor:
        x["hidden"].grad = x["weight"].grad = None
        with torch.set_grad_enabled(mode != "eval"):
            loss = fn()
        if mode == "full":
            loss.backward()
        synchronize(device)
        return loss

    return step


def useful_flops(mode: str, n: int, d: int, v: int) -> int:
    return (6 if mode == "full" else 2) * n * d * v


def deterministic(step: Callable[[], torch.Tensor], x: dict) -> bool:
    """Two calls give bitwise the same loss (and gradients, in mode ``full``)."""

    def outputs() -> list[torch.Tensor]:
        loss = step().detach().clone()
        grads = [t.grad.clone() for t in (x["hidden"], x["weight"]) if t.grad is not None]
        return [loss, *grads]

    first, second = outputs(), outputs()
    return len(first) == len(second) and all(map(torch.equal, first, second))
