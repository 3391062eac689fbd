"""FSDP2's saved model of a tied-embedding Llama in bf16 is the single engine's folder.

``get_model_state_dict(full_state_dict=True)`` gives the tied input embedding and LM head as two
separate copies, so ``save_pretrained`` wrote ``lm_head.weight`` beside
``model.embed_tokens.weight``: the final model and every checkpoint's model/ held a tensor the
single and DeepSpeed engines' folders do not (found by a 2-rank run of each engine; in one
process the copies come from the cast to bf16). Its config.json named the dtype of FSDP's fp32
masters, not the bf16 weights saved: ``from_pretrained(dtype="auto")`` loaded them as fp32."""

from __future__ import annotations

import copy
import json

import torch
from safetensors.torch import load_file
from test_packed_rows import VOCAB, _batches

from reflectioncoder.config_loader import load_config
from reflectioncoder.model import build_tiny_llama, prepare_model


def test_a_tied_model_saved_by_fsdp_is_the_single_engines_folder(tmp_path, seed):
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from reflectioncoder.train import distributed
    from reflectioncoder.train.checkpoint import save_final_model
    from reflectioncoder.train.fsdp_engine import FSDPEngine
    from reflectioncoder.train.local_engine import LocalEngine
    from reflectioncoder.train.loss_module import ReflectionLossModule

    run = load_config(base="tiny", overrides=["model.arch={hidden_size: 32}", "model.dtype=bf16"])
    model = build_tiny_llama(VOCAB, hidden_size=32, tie_word_embeddings=True, seed=seed)
    model.to(torch.bfloat16)  # as the trainer casts it (both engines keep fp32 masters)
    model.config._attn_implementation = "sdpa"
    prepare_model(model, liger=False)
    batches = _batches(seed)[1][:2]
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        info = distributed.DistInfo(0, 1, 0, torch.device("cpu"), deepspeed=False)
        saved = {}
        for name, kind in (("single", LocalEngine), ("fsdp", FSDPEngine)):
            module = ReflectionLossModule(copy.deepcopy(model))
            engine = kind(module, run, info)
            for j, batch in enumerate(batches):
                engine.start_micro_batch(j == len(batches) - 1)
                engine.backward(engine(batch)[0])
            assert engine.finish_step(torch.ones(1, dtype=torch.float64)).applied
            folder = save_final_model(module.model, None, engine.full_state_dict(), tmp_path / name)
            saved[name] = folder
    finally:
        dist.destroy_process_group()

    single = load_file(str(saved["single"] / "model.safetensors"))
    fsdp = load_file(str(saved["fsdp"] / "model.safetensors"))
    assert "lm_head.weight" not in single
    assert fsdp.keys() == single.keys()
    for key, value in single.items():  # the same fp32 masters, rounded to bf16
        assert fsdp[key].dtype == value.dtype == torch.bfloat16, key
        torch.testing.assert_close(fsdp[key], value, rtol=1e-2, atol=1e-5, msg=key)
    for folder in saved.values():  # the weights' dtype (FSDP's config named its fp32 masters')
        assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(saved["fsdp"], dtype="auto")
    assert loaded.dtype == torch.bfloat16
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(loaded.lm_head.weight.detach(), fsdp["model.embed_tokens.weight"])
