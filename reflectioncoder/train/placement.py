"""The model made ready on its device: the weights placed in the dtype the engine wants, its
packed attention and projections (``model.prepare_model``), the memory plan applied once from
the GPU's memory (each layer's checkpointing policy, ``memory_plan.plan_run``,
and whether the optimizer is offloaded), its layers compiled."""

from __future__ import annotations

import dataclasses
import logging
import os

import torch
from torch import nn

from reflectioncoder import activation_checkpointing as ac
from reflectioncoder import memory_plan
from reflectioncoder.config import RunConfig
from reflectioncoder.decoder_layout import require_layers
from reflectioncoder.train import deepspeed_config
from reflectioncoder.train.distributed import DistInfo
from reflectioncoder.train.flops import ModelShape
from reflectioncoder.train.fsdp_load import pending_load
from reflectioncoder.train.metrics import guess_peak_tflops

log = logging.getLogger("reflectioncoder.train")


def make_ready(
    model: nn.Module, cfg: RunConfig, info: DistInfo, dtype: torch.dtype, partitioned: bool
) -> tuple[RunConfig, torch.dtype | None]:
    """``model`` placed, prepared, planned and compiled (``partitioned``: loaded into ZeRO-3's
    partitions); the config with the optimizer's offload decided, and the dtype the loss module
    computes under autocast (None: none)."""
    from reflectioncoder.model import compile_layers, prepare_model

    autocast = place_weights(model, cfg, info, dtype, partitioned)
    prepare_model(
        model,
        fused_projections=cfg.model.fused_projections,
        attention=cfg.model.attention,
        device=info.device,
    )
    cfg = plan_memory(cfg, model, info, dtype)
    compile_ = cfg.model.compile
    if compile_ is True or (compile_ == "auto" and info.device.type == "cuda"):
        compile_layers(model)
    return cfg, autocast


def place_weights(
    model: nn.Module, cfg: RunConfig, info: DistInfo, dtype: torch.dtype, partitioned: bool
) -> torch.dtype | None:
    """Put the weights on the device in the dtype the engine wants (``partitioned``: loaded
    into ZeRO-3's partitions); the dtype the loss module computes under autocast (None: none)."""
    from reflectioncoder.model import cast_weights, count_parameters

    if partitioned:  # loaded into partitions: never whole on one device
        if info.is_main:
            local = sum(p.ds_tensor.numel() for p in model.parameters())
            log.info(
                "ZeRO-3: model loaded into partitions, this rank holds %d of %d parameters",
                local,
                count_parameters(model),
            )
        return None
    if pending_load(model) is not None:
        # built on meta: the engine reads each rank's shards (fp32 masters)
        if info.is_main:
            log.info(
                "FSDP: model built on the meta device; each rank reads only its shards of "
                "%s once sharded",
                pending_load(model).folder,
            )
        return None
    if casts_weights(cfg, info, dtype):
        cast_weights(model, info.device, dtype)  # the engine keeps fp32 masters
        return None
    model.to(info.device)  # fp32 weights; bf16 / fp16 through autocast
    return dtype if dtype != torch.float32 else None


def casts_weights(cfg: RunConfig, info: DistInfo, dtype: torch.dtype) -> bool:
    """Whether the weights are cast to the training dtype (the engine keeping fp32 masters);
    else they stay fp32 and a 16-bit dtype runs under autocast (fp16 in one process too)."""
    return (
        info.deepspeed
        or cfg.distributed.backend == "fsdp"
        or (dtype == torch.bfloat16 and cfg.model.mixed_precision == "masters")
    )


def plan_memory(cfg: RunConfig, model: nn.Module, info: DistInfo, dtype: torch.dtype) -> RunConfig:
    """Give each layer its checkpointing policy and decide the optimizer's offload, once,
    from the GPU's memory (``memory_plan.plan_run``); the config with the
    offload decided."""
    from reflectioncoder.model import count_parameters

    device = info.device
    stage = deepspeed_config.zero_stage_of(cfg) if info.deepspeed else 0
    fsdp = cfg.distributed.backend == "fsdp"
    if fsdp:
        stage = 3  # sharded as ZeRO-3 (resident_bytes counts FSDP's own bytes)
    # fp16 in one process keeps fp32 weights under autocast, whatever mixed_precision says
    half = dtype in (torch.bfloat16, torch.float16) and casts_weights(cfg, info, dtype)
    shape = ModelShape.from_model(model)  # its widths size the planner's bytes and costs
    offload_layers = _offloadable_layers(cfg, model, info, shape, 2 if half else 4)
    offload = cfg.distributed.offload_optimizer
    if info.deepspeed and stage == 0 and offload == "auto":
        offload = False  # no ZeRO-Offload at DeepSpeed's ZeRO-0 (can_offload: one process)
    memory = memory_plan.plan_run(
        cfg.model.checkpointing_policy,
        cfg.model.gradient_checkpointing,
        layers=len(require_layers(model)),
        tokens=cfg.packing.max_tokens,
        shape=shape,
        params=count_parameters(model),
        stage=stage,
        ranks=info.world_size,
        offload=offload,
        fsdp=fsdp,
        device_bytes=(
            torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
        ),
        element_bytes=2 if half else 4,
        offload_layers=offload_layers,
    )
    ac.apply_plan(model, memory.layers)
    if info.is_main and cfg.model.gradient_checkpointing:
        counts = {p: memory.layers.count(p) for p in ac.LAYER_POLICIES}
        log.info(
            "activation checkpointing %s: %s of %d layers%s",
            cfg.model.checkpointing_policy,
            ", ".join(f"{p} {n}" for p, n in counts.items() if n),
            len(memory.layers),
            ", optimizer offloaded to CPU" if memory.offload else "",
        )
    if info.is_main and not memory.fits:
        log.warning(
            "GPU memory: the activations need %.1f GiB, %.1f GiB is left beside the "
            "weights, gradients and optimizer states: expect out-of-memory; use "
            "distributed.offload_optimizer (one rank, or DeepSpeed ZeRO-1/2), more GPUs or "
            "ZeRO-3, or a smaller packing.max_tokens",
            memory.activation_bytes / 2**30,
            max(memory.budget_bytes, 0) / 2**30,
        )
    distributed_cfg = dataclasses.replace(cfg.distributed, offload_optimizer=memory.offload)
    return dataclasses.replace(cfg, distributed=distributed_cfg)


def _offloadable_layers(
    cfg: RunConfig, model: nn.Module, info: DistInfo, shape: ModelShape, element_bytes: int
) -> tuple[int, int]:
    """How many layers ``auto`` may offload on this GPU, every how many (``offload_rule``, with
    the GPU's peak from ``logging.peak_tflops`` or the card's name, the host link shared by
    the ranks on this host: ``link_bytes_s``); 0 on a CPU, with
    ``model.activation_offload`` off, or for a card of unknown peak."""
    device = info.device
    if device.type != "cuda" or not cfg.model.activation_offload:
        return (0, 1)
    peak = cfg.logging.peak_tflops or guess_peak_tflops(torch.cuda.get_device_name(device))
    if not peak:
        log.info("activation offload off: the GPU's peak is unknown (logging.peak_tflops)")
        return (0, 1)
    layers = require_layers(model)
    layer_params = sum(getattr(p, "ds_numel", p.numel()) for p in layers[0].parameters())
    tokens = cfg.packing.max_tokens
    forward_s = memory_plan.layer_forward_s(layer_params, tokens, peak * 1e12)
    on_host = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    return memory_plan.offload_rule(
        len(layers), tokens, shape, forward_s, memory_plan.link_bytes_s(on_host), element_bytes
    )
