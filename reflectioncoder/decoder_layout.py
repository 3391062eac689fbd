"""Where a causal LM keeps its decoder layers, each layer's attention and its MLP, found as
transformers itself finds them, not by a list of names:

- the layers: from where ``model.get_decoder()`` points (Llama's ``model``, GPT-2's
  ``transformer``, OPT's ``model.decoder``, an image-text model's ``language_model``), the
  ``nn.ModuleList`` nearest to it whose entries are the class the model records hidden states
  of (``_can_record_outputs["hidden_states"]``) or transformers' ``GradientCheckpointingLayer``
  (Llama's ``layers``, GPT-2's / StarCoder-1's / CodeGen's / GPT-J's ``h``); the decoder stack
  is the module that holds them;
- a layer's attention: its child of the class the model records attentions of
  (``_can_record_outputs["attentions"]``, by the recorder's layer name where it has one: GPT-2's
  ``attn``, not its ``crossattention``), else ``self_attn``;
- a layer's MLP: its ``mlp`` child, else the GEMM modules (Linear, Conv1D) directly in the
  layer outside its attention (OPT's ``fc1``, ``fc2``).
"""

from __future__ import annotations

from typing import Any

from torch import nn


def decoder_stack(model: nn.Module) -> nn.Module:
    """The module that owns the decoder layers (Llama's ``model``, GPT-2's ``transformer``,
    OPT's ``model.decoder``, an image-text model's ``language_model``); where none are found,
    where transformers' ``get_decoder`` points."""
    found = _find_layers(model)
    return found[0] if found is not None else _lookup_start(model)


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The decoder layers of ``model`` in order, or None when none are found."""
    found = _find_layers(model)
    return found[1] if found is not None else None


def require_layers(model: nn.Module) -> nn.ModuleList:
    """``decoder_layers``, or a ValueError naming the model (``check_supported`` refuses such a
    model at the start; this is for callers past it)."""
    layers = decoder_layers(model)
    if layers is None:
        raise ValueError(
            f"model: {type(_lookup_start(model)).__name__} keeps no list of decoder layers that "
            "packed training can find (a ModuleList of transformers' decoder-layer class); this "
            "architecture is not supported"
        )
    return layers


def _lookup_start(model: nn.Module) -> nn.Module:
    """Where transformers' ``get_decoder`` points (the base model where it raises or points
    at no model: ModernBERT-decoder's ``decoder`` is its LM head)."""
    from transformers import PreTrainedModel

    get = getattr(model, "get_decoder", None)
    try:
        start = get() if callable(get) else None
    except Exception:  # noqa: BLE001 - a model whose own lookup raises: its base model
        start = None
    return start if isinstance(start, PreTrainedModel) else getattr(model, "base_model", model)


def _find_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList] | None:
    """(owner, layers): the ModuleList nearest (breadth first) to ``_lookup_start`` whose
    entries are all decoder layers (the class the model records hidden states of, or a
    GradientCheckpointingLayer), and the module that holds it; a ``layers`` list right there
    first (the Llama layout, as always)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    start = _lookup_start(model)
    recorded = _recorded_class(model, "hidden_states")
    kinds = tuple(k for k in (recorded, GradientCheckpointingLayer) if k is not None)
    direct = getattr(start, "layers", None)
    if isinstance(direct, nn.ModuleList) and len(direct):
        return start, direct
    queue = [(start, child) for child in start.children()]
    while queue:
        owner, module = queue.pop(0)
        if isinstance(module, nn.ModuleList) and len(module):
            if all(isinstance(m, kinds) for m in module):
                return owner, module
            continue  # a list of other modules (a vision tower's blocks): not below it
        queue.extend((module, child) for child in module.children())
    return None


def _recorded_class(model: nn.Module, key: str) -> type | None:
    """The module class ``model`` records ``key`` outputs of (``_can_record_outputs``)."""
    recorder = _recorders(model).get(key)
    target = getattr(recorder, "target_class", recorder)
    return target if isinstance(target, type) else None


def _recorders(model: nn.Module) -> dict:
    for module in (_lookup_start(model), model):
        table = getattr(module, "_can_record_outputs", None)
        if isinstance(table, dict) and table:
            return table
    return {}


def _recorded_name(model: nn.Module, key: str) -> str | None:
    recorder = _recorders(model).get(key)
    name = getattr(recorder, "layer_name", None)
    return name.strip(".") if isinstance(name, str) and name.strip(".") else None


def layer_attention(model: nn.Module, layer: nn.Module) -> nn.Module | None:
    """``layer``'s self-attention module (the one that calls transformers' attention
    interface), or None."""
    cls, name = _recorded_class(model, "attentions"), _recorded_name(model, "attentions")
    if name is not None:  # the recorder's path, within the layer (BERT's attention.self)
        for path in (name, name.rsplit(".", 1)[-1]):
            try:
                return layer.get_submodule(path)
            except AttributeError:
                continue
    if cls is not None:
        found = [m for n, m in layer.named_modules() if isinstance(m, cls) and "cross" not in n]
        if len(found) == 1:
            return found[0]
    attn = getattr(layer, "self_attn", None)
    return attn if isinstance(attn, nn.Module) else None


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Every decoder layer's attention (``layer_attention``); a ValueError where one has none."""
    found = []
    for i, layer in enumerate(require_layers(model)):
        attn = layer_attention(model, layer)
        if attn is None:
            raise ValueError(
                f"model: {type(model).__name__}: layer {i} ({type(layer).__name__}) has no "
                "self-attention module packed training can find; this architecture is not "
                "supported"
            )
        found.append(attn)
    return found


def is_gemm(module: nn.Module) -> bool:
    """A module whose forward is one GEMM of its 2-D weight: nn.Linear, transformers' Conv1D
    (GPT-2's: ``addmm`` with the weight stored (in, out))."""
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) or (
        type(module).__name__ == "Conv1D" and getattr(weight, "dim", lambda: 0)() == 2
    )


def gemm_width(module: nn.Module) -> int:
    """A GEMM module's output width (Linear's out_features, Conv1D's nf)."""
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    weight = module.weight
    return int(getattr(weight, "ds_shape", weight.shape)[-1])


def gemm_in_width(module: nn.Module) -> int:
    """A GEMM module's input width (Linear's in_features, Conv1D's weight rows)."""
    if isinstance(module, nn.Linear):
        return int(module.in_features)
    return int(getattr(module.weight, "ds_shape", module.weight.shape)[0])


def mlp_modules(layer: nn.Module, attention: Any = None) -> list[nn.Module]:
    """``layer``'s MLP as modules: ``[layer.mlp]``, else the GEMMs directly in the layer that
    are not its ``attention`` (OPT's fc1, fc2), in the order the layer registers them."""
    mlp = getattr(layer, "mlp", None)
    if isinstance(mlp, nn.Module):
        return [mlp]
    return [m for m in layer.children() if m is not attention and is_gemm(m)]


def mlp_gemms(layer: nn.Module, attention: Any = None) -> list[nn.Module]:
    """The GEMM modules of ``layer``'s MLP, in registration order (Llama's gate, up, down;
    GPT-2's c_fc, c_proj; OPT's fc1, fc2)."""
    out = []
    for part in mlp_modules(layer, attention):
        out += [part] if is_gemm(part) else [m for m in part.modules() if is_gemm(m)]
    return out
