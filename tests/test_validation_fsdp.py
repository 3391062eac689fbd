"""FSDP2 after the held-out pass: every weight sharded again (FSDP2 leaves a root whose
``reshard_after_forward`` is left to it gathered after its forward, for a backward that this
pass never runs; the engine sets it, so the root reshards), the module in train mode, no
gradients, and the next training step runs."""

from __future__ import annotations

import torch
from test_packed_rows import _batches

from reflectioncoder.config_loader import load_config
from reflectioncoder.model import build_tiny_llama, prepare_model
from reflectioncoder.train import distributed
from reflectioncoder.train.fsdp_engine import FSDPEngine
from reflectioncoder.train.loss_module import ReflectionLossModule
from reflectioncoder.train.validation import validation_loss


def test_the_held_out_pass_leaves_fsdp_sharded_and_training(seed):
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    run = load_config(base="tiny", overrides=["model.arch={hidden_size: 32}"])
    model = build_tiny_llama(300, hidden_size=32, num_layers=2, seed=seed)
    prepare_model(model, liger=False)
    batches = _batches(seed)[1]
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        info = distributed.DistInfo(0, 1, 0, torch.device("cpu"), deepspeed=False)
        fsdp = FSDPEngine(ReflectionLossModule(model), run, info)
        row = validation_loss(fsdp, iter(batches), info.device)
        assert row["val_samples"] == sum(b.num_samples for b in batches) > 0
        params = dict(fsdp.module.named_parameters())
        gathered = [name for name, p in params.items() if not isinstance(p, DTensor)]
        assert not gathered, gathered
        assert fsdp.module.training and all(p.grad is None for p in params.values())
        # and the next training step runs as usual
        fsdp.start_micro_batch(True)
        fsdp.backward(fsdp(batches[0])[0])
        assert fsdp.finish_step(torch.ones(1, dtype=torch.float64)).applied
    finally:
        dist.destroy_process_group()
