"""Every causal LM transformers maps (``MODEL_FOR_CAUSAL_LM_MAPPING``), tiny, through what
``reflectioncoder train`` does with it: the start's ``check_supported``, the packed forward
against the model's own unpacked forward (float64, each segment alone, eager attention: logits
and CE loss), and ``train`` steps on the CPU through the CLI. One outcome per model type:

- ``trains-exact``: accepted, packed logits and loss equal the unpacked model's, steps run;
- ``refused``: ``check_supported`` (so the start, before the run folder is written) says why;
- ``FAILS``: accepted but wrong (packed != unpacked) or crashed (load, forward or a step);
- ``skipped``: not a decoder-only text model a tiny config can stand for (the reason given).

``python -m reflectioncoder.testing.archsweep DATA.jsonl [TYPE ...]`` prints the table;
``tests/test_archsweep_sweep.py`` (slow) runs it and checks that no type FAILS.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

# Sizes of the tiny config, set where the type's config has the field.
SIZES = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "max_position_embeddings": 512, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_layers": 2,
    "num_layers": 2, "num_heads": 4, "n_heads": 4, "emb_dim": 32, "d_model": 32,
    "n_positions": 512, "n_inner": 64,
    "ffn_hidden_size": 64, "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4,
    "num_experts_per_tok": 2, "moe_intermediate_size": 16, "n_shared_experts": 1,
    "shared_expert_intermediate_size": 16, "n_group": 1, "topk_group": 1, "kv_lora_rank": 16,
    "q_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8,
    "router_jitter_noise": 0.0, "output_router_logits": False, "use_cache": False,
    "expert_ffn_hidden_size": 16, "zero_expert_num": 2, "mamba_n_heads": 4, "moe_topk": 2,
}  # fmt: skip
# Where a type's default config is not what its checkpoints hold (LFM2's defaults have no
# convolution layer) or its own checks ask other sizes.
TYPE_SIZES = {
    "lfm2": {"layer_types": ["conv", "full_attention"]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
    "mamba2": {"head_dim": 16},
    "kolibri1_1": {"head_dim": 16, "index_num_heads": 2},
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    "zaya": {"num_experts_per_tok": 1},
    "gemma4_assistant": {"hidden_size_per_layer_input": 0},
    # rotary dims of at most the tiny head size (their defaults: 64)
    "codegen": {"rotary_dim": 4},
    "gptj": {"rotary_dim": 4},
    # a logit scale other than the default 1 (released Granite checkpoints: 8 or 16), so the
    # sweep checks that training applies it
    "granite": {"logits_scaling": 3.0},
    "granitemoe": {"logits_scaling": 3.0},
    "granitemoeshared": {"logits_scaling": 3.0},
    "hyperclovax": {"logits_scaling": 3.0},
    # soft caps that bind at the tiny models' scores and logits (released: 50 and 30 against
    # scores and logits tens of times larger), so the sweep checks that training applies them
    "gemma2": {"attn_logit_softcapping": 0.02, "final_logit_softcapping": 0.05},
    "vaultgemma": {"attn_logit_softcapping": 0.02, "final_logit_softcapping": 0.05},
    "nanochat": {"final_logit_softcapping": 0.05},
    "beam": {"final_logit_softcapping": 0.05},
}
MLA_SIZES = {"num_key_value_heads": 4, "qk_head_dim": 16}  # multi-head latent attention
# The train runs: as the defaults are, and with what hooks into the layers most (activation
# checkpointing that keeps the GEMMs' outputs, q/k/v and gate/up fused where the model has
# separate ones: model.fused_projections is refused where there is nothing to fuse).
TRAIN_VARIANTS = (
    {},
    {"model.gradient_checkpointing": True, "model.checkpointing_policy": "save_gemms",
     "model.fused_projections": True},
)  # fmt: skip
MAX_PARAMETERS = 50_000_000  # Fuyu's defaults left a 9.4G-parameter "tiny" model
REFERENCE_ATTN = "archsweep_float64_eager"
SEGMENTS = (16, 5, 11)  # a packed batch: a teacher-like, a short and a gapped one
# float64 both ways: a sample mixed into another, or a position wrong, is off by ~1e-2. Routers
# that score in float32 (Ergo, Laguna) round the 1e-16 differences to 1e-8; transformers' loss
# takes the logits in float32 (1e-7): it is there to catch a term the fused loss does not add.
TOLERANCE = {"logits": 1e-6, "loss": 1e-5}


@dataclass
class Outcome:
    model_type: str
    outcome: str  # trains-exact | refused | FAILS | skipped
    detail: str = ""


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def tiny_config(model_type: str, vocab_size: int, special: dict[str, int | None]):
    """The type's config at ``SIZES``, dropout off, one layer per distinct layer type (at
    least two), each sub-config (an image-text model's text and vision configs) too; or
    (None, why skipped)."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    default = cls()
    if getattr(default, "is_encoder_decoder", False):
        return None, "encoder-decoder"
    subs = sorted(getattr(cls, "sub_configs", {}) or {})
    kwargs = {}
    for name in subs:
        sub = type(getattr(default, name, None))  # the default's own (AutoConfig: any model)
        if not callable(getattr(sub, "to_dict", None)) or sub.__name__ == "PreTrainedConfig":
            return None, f"multimodal ({', '.join(subs)})"
        kwargs[name] = _tiny(sub, "", vocab_size, special)
    return _tiny(cls, model_type, vocab_size, {**special, **kwargs}), None


def _tiny(cls, model_type: str, vocab_size: int, extra: dict):
    default = cls()
    fields = {k for k in vars(default) if not isinstance(getattr(cls, k, None), property)}
    kwargs = {k: v for k, v in SIZES.items() if k in fields}
    if "kv_lora_rank" in fields:
        kwargs.update({k: v for k, v in MLA_SIZES.items() if k in fields})
    kwargs.update({k: vocab_size for k in fields if k.startswith("vocab_size")})
    kwargs.update({k: v for k, v in extra.items() if k in fields})
    for name in fields:
        if name.endswith(("dropout", "pdrop", "dropout_prob", "dropout_rate")):
            kwargs[name] = 0 if type(getattr(default, name)) is int else 0.0
    layer_types = vars(default).get("layer_types")
    if "layer_types" in fields and isinstance(layer_types, list | tuple) and layer_types:
        kinds = list(dict.fromkeys(layer_types))
        kinds += kinds[-1:] * (2 - len(kinds))
        kwargs["layer_types"] = kinds
    kwargs.update(TYPE_SIZES.get(model_type, {}))
    if "layer_types" in kwargs:
        kwargs["num_hidden_layers"] = len(kwargs["layer_types"])
    try:
        return cls(**kwargs)
    except Exception:  # noqa: BLE001 - layer_types tied to other fields (Zamba): all layers
        if not isinstance(layer_types, list | tuple):
            raise
        kwargs.pop("layer_types", None)
        return cls(**{**kwargs, "num_hidden_layers": len(layer_types)})


def build_folder(model_type: str, folder: Path, tokenizer) -> str | None:
    """Save a seeded tiny model of ``model_type`` with ``tokenizer`` in ``folder``; or why not."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config, why = tiny_config(model_type, len(tokenizer), special)
    if config is None:
        return why
    cls = _checkpoint_class(config, MODEL_FOR_CAUSAL_LM_MAPPING[type(config)])
    with contextlib.suppress(Exception), torch.device("meta"):  # some build on meta only
        size = sum(p.numel() for p in cls(config).parameters())
        if size > MAX_PARAMETERS:
            return f"tiny config still {size / 1e6:.0f}M parameters (sizes the sweep does not set)"
    torch.manual_seed(0)
    model = cls(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return None


def _float64_eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """transformers' eager attention with the softmax in float64 (its own takes it in float32):
    the model's own mask (``eager_mask``: causal, its window), every score, soft-capped as
    transformers' Gemma 2 writes it where the model passes a ``softcap``."""
    for name in ("sinks", "s_aux"):  # refused by check_supported before this runs
        if kw.get(name) is not None:
            raise ValueError(f"{REFERENCE_ATTN}: {name} is not applied")
    rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    scores = query @ key.transpose(-1, -2) * (scaling or query.shape[-1] ** -0.5)
    if kw.get("softcap") is not None:
        scores = torch.tanh(scores / kw["softcap"]) * kw["softcap"]
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    out = torch.softmax(scores.double(), dim=-1).to(query.dtype) @ value
    return out.transpose(1, 2).contiguous(), None


def _register_reference() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(REFERENCE_ATTN, _float64_eager)
    AttentionMaskInterface.register(REFERENCE_ATTN, eager_mask)


def _checkpoint_class(config, causal_lm: type) -> type:
    """The class whose saved folder a user's checkpoint of ``config`` is: the causal-LM class,
    or, where that takes the text config alone (Qwen3.5, Llama 4), the image-text one
    (``AutoModelForCausalLM`` then loads the folder its own way, or refuses it)."""
    from transformers.models.auto import modeling_auto as auto

    if isinstance(config, causal_lm.config_class):
        return causal_lm
    for mapping in (
        auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
        auto.MODEL_FOR_MULTIMODAL_LM_MAPPING,
    ):
        if type(config) in mapping:
            return mapping[type(config)]
    return causal_lm


def packed_batch(vocab: int, seed: int = 0) -> types.SimpleNamespace:
    """Three segments, the last two with a gap in their positions (a student's)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (sum(SEGMENTS),), generator=gen)
    pos = []
    for n in SEGMENTS:
        p = torch.arange(n)
        if n > 8:
            p[n // 2 :] += 3
        pos.append(p)
    cu = torch.zeros(len(SEGMENTS) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(SEGMENTS).cumsum(0)
    return types.SimpleNamespace(
        input_ids=ids, position_ids=torch.cat(pos), cu_seqlens=cu, max_seqlen=max(SEGMENTS),
        seq_lens=list(SEGMENTS),
    )  # fmt: skip


def packed_error(model) -> dict[str, float]:
    """The largest gaps, of the logits and of each segment's CE loss, between the packed
    forward (what training computes: ``forward_hidden`` times the head's logit scale, then
    ``W h``, soft-capped where the model caps its logits) and the model's own forward of each
    segment alone (its own mask, eager attention in float64, its own loss), both in float64."""
    import torch.nn.functional as F

    from reflectioncoder.model import (
        forward_hidden,
        lm_head_bias,
        lm_head_weight,
        logit_scale,
        prepare_model,
    )
    from reflectioncoder.model_support import final_logit_softcap
    from reflectioncoder.packed_attention import ATTN_IMPLEMENTATION

    if getattr(model, "_can_set_experts_implementation", lambda: False)():
        model.set_experts_implementation("eager")  # the grouped GEMM takes no float64
    model = prepare_model(model.double())
    batch = packed_batch(model.get_input_embeddings().weight.shape[0])
    with torch.no_grad():
        logits = (forward_hidden(model, batch) * logit_scale(model)) @ lm_head_weight(model).T
        if lm_head_bias(model) is not None:  # Phi's head (no type has both: scale it else)
            logits = logits + lm_head_bias(model) * logit_scale(model)
        if final_logit_softcap(model) is not None:  # Gemma 2's: c tanh(z / c), the fused loss's
            logits = torch.tanh(logits / final_logit_softcap(model)) * final_logit_softcap(model)
        _register_reference()
        model.set_attn_implementation(REFERENCE_ATTN)
        cu = batch.cu_seqlens.tolist()
        worst = {"logits": 0.0, "loss": 0.0}
        for a, b in zip(cu[:-1], cu[1:], strict=True):
            ids = batch.input_ids[a:b]
            # an explicit mask: without one transformers reads a gap in the positions as the
            # start of another packed sequence
            out = model(input_ids=ids[None], position_ids=batch.position_ids[None, a:b],
                        attention_mask=torch.ones_like(ids)[None], labels=ids[None],
                        use_cache=False)  # fmt: skip
            ce = F.cross_entropy(logits[a : b - 1], ids[1:])
            gaps = {"logits": (logits[a:b] - out.logits[0]).abs().max(), "loss": ce - out.loss}
            worst = {k: max(v, abs(float(gaps[k]))) for k, v in worst.items()}
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return worst


def train_steps(folder: Path, data: Path, out: Path, **extra: object) -> str | None:
    """``reflectioncoder train`` on ``folder``, two steps on the CPU (``extra``: more ``--set``
    items, such as ``{"model.fused_projections": True}``): None, or its error."""
    from reflectioncoder.cli import main
    from reflectioncoder.testing.cli import train_argv

    sets = {
        "model.name_or_path": folder, "data.files": f"[{data}]", "data.max_len": 512,
        "packing.max_tokens": 1024, "train.max_steps": 2, "train.samples_per_step": 2,
        "train.threads": 1, "logging.report_to": "[none]", "checkpoint.out_dir": out,
        "checkpoint.save_every": 0, **extra,
    }  # fmt: skip
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(train_argv(sets, "--no-progress"))
        except BaseException as exc:  # noqa: BLE001 - a crash is the finding
            return f"{type(exc).__name__}: {exc}"
    if code != 0:
        lines = [x for x in err.getvalue().splitlines() if x.strip()]
        return f"exit {code}: {lines[-1] if lines else ''}"
    return None


def sweep_one(model_type: str, tokenizer, data: Path, work: Path) -> Outcome:
    from reflectioncoder.model import load_model
    from reflectioncoder.model_support import check_supported

    folder = work / model_type / "model"
    try:
        why = build_folder(model_type, folder, tokenizer)
    except Exception as exc:  # noqa: BLE001 - the sweep's own tiny config did not build
        return Outcome(model_type, "skipped", f"tiny config does not build: {_line(exc)}")
    if why is not None:
        return Outcome(model_type, "skipped", why)
    try:
        model = load_model(folder, dtype=torch.float32)
    except ValueError as exc:  # the start's refusal, before the weights are read
        if not str(exc).startswith("model: "):
            return Outcome(model_type, "FAILS", f"load: {_line(exc)}")
        return Outcome(model_type, "refused", _line(exc))
    except Exception as exc:  # noqa: BLE001
        return Outcome(model_type, "FAILS", f"load: {_line(exc)}")
    try:
        check_supported(model, max_len=512)
    except ValueError as exc:
        return Outcome(model_type, "refused", _line(exc))
    from reflectioncoder.fused_projections import nothing_to_fuse

    fusable = nothing_to_fuse(model) is None  # else refused (GPT-2's c_attn: fused already)
    try:
        gap = packed_error(model)
    except Exception as exc:  # noqa: BLE001
        return Outcome(model_type, "FAILS", f"packed forward: {_line(exc)}")
    off = [f"{k} off by {v:.1e}" for k, v in gap.items() if not v <= TOLERANCE[k]]
    if off:
        return Outcome(model_type, "FAILS", f"packed != unpacked: {', '.join(off)}")
    for i, extra in enumerate(TRAIN_VARIANTS):
        if not fusable:
            extra = {k: v for k, v in extra.items() if k != "model.fused_projections"}
        err = train_steps(folder, data, work / model_type / f"run{i}", **extra)
        if err is not None:
            return Outcome(model_type, "FAILS", f"train {extra}: {_line(err)}")
    said = ", ".join(f"{k} to {v:.0e}" for k, v in gap.items())
    return Outcome(model_type, "trains-exact", f"packed == unpacked: {said}")


def short_reason(detail: str) -> str:
    """A refusal's line without what every one says (the docs' table)."""
    detail = re.sub(r"^ValueError: model: ", "", detail)
    detail = re.sub(r" \(model folder: .*\)$", "", detail)
    return detail.replace("; this architecture is not supported", "")


def _line(exc: object) -> str:
    text = str(exc).strip().splitlines()
    return (f"{type(exc).__name__}: " if isinstance(exc, BaseException) else "") + (
        text[0][:300] if text else ""
    )


def sweep(model_types: Iterable[str], data: Path) -> Iterator[Outcome]:
    from reflectioncoder.testing.tiny_model import save_tiny_model

    texts = data.read_text().splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(save_tiny_model(work / "tok", texts))
        for model_type in model_types:
            print(f"archsweep: {model_type}", file=sys.__stderr__, flush=True)
            yield sweep_one(model_type, tok, data, work)


def main(argv: list[str]) -> int:
    import logging

    logging.disable(logging.WARNING)
    data, names = Path(argv[0]), argv[1:] or causal_lm_types()
    for row in sweep(names, data):
        detail = short_reason(row.detail).replace("|", "/")
        print(f"| `{row.model_type}` | {row.outcome} | {detail} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
