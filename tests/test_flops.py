"""The step's FLOP count (reflectioncoder.train.flops) against torch.utils.flop_counter: a real
packed micro-batch through the trainer's loss module, forward + backward, on the CPU."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from reflectioncoder.data.config import MaskConfig, PackingConfig
from reflectioncoder.data.packing import pack_rank, plan_step
from reflectioncoder.model import build_tiny_llama, prepare_model
from reflectioncoder.testing.synthetic import synthetic_samples
from reflectioncoder.train.flops import (
    ModelShape,
    StepFlops,
    batch_flops,
    packed_flops,
    recomputed_share,
)
from reflectioncoder.train.loss_module import ReflectionLossModule

SIZES = dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=352)


def _batch(seed: int, vocab: int, generation: float = 0.3):
    """A packed micro-batch of four synthetic samples with at least one teacher/student pair and
    several segments: the first seed from ``seed`` on that gives one (four samples can all be
    generation samples, or the step's mask can leave no KL row)."""
    mask, packing = MaskConfig(), PackingConfig(max_tokens=4096)
    for attempt in itertools.count(seed):
        samples = synthetic_samples(
            4,
            vocab_size=vocab,
            seed=attempt,
            instruction=(10, 40),
            reflection=(30, 120),
            answer=(10, 40),
            generation_fraction=generation,
        )
        plan = plan_step(samples, 500, 1000, mask, packing, attempt)
        (batch,) = pack_rank(plan, 0, mask, packing)
        if batch.num_kl_rows > 0 and len(batch.seq_lens) > 2:
            return batch


def _addmm_flops(bias_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _counted(module, batch, split: bool = False) -> int:
    """FLOPs torch counts for one forward + backward; SDPA's math backend, so that attention
    runs as matmuls the counter sees (the CPU flash kernel has no FLOP formula), and the
    in-place ``addmm_`` (the fused loss's d W GEMM) counted as ``addmm`` is (torch has no entry
    for the in-place op)."""
    aten = torch.ops.aten
    in_place = {aten.addmm_: _addmm_flops}
    with (
        sdpa_kernel(SDPBackend.MATH),
        FlopCounterMode(display=False, custom_mapping=in_place) as counter,
    ):
        loss, *_ = module(batch, split)
        loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("policy", [None, "full", "alternate", "save_gemms"])
def test_step_flops_match_torch_flop_counter(seed, policy):
    vocab = 1000
    model = build_tiny_llama(vocab, seed=seed, **SIZES)
    on = policy is not None
    prepare_model(
        model, liger=False, gradient_checkpointing=on, checkpointing_policy=policy or "full"
    )
    batch = _batch(seed, vocab)
    assert batch.num_kl_rows > 0 and len(batch.seq_lens) > 2  # pairs, several segments
    shape = ModelShape.from_model(model)
    flops = batch_flops(shape, batch, recompute=recomputed_share(model.rc_checkpointing_plan))
    counted = _counted(ReflectionLossModule(model), batch)
    # The model counts norm weights (0.12% here), the counter sees no norms: within 0.5%.
    assert counted == pytest.approx(flops.hardware, rel=0.005)
    if policy in ("full", "alternate"):  # a layer's forward again (but its last GEMM)
        assert flops.hardware > (1.15 if policy == "full" else 1.05) * flops.model
    else:  # no checkpointing, or only element-wise ops rerun (no FLOPs counted)
        assert flops.hardware == flops.model


def test_logging_steps_teacher_ce_pass_is_hardware_flops(seed):
    """A step that logs the teacher's CE apart runs the head again on the teacher's CE rows:
    executed (HFU), not useful work (MFU)."""
    vocab = 1000
    model = build_tiny_llama(vocab, seed=seed, **SIZES)
    prepare_model(model, liger=False, gradient_checkpointing=False)
    batch = _batch(seed, vocab)
    assert batch.teacher_ce_rows.numel() > 0
    shape = ModelShape.from_model(model)
    plain, split = (batch_flops(shape, batch, 0.0, split=s) for s in (False, True))
    assert split.model == plain.model
    rows = batch.teacher_ce_rows.numel()
    assert split.hardware - plain.hardware == pytest.approx(2 * vocab * SIZES["hidden_size"] * rows)
    counted = _counted(ReflectionLossModule(model), batch, split=True)
    assert counted == pytest.approx(split.hardware, rel=0.005)


def test_shape_from_sizes_matches_the_built_model(seed):
    model = build_tiny_llama(500, seed=seed, **SIZES)
    built = ModelShape.from_model(model)
    assert built == ModelShape.llama(128, 352, 2, 4, 2, 500)
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    assert built.body_params == sum(p.numel() for p in model.parameters()) - embedding - head


def test_attention_counts_each_segment_not_the_batch():
    shape = ModelShape.llama(64, 128, 2, 4, 4, 100)
    apart = packed_flops(shape, [100, 100], 0, recompute=False).model
    joined = packed_flops(shape, [200], 0, recompute=False).model
    # Same tokens and parameters: only the attention square differs, 2 x 100^2 vs 200^2
    # (2 layers, 4 heads of 16).
    assert joined - apart == pytest.approx(12 * 2 * 64 * (200**2 - 2 * 100**2))


def test_filler_batch_counts_as_hardware_only(seed):
    from reflectioncoder.data.packing import zero_weight

    shape = ModelShape.llama(64, 128, 2, 4, 4, 1000)
    batch = zero_weight(_batch(seed, 1000))
    flops = batch_flops(shape, batch, recompute=True)
    assert flops.model == 0 and flops.hardware > 0


def test_trainer_row_uses_the_same_count_and_seconds(tmp_path, seed):
    """The metrics row: MFU, HFU, tokens/s and samples/s from one step's FLOPs and seconds."""
    from test_trainer import tiny_config

    from reflectioncoder.train.trainer import Trainer

    extra = ("logging.peak_tflops=0.5", "model.gradient_checkpointing=true")
    trainer = Trainer(tiny_config(tmp_path, seed, n=8, extra=extra))
    try:
        batches = trainer.step_batches(0)
        row = trainer.train_step()
    finally:
        trainer.close()
    split = trainer._splits_ce(0)
    want = sum((batch_flops(trainer.flop_shape, b, True, split) for b in batches), StepFlops())
    assert row["model_flops"] == pytest.approx(want.model, rel=1e-12)
    assert row["hardware_flops"] == pytest.approx(want.hardware, rel=1e-12)
    seconds = row["time"]
    assert row["mfu"] == pytest.approx(want.model / (seconds * 0.5e12), rel=1e-9)
    assert row["hfu"] == pytest.approx(want.hardware / (seconds * 0.5e12), rel=1e-9)
    assert row["tokens_per_s"] == pytest.approx(row["tokens"] / seconds, rel=1e-9)
    assert row["samples_per_s"] == pytest.approx(row["samples"] / seconds, rel=1e-9)
    assert row["samples"] == sum(b.num_samples for b in batches) > 0
