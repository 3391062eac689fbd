"""Stand-ins for the attention kernels that are CUDA-only and not installed here (torch's varlen
kernel, flash-attn 2.7+, FA4 4.0.0b40), for tests/test_varlen_attention_op.py: each has the real
internals' exact call signatures and computes in float64 from the reference, counting its calls.
Their backward computes P from the lse it is handed, not from a second forward: a wrong or
missing lse or out gives wrong gradients. Imported once (it registers torch.library ops)."""

from __future__ import annotations

import sys
import types

import torch
from reference.varlen_attention import (
    varlen_attention_grad_from_lse,
    varlen_attention_reference,
    varlen_attention_reference_lse,
)

KERNEL_BACKENDS = ("torch_varlen", "flash_attn", "flash_attn_4")


class StandIn:
    """A backend's forward and backward in float64 from the reference; counts its calls."""

    def __init__(self) -> None:
        self.forwards: list[dict] = []
        self.backwards: list[dict] = []

    def forward(self, q, k, v, cu, max_seqlen, causal, scale):
        self.forwards.append(
            dict(cu=cu, max_seqlen=max_seqlen, causal=causal, scale=scale, kv_heads=k.shape[1])
        )
        seqlens = torch.diff(cu).tolist()
        out = varlen_attention_reference(q, k, v, seqlens, causal, scale).to(q.dtype)
        lse = varlen_attention_reference_lse(q, k, seqlens, causal, scale).float()
        return out, lse

    def backward(self, grad, q, k, v, out, lse, cu, max_seqlen, causal, scale):
        self.backwards.append(dict(cu=cu, max_seqlen=max_seqlen, causal=causal, scale=scale))
        grads = varlen_attention_grad_from_lse(
            grad, q, k, v, out, lse, torch.diff(cu).tolist(), causal, scale
        )
        return tuple(g.to(x.dtype) for g, x in zip(grads, (q, k, v), strict=True))


def _install_torch_varlen(stand_in: StandIn, monkeypatch) -> torch.library.Library:
    """torch's CUDA flash kernels (aten::_flash_attention_forward / _backward) on the CPU: the
    real ``torch_attn::_varlen_attn`` / ``_varlen_attn_backward`` ops run around them."""

    def forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, debug, *, scale=None,
                window_size_left=None, window_size_right=None, **rest):  # fmt: skip
        assert torch.equal(cu_q, cu_k) and max_q == max_k and dropout_p == 0.0
        assert (window_size_left, window_size_right) == ((-1, 0) if is_causal else (-1, -1))
        out, lse = stand_in.forward(q, k, v, cu_q, max_q, is_causal, scale)
        rng_state = torch.zeros(2, dtype=torch.uint64)
        return out, lse, rng_state, q.new_empty(0), q.new_empty(0)

    def backward(grad, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, dropout_p, is_causal,
                 rng_state, unused, *, scale=None, window_size_left=None,
                 window_size_right=None):  # fmt: skip
        assert torch.equal(cu_q, cu_k) and max_q == max_k and dropout_p == 0.0
        assert rng_state.dtype == torch.uint64 and grad.is_contiguous()  # the op makes it so
        assert (window_size_left, window_size_right) == ((-1, 0) if is_causal else (-1, -1))
        return stand_in.backward(grad, q, k, v, out, lse, cu_q, max_q, is_causal, scale)

    lib = torch.library.Library("aten", "IMPL")
    lib.impl("_flash_attention_forward", forward, "CPU")
    lib.impl("_flash_attention_backward", backward, "CPU")
    return lib


# flash-attn 2.7+ (torch >= 2.4) registers its internals as torch.library custom ops
# (flash_attn::_flash_attn_varlen_forward / _backward); these have the same schemas (names,
# types, defaults, dq / dk / dv mutated), so a misplaced or mistyped argument fails as it would
# there. They run the current test's StandIn.
_FA2_STAND_IN: list[StandIn] = []


@torch.library.custom_op("rc_test_flash_attn::_flash_attn_varlen_forward", mutates_args=())
def _fa2_varlen_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int = -1,
    window_size_right: int = -1,
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    return_softmax: bool = False,
    block_table: torch.Tensor | None = None,
    leftpad_k: torch.Tensor | None = None,
    seqused_k: torch.Tensor | None = None,
    zero_tensors: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    assert torch.equal(cu_seqlens_q, cu_seqlens_k) and max_seqlen_q == max_seqlen_k
    assert dropout_p == 0.0 and softcap == 0.0 and alibi_slopes is None and not return_softmax
    assert (window_size_left, window_size_right) == (-1, -1)  # causal sets the right side
    out, lse = _FA2_STAND_IN[-1].forward(q, k, v, cu_seqlens_q, max_seqlen_q, causal,
                                         softmax_scale)  # fmt: skip
    return out, lse, q.new_empty(0), torch.zeros(2, dtype=torch.int64)


@torch.library.custom_op(
    "rc_test_flash_attn::_flash_attn_varlen_backward", mutates_args=("dq", "dk", "dv")
)
def _fa2_varlen_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    softmax_lse: torch.Tensor,
    dq: torch.Tensor | None,
    dk: torch.Tensor | None,
    dv: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: torch.Tensor | None,
    deterministic: bool,
    rng_state: torch.Tensor | None = None,
    zero_tensors: bool = False,
) -> torch.Tensor:
    assert torch.equal(cu_seqlens_q, cu_seqlens_k) and max_seqlen_q == max_seqlen_k
    assert dropout_p == 0.0 and softcap == 0.0 and alibi_slopes is None and not deterministic
    assert (window_size_left, window_size_right) == (-1, -1) and rng_state.dtype == torch.int64
    grads = _FA2_STAND_IN[-1].backward(dout, q, k, v, out, softmax_lse, cu_seqlens_q,
                                       max_seqlen_q, causal, softmax_scale)  # fmt: skip
    for target, g in zip((dq, dk, dv), grads, strict=True):
        target.copy_(g)  # flash-attn fills the dq, dk, dv it is given (GQA: dk, dv summed)
    return softmax_lse.new_empty(0)


def _install_flash_attn(stand_in: StandIn, monkeypatch) -> None:
    """flash-attn 2.7+'s ``flash_attn_interface`` internals: the custom op objects and their
    ``torch.ops`` packets (``_wrapped_*``), as it binds them under torch >= 2.4."""
    monkeypatch.setattr(sys.modules[__name__], "_FA2_STAND_IN", [stand_in])
    interface = types.ModuleType("flash_attn.flash_attn_interface")
    interface._flash_attn_varlen_forward = _fa2_varlen_forward
    interface._flash_attn_varlen_backward = _fa2_varlen_backward
    ops = torch.ops.rc_test_flash_attn
    interface._wrapped_flash_attn_varlen_forward = ops._flash_attn_varlen_forward
    interface._wrapped_flash_attn_varlen_backward = ops._flash_attn_varlen_backward
    parent = types.ModuleType("flash_attn")
    parent.flash_attn_interface = interface
    monkeypatch.setitem(sys.modules, "flash_attn", parent)
    monkeypatch.setitem(sys.modules, "flash_attn.flash_attn_interface", interface)


def _install_flash_attn_4(stand_in: StandIn, monkeypatch) -> None:
    """flash-attn-4 4.0.0b40's ``flash_attn.cute.interface`` internals."""

    def _flash_attn_fwd(q, k, v, qv=None, cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None,
                        seqused_k=None, max_seqlen_q=None, max_seqlen_k=None, min_seqlen_k=None,
                        page_table=None, softmax_scale=None, causal=False, softcap=None,
                        window_size_left=None, window_size_right=None, learnable_sink=None,
                        return_lse=False, **rest):  # fmt: skip
        assert cu_seqlens_k is cu_seqlens_q and return_lse and rest == {}
        assert window_size_left is None and window_size_right is None  # causal: from the flag
        out, lse = stand_in.forward(q, k, v, cu_seqlens_q, max_seqlen_q, causal, softmax_scale)
        return out.contiguous(), lse, None, None, None  # FA4 allocates out contiguous

    def _flash_attn_bwd(q, k, v, out, dout, lse, softmax_scale=None, causal=False, softcap=0.0,
                        window_size_left=None, window_size_right=None, cu_seqlens_q=None,
                        cu_seqlens_k=None, seqused_q=None, seqused_k=None, max_seqlen_q=None,
                        max_seqlen_k=None, **rest):  # fmt: skip
        assert cu_seqlens_k is cu_seqlens_q and rest == {}  # deterministic: False, as eager
        assert window_size_left is None and window_size_right is None
        return stand_in.backward(dout, q, k, v, out, lse, cu_seqlens_q, max_seqlen_q, causal,
                                 softmax_scale)  # fmt: skip

    interface = types.ModuleType("flash_attn.cute.interface")
    interface._flash_attn_fwd = _flash_attn_fwd
    interface._flash_attn_bwd = _flash_attn_bwd
    cute = types.ModuleType("flash_attn.cute")
    cute.interface = interface
    parent = types.ModuleType("flash_attn")  # FA4's wheel: a namespace package
    parent.cute = cute
    for name, module in (("flash_attn", parent), ("flash_attn.cute", cute),
                         ("flash_attn.cute.interface", interface)):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)


def install_stand_in(backend: str, stand_in: StandIn, monkeypatch) -> torch.library.Library | None:
    """``backend``'s internals replaced by ``stand_in`` (returns torch's library of CPU kernels,
    to destroy after the test, for ``torch_varlen``)."""
    if backend == "torch_varlen":
        return _install_torch_varlen(stand_in, monkeypatch)
    if backend == "flash_attn":
        _install_flash_attn(stand_in, monkeypatch)
    else:
        _install_flash_attn_4(stand_in, monkeypatch)
    return None
