"""Activation checkpointing: what each decoder layer keeps for the backward.

Per layer (``LAYER_POLICIES``):
  none        keep every activation (no recompute);
  save_gemms  keep the outputs of its GEMMs and attention that a backward reads (``KeptOutputs``:
              not the MLP's down_proj output, which only feeds the residual add; a mixture of
              experts' grouped GEMMs too), rerun only the element-wise ops (norms, RoPE,
              SwiGLU) in the backward;
  mlp_rerun   keep what save_gemms keeps of the attention half (q/k/v, the attention's output
              and log-sum-exp, o_proj's output), nothing of the layer's ``mlp``: the
              backward reruns the element-wise ops and the MLP's gate / up GEMMs (not
              down_proj: early stop);
  full        keep the layer's input only, rerun the whole layer in the backward;
  offload     keep what save_gemms keeps, but in host memory (reflectioncoder/activation_offload.py:
              copied out on a side CUDA stream in the forward, back ahead of the layer's
              backward): on the device only the layer's input, and what is in flight.

``model.checkpointing_policy`` names a plan for all layers: ``full``, ``save_gemms``,
``mlp_rerun``, ``offload`` (every layer), ``alternate`` (full on every second layer, none on
the others), or ``auto``: the least recompute that fits the device, planned once at start
(``memory_plan.py``) and given to the layers by ``apply_plan``.
"""

from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from reflectioncoder.decoder_layout import layer_attention, mlp_modules, require_layers

# In the order of what a layer reruns in the backward (``memory_plan.rerun_cost``), least first.
LAYER_POLICIES = ("none", "save_gemms", "offload", "mlp_rerun", "full")
NAMED_POLICIES = ("full", "save_gemms", "mlp_rerun", "offload", "alternate", "auto")


def named_plan(policy: str, layers: int) -> tuple[str, ...]:
    """The per-layer plan of a named policy other than ``auto``."""
    if policy == "alternate":
        return tuple("full" if i % 2 == 0 else "none" for i in range(layers))
    if policy not in LAYER_POLICIES:
        raise ValueError(f"policy: expected one of {NAMED_POLICIES}, got {policy!r}")
    return (policy,) * layers


# ---------------------------------------------------------------------------------------------
# Applying a plan to a Hugging Face model
# ---------------------------------------------------------------------------------------------

# ``_grouped_mm``: a mixture of experts' routed experts (transformers' default "grouped_mm"
# experts implementation), whose GEMMs a save_gemms layer would otherwise run again.
_GEMM_OPS = ("mm", "addmm", "bmm", "_grouped_mm", "_scaled_dot_product_flash_attention_for_cpu",
             "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_flash_attention_forward")  # fmt: skip


# Ops of their own namespace: attention, ours (a compiled layer's, varlen_attention_op) and
# torch's varlen attention (model.attention torch_varlen, torch >= 2.9), one op each to a
# dispatch mode (what they call inside is not seen); transformers' grouped GEMM of experts where
# torch's cannot run. flash-attn's kernels: not yet.
_ATTENTION_OPS = (
    ("reflectioncoder", "varlen_attention"),
    ("torch_attn", "_varlen_attn"),
    ("transformers", "grouped_mm_fallback"),
)


@functools.cache
def _kept_ops() -> frozenset:
    """The ops whose outputs ``save_gemms`` and ``offload`` keep: GEMMs and attention (found
    once: every checkpointed layer's forward asks)."""
    from reflectioncoder.kernels import varlen_attention_op  # noqa: F401 (registers its op)

    try:  # registers torch.ops.torch_attn._varlen_attn (torch >= 2.9)
        import torch.nn.attention.varlen  # noqa: F401
    except ImportError:
        pass
    ops = [getattr(torch.ops.aten, name) for name in _GEMM_OPS if hasattr(torch.ops.aten, name)]
    for namespace, name in _ATTENTION_OPS:
        if hasattr(getattr(torch.ops, namespace), name):
            ops.append(getattr(getattr(torch.ops, namespace), name))
    return frozenset(op.default for op in ops)


def _compiling() -> bool:
    """Whether torch.compile (dynamo, or AOT autograd's tracing: a proxy mode) is tracing."""
    proxy = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.PROXY)
    return torch.compiler.is_compiling() or proxy is not None


class _MlpRegion:
    """How deep an eager forward is inside the MLP of an ``mlp_rerun`` layer, counted by the
    hooks ``_mark_mlp`` gives it; reset as each checkpointed layer's forward starts (the
    recompute's early stop leaves an MLP without its forward hook, and so does a forward that
    raised there); compiled, the hooks do nothing (``_traced_in_mlp``, by the MLP modules'
    ``names`` in the layer: ``mlp``, OPT's ``fc1`` and ``fc2``)."""

    depth = 0
    names: set[str] = {"mlp"}


def _enter_mlp(module: nn.Module, args: tuple) -> None:
    if not torch.compiler.is_compiling():
        _MlpRegion.depth += 1


def _leave_mlp(module: nn.Module, args: tuple, out: Any) -> None:
    if not torch.compiler.is_compiling():
        _MlpRegion.depth -= 1


def _mark_mlp(layer: nn.Module, attention: nn.Module | None, on: bool) -> None:
    """Give (``on``) or take back the hooks on ``layer``'s MLP (``decoder_layout.mlp_modules``)
    that count ``_MlpRegion``.
    Not ``always_call``: a compiled layer guards on that hook's id, one graph a layer."""
    for handle in getattr(layer, "rc_mlp_hooks", ()):
        handle.remove()
    parts = mlp_modules(layer, attention)  # [mlp], or OPT's [fc1, fc2]: enter at the first
    on = on and bool(parts)
    if on:
        _MlpRegion.names |= {n for n, m in layer.named_children() if any(m is p for p in parts)}
    layer.rc_mlp_hooks = (
        [parts[0].register_forward_pre_hook(_enter_mlp),
         parts[-1].register_forward_hook(_leave_mlp)]
        if on else []
    )  # fmt: skip


def _traced_in_mlp() -> bool:
    """Compiled: whether the node being traced runs inside the decoder layer's ``mlp`` module
    (its module path; none known: False, so its output is kept)."""
    import torch.fx.traceback as fx_traceback

    stack = (fx_traceback.get_current_meta() or {}).get("nn_module_stack", {})
    return any(_MlpRegion.names & set(str(path).split(".")) for path, *_ in stack.values())


def _kept_contexts(rerun_mlp: bool = False):
    """The checkpoint contexts of ``save_gemms`` and (``rerun_mlp``) ``mlp_rerun``: keep the
    GEMM and attention outputs a backward reads (``KeptOutputs``), but with ``rerun_mlp`` none
    of the MLP's (the ops run inside the layer's ``mlp``: eager, ``_MlpRegion``; compiled,
    ``_traced_in_mlp``); recompute the rest. Compiled, torch's selective
    checkpoint with those outputs MUST_SAVE (the partitioner saves only what its backward graph
    reads) and the rest PREFER_RECOMPUTE (which its partitioner always recomputes, GEMMs
    too)."""
    if not _compiling():
        return KeptOutputs(_kept_ops(), rerun_mlp).contexts()
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    keep = _kept_ops()

    def policy(ctx, op, *args, **kwargs):
        if op in keep and not (rerun_mlp and _traced_in_mlp()):
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def _save_gemms_context():
    """``save_gemms``' checkpoint contexts (``_kept_contexts``)."""
    return _kept_contexts()


def _mlp_rerun_context():
    """``mlp_rerun``'s checkpoint contexts (``_kept_contexts``)."""
    return _kept_contexts(rerun_mlp=True)


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _checkpoints(pack) -> bool:
    """Whether ``pack`` is torch's non-reentrant checkpoint's own pack hook."""
    name = getattr(pack, "__qualname__", "")
    return getattr(pack, "__module__", None) == "torch.utils.checkpoint" and name.startswith(
        "_checkpoint_hook."
    )


class _Reads:
    """Which kept outputs of one layer's forward a backward reads: those a tensor saved for
    the backward (seen by the checkpoint's pack hook) comes from, itself or through ops the
    recompute reruns. An output that only feeds a residual add (the MLP's down_proj: the
    layer's output, which the next layer's checkpoint keeps, is read by no backward here) is
    read by none. Kept outputs are keyed (op, index of the op's call among the layer's)."""

    def __init__(self, keep: frozenset) -> None:
        self.keep = keep
        self.calls: dict[Any, int] = defaultdict(int)
        self.sources = WeakIdKeyDictionary()  # tensor -> the kept outputs it is computed from
        self.read: set = set()
        self.seen = True  # whether the pack hook was seen (else every kept output counts read)

    def op(self, func, args, kwargs, out, held: bool = True) -> tuple | None:
        """The key of a kept op's call, else None (``held`` False: a keep op's call that is
        not kept, counted all the same); notes what ``out`` is computed from."""
        key = None
        if func in self.keep:
            key = (func, self.calls[func])
            self.calls[func] += 1
        if key is not None and held:
            sources = frozenset((key,))  # the recompute starts from it, not from its inputs
        else:
            sources = frozenset().union(
                *(self.sources.get(t, ()) for t in _tensors((args, kwargs)))
            )
        for t in _tensors(out):
            self.sources[t] = sources
        return key if held else None

    def saved(self, tensor: torch.Tensor) -> None:
        self.read |= self.sources.get(tensor, frozenset())

    def reads(self, key) -> bool:
        return not self.seen or key in self.read

    def hooks(self):
        """The enclosing checkpoint's pack hook, noting each tensor saved: entered inside
        checkpoint's own (``context_fn``'s forward context is). Any other hooks on top (a
        torch that entered the forward context first): keep everything, since wrapping
        another pack hook would save the layer's tensors past the checkpoint's."""
        top_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
        top = top_hooks(True) if top_hooks is not None else None  # private: torch >= 2.4 has it
        if top is None or not _checkpoints(top[0]):  # no way to see it: keep everything
            self.seen = False
            return contextlib.nullcontext()
        pack, unpack = top

        def seeing_pack(x):
            self.saved(x)
            return pack(x)

        return torch.autograd.graph.saved_tensors_hooks(seeing_pack, unpack)


class KeptOutputs:
    """The outputs a checkpointed layer's forward keeps for its recompute (``save_gemms``: on
    the device; ``activation_offload.LayerStore``: on the host): every call of a ``keep`` op
    while the forward runs, then (``forward_done``) only those a backward reads (``_Reads``).
    The recompute takes each from here; an op whose output was dropped would run again, but
    torch's checkpoint stops the recompute (early stop, its default) once every tensor the
    backward saves is back, which is before the last GEMM when only it was dropped (tested).
    ``rerun_mlp`` (``mlp_rerun``): the calls made inside the layer's MLP (``_MlpRegion``) are
    not held at all (they run again in the recompute)."""

    def __init__(self, keep: frozenset, rerun_mlp: bool = False) -> None:
        self.keep = keep
        self.reads = _Reads(keep)
        self.saved: dict[Any, Any] = {}
        self.rerun_mlp = rerun_mlp

    def holds(self) -> bool:
        """Whether the op now dispatched would be held if kept (``rerun_mlp``)."""
        return not (self.rerun_mlp and _MlpRegion.depth > 0)

    def hold(self, key, out) -> None:
        self.saved[key] = tree_map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, out)

    def forward_done(self) -> frozenset:
        """Drop the outputs no backward reads; returns their keys."""
        dropped = frozenset(k for k in self.saved if not self.reads.reads(k))
        for key in dropped:
            del self.saved[key]
        self.reads.sources.clear()
        return dropped

    def restore(self, key):
        """The kept output of ``key``, or None when it was dropped."""
        return self.saved.get(key)

    def contexts(self) -> tuple[TorchDispatchMode, TorchDispatchMode]:
        """``checkpoint``'s ``context_fn``: the forward's and the recompute's modes."""
        return _Keep(self), _Replay(self)


class _Keep(TorchDispatchMode):
    def __init__(self, store: KeptOutputs) -> None:
        super().__init__()
        self.store = store
        self.hooks = contextlib.nullcontext()

    def __enter__(self):
        _MlpRegion.depth = 0  # a layer's forward starts outside its MLP
        self.hooks = self.store.reads.hooks()
        self.hooks.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self.hooks.__exit__(*exc)
            self.store.forward_done()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        key = self.store.reads.op(func, args, kwargs, out, self.store.holds())
        if key is not None:
            self.store.hold(key, out)
        return out


class _Replay(TorchDispatchMode):
    def __init__(self, store: KeptOutputs) -> None:
        super().__init__()
        self.store = store
        self.calls: dict[Any, int] = defaultdict(int)

    def __enter__(self):
        self.calls.clear()  # each recompute (a second backward too) takes them from the start
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func not in self.store.keep:
            return func(*args, **(kwargs or {}))
        key = (func, self.calls[func])
        self.calls[func] += 1
        out = self.store.restore(key)
        return func(*args, **(kwargs or {})) if out is None else out


def _enable(model: nn.Module) -> None:
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _disable(model: nn.Module) -> None:
    if hasattr(model, "activation_checkpointing_enable"):
        if model.is_activation_checkpointing:
            model.activation_checkpointing_disable()
    elif model.is_gradient_checkpointing:
        model.gradient_checkpointing_disable()


# Liger's RoPE (prepare_model on CUDA) rotates q and k in place, in the q_proj / k_proj GEMM
# outputs themselves when the projections are not fused: an output kept by ``save_gemms`` would
# be rotated again in the recompute, one kept by ``offload`` rotated while its copy to the host
# is in flight. Those layers hand RoPE a copy (one q- and one k-sized copy a forward).
_ROTATED_PROJECTIONS = ("q_proj", "k_proj")


def _copy_output(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return out.clone()


def _copy_rotated_outputs(layer: nn.Module, attn: nn.Module | None, on: bool) -> None:
    """Give (``on``) or take back the copy of ``layer``'s q / k projections' outputs."""
    for handle in getattr(layer, "rc_rope_copies", ()):
        handle.remove()
    projections = [getattr(attn, name, None) for name in _ROTATED_PROJECTIONS]
    layer.rc_rope_copies = [
        p.register_forward_hook(_copy_output) for p in projections if on and p is not None
    ]


def apply_plan(model: nn.Module, plan: Sequence[str]) -> None:
    """Give each decoder layer its policy (``LAYER_POLICIES``; ``plan`` has one per layer).
    transformers >= 5.2x names it activation checkpointing (gradient_checkpointing_*
    deprecated); 5.0-5.1x only have the gradient_checkpointing_* names."""
    layers = require_layers(model)
    if len(plan) != len(layers):
        raise ValueError(f"plan: {len(plan)} policies for {len(layers)} layers")
    bad = [p for p in plan if p not in LAYER_POLICIES]
    if bad:
        raise ValueError(f"plan: expected each of {LAYER_POLICIES}, got {bad[0]!r}")
    from reflectioncoder.activation_offload import attach

    offloaded = [i for i, p in enumerate(plan) if p == "offload"]
    for layer, policy in zip(layers, plan, strict=True):
        attn = layer_attention(model, layer)
        _copy_rotated_outputs(layer, attn, policy in ("save_gemms", "mlp_rerun", "offload"))
        _mark_mlp(layer, attn, policy == "mlp_rerun")
    if all(p == "none" for p in plan):
        _disable(model)
        attach(model, offloaded, _kept_ops())
        model.rc_checkpointing_plan = tuple(plan)
        return
    _enable(model)  # the model's own switches (and the inputs' requires_grad hook)
    from torch.utils.checkpoint import checkpoint

    selective = {
        policy: functools.partial(checkpoint, use_reentrant=False, context_fn=contexts)
        for policy, contexts in (("save_gemms", _save_gemms_context),
                                 ("mlp_rerun", _mlp_rerun_context))
    }  # fmt: skip
    for layer, policy in zip(layers, plan, strict=True):
        layer.gradient_checkpointing = policy != "none"
        if policy in selective:
            layer._gradient_checkpointing_func = selective[policy]
    attach(model, offloaded, _kept_ops())  # the offloaded layers' own checkpoint function
    model.rc_checkpointing_plan = tuple(plan)


def set_checkpointing(model: nn.Module, on: bool, policy: str = "full") -> None:
    """Recompute layers in backward (``use_reentrant=False``) as the named ``policy`` says
    (``NAMED_POLICIES`` but ``auto``, which the trainer plans and then calls ``apply_plan``),
    or not."""
    if policy not in NAMED_POLICIES or policy == "auto":
        named = " | ".join(p for p in NAMED_POLICIES if p != "auto")
        raise ValueError(f"policy: expected {named}, got {policy!r}")
    layers = len(require_layers(model))
    apply_plan(model, named_plan(policy, layers) if on else ("none",) * layers)


def checkpointing_on(model: nn.Module) -> bool:
    """Whether any layer is recomputed (either transformers naming)."""
    if hasattr(model, "activation_checkpointing_enable"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing
