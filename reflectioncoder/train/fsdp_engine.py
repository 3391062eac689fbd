"""torch's FSDP2 (``fully_shard``) as an engine (``distributed.backend: fsdp``).

Each decoder layer is sharded over the ranks, then the root (the loss module: embeddings,
final norm, LM head). The sharded parameters are the fp32 master weights; FSDP2 all-gathers
each layer's weights in the compute dtype (bf16) before its forward, frees them after it
(``reshard_after_forward``: gathered again for the backward, and for a recompute), and
reduce-scatters the layer's gradients in fp32 as soon as its backward is done, adding each
micro-batch's shard into the sharded fp32 ``.grad``: the step's gradient sums over
micro-batches and ranks are fp32, 1/ranks of them per rank. AdamW (torch's fused kernel)
steps the DTensor shards. 16 bytes a parameter over the ranks (master, gradient, m, v) where
DeepSpeed's ZeRO-3 keeps 18 (its bf16 partition besides the fp32 one:
``memory_plan.resident_bytes``).

The root stays gathered from its forward to its backward (FSDP2 does not reshard the root
after its forward), so the fused loss reads the LM head's whole weight
(``model.lm_head_weight``, read inside the loss module's forward). Checkpoints are torch's
distributed checkpoint (``torch.distributed.checkpoint``): every rank writes its shards, and a
run of any number of ranks reads them back (DCP reshards).

A model with safetensors weights comes built on the meta device and gets its values only once
sharded, each rank reading its own rows (``train/fsdp_load.py``): no rank ever holds it whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from reflectioncoder.config import RunConfig
from reflectioncoder.decoder_layout import require_layers
from reflectioncoder.errors import ConfigError
from reflectioncoder.train.distributed import DistInfo, all_reduce_sum, resolve_dtype
from reflectioncoder.train.engine import (
    StateReader,
    StepResult,
    clip_and_step,
    hf_state_dict,
    make_adamw,
    read_step,
)
from reflectioncoder.train.fsdp_load import load_shards, pending_load

FSDP_DIR = "fsdp"  # a checkpoint's DCP folder


def check_fsdp_run(run: RunConfig, device: torch.device) -> None:
    """What the engine does not support, in one line, before the model loads."""
    if run.distributed.backend != "fsdp":
        return
    dtype = resolve_dtype(run.model.dtype, device)
    if dtype == torch.float16:
        raise ConfigError(
            "fp16 is not supported with distributed.backend fsdp (no loss scaler): use bf16",
            field="model.dtype",
        )
    if run.model.fused_projections:
        raise ConfigError(
            "not with distributed.backend fsdp (each gather puts the weights apart: the fused "
            "GEMM would concatenate them every call): set it false",
            field="model.fused_projections",
        )
    if dtype == torch.bfloat16 and run.model.mixed_precision == "autocast":
        raise ConfigError(
            "autocast is not supported with distributed.backend fsdp (it computes in bf16 from "
            "fp32 shards, as masters does): use masters",
            field="model.mixed_precision",
        )


class FSDPEngine:
    """FSDP2 over the ranks (module docstring); the ``Engine`` protocol."""

    def __init__(self, module: torch.nn.Module, run: RunConfig, info: DistInfo) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        self.module = module
        self.info = info
        dtype = resolve_dtype(run.model.dtype, info.device)
        self.compute_dtype = dtype
        self.mesh = init_device_mesh(info.device.type, (info.world_size,))
        # fp32 gradients to reduce; the loss's inputs (fp32 weights of its rows) left as they are
        policy = MixedPrecisionPolicy(
            param_dtype=None if dtype == torch.float32 else dtype,
            reduce_dtype=torch.float32,
            cast_forward_inputs=False,
        )
        for layer in require_layers(module.model):
            fully_shard(layer, mesh=self.mesh, mp_policy=policy, reshard_after_forward=True)
        fully_shard(module, mesh=self.mesh, mp_policy=policy, reshard_after_forward=True)
        module.float()  # the shards become the fp32 masters (bf16 weights load exact)
        if pending_load(module) is not None:  # built on meta: each rank reads its shards
            load_shards(module, info.device)
        for sharded in module.modules():
            if isinstance(sharded, FSDPModule):
                # a sum over ranks: our loss weights carry the global normalisation (gloo has
                # no pre-multiplied sum: a plain SUM, then no division)
                sharded.set_gradient_divide_factor(1.0)
                sharded.set_force_sum_reduction_for_comms(True)
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = make_adamw(self.params, run.optim, fused=True)
        self.grad_clip = run.optim.grad_clip
        self.skip_nonfinite = run.train.skip_nonfinite

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def start_micro_batch(self, last: bool) -> None:
        """Every micro-batch reduce-scatters (into the sharded fp32 sums): nothing to set."""

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def finish_step(self, stats: torch.Tensor) -> StepResult:
        """As ``LocalEngine.finish_step``: clip by the global norm (of every rank's shards),
        step on the device with a non-finite loss or norm skipping it (fused AdamW's
        ``found_inf``), then the step's one host read."""
        all_reduce_sum(stats)
        norm = clip_and_step(
            self.optimizer, self.params, stats, self.grad_clip, self.skip_nonfinite
        )
        return read_step(stats, norm)

    def describe(self) -> str:
        return (
            f"fsdp2 (fully_shard per layer, {self.info.world_size} ranks), "
            f"{type(self.optimizer).__name__} (fused) on fp32 shards, weights gathered in "
            f"{self.compute_dtype}, fp32 reduce-scatter"
        )

    @property
    def offloads_optimizer(self) -> bool:
        return False

    def layout(self) -> dict[str, Any]:
        return {"engine": "fsdp", "zero_stage": None, "world_size": self.info.world_size}

    def _dcp_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optim = get_state_dict(self.module, self.optimizer)
        return {"model": model, "optim": optim}

    def save_state(self, folder: Path) -> None:
        """Every rank writes its shards of the masters and AdamW's state (DCP)."""
        import torch.distributed.checkpoint as dcp

        dcp.save(self._dcp_state(), checkpoint_id=str(folder / FSDP_DIR))

    def load_state(self, folder: Path) -> None:
        """The masters and AdamW's state from DCP shards of any number of ranks."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        if not (folder / FSDP_DIR).is_dir():
            raise ValueError(f"--resume: no FSDP state under {folder}/{FSDP_DIR}")
        state = self._dcp_state()
        dcp.load(state, checkpoint_id=str(folder / FSDP_DIR))
        set_state_dict(
            self.module,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )

    def load_param_states(self, read: StateReader) -> None:
        """Masters and AdamW state from a checkpoint of another engine: every rank reads each
        full tensor and keeps its own shard (no communication)."""
        from torch.distributed.tensor import distribute_tensor

        def shard(full: torch.Tensor, like: Any) -> Any:
            full = full.to(like.device, torch.float32).reshape(like.shape)
            return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)

        fused = self.optimizer.defaults.get("fused")
        for name, p in self.module.named_parameters():
            if not p.requires_grad:
                continue
            state = read(name, p.shape)
            with torch.no_grad():
                p.copy_(shard(state.weight, p))
            self.optimizer.state[p] = {
                "step": torch.tensor(float(state.step), device=p.device if fused else "cpu"),
                "exp_avg": shard(state.exp_avg, p),
                "exp_avg_sq": shard(state.exp_avg_sq, p),
            }

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The full weights on rank 0 in the compute dtype (gathered: every rank calls)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(self.module, options=options)
        if not self.info.is_main:
            return None
        for key, value in full.items():  # each fp32 copy freed once cast: rank 0's host holds
            full[key] = value.to(self.compute_dtype)  # 4 bytes a parameter at most, not 4 + 2
        # A tied weight comes back as two copies: one tensor under both names, as the module's
        # own state_dict has it, so that save_pretrained writes it once (the LM head left out)
        first: dict[int, str] = {}
        for name, p in self.module.named_parameters(remove_duplicate=False):
            if first.setdefault(id(p), name) != name and name in full:
                full[name] = full[first[id(p)]]
        return hf_state_dict(full)
