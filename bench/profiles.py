"""Benchmark sizes, per profile: what the suites (bench/test_*.py) and the GPU suite run.

``cpu`` is what ``pytest bench --benchmark-only`` takes on a machine without CUDA (minutes on 2
shared cores); ``gpu`` on one with CUDA (the issues' shapes); ``headline`` is the GPU suite's
(N=16384, D=4096, V=128256 and V=32000, bf16; a 1B-class Llama train step); ``tiny`` is the
GPU suite's --dry-run (the same code at toy sizes, seconds on the CPU).
Choose with ``pytest bench --bench-profile NAME`` (default: ``gpu`` with CUDA, else ``cpu``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bench.providers.train_step import LLAMA_1B

Shape = tuple[int, int, int]  # (N, D, V) of the loss
AttnPoint = tuple[tuple[int, ...], int, int, int]  # (seqlens, Hq, Hkv, Dh)


@dataclass(frozen=True)
class Profile:
    name: str
    device: str  # "cpu": Triton runs interpreted, and small rows are marked noisy
    dtype: str  # of the loss, attention and train step: fp32 on the CPU, bf16 on a GPU
    loss_shapes: tuple[Shape, ...]
    # Shapes for providers that run only in Triton's interpreter on the CPU (ours:triton,
    # liger): toy sizes there, the same as loss_shapes on CUDA.
    interpreted_loss_shapes: tuple[Shape, ...]
    mask_samples: tuple[int, ...]  # samples per micro-batch
    packing_samples: int
    attention: tuple[AttnPoint, ...]
    train_step: dict = field(default_factory=dict)  # TrainStepConfig fields
    rounds: int = 3  # timed calls per row (one more, untimed, measures memory)
    # Loss modes of the providers from elsewhere (ours and the reference run every mode).
    other_loss_modes: tuple[str, ...] = ("fwd", "full", "eval")


_CPU_TRAIN = dict(
    vocab=8192,
    hidden=128,
    layers=2,
    heads=4,
    kv_heads=2,
    intermediate=384,
    samples=2,
    instruction=(50, 150),
    reflection=(100, 400),
    answer=(50, 150),
    max_tokens=4096,
    steps=1,
)
# 1B-class Llama, random weights, packed to 4K tokens per micro-batch (samples up to 1.8K tokens,
# so a teacher + student pair fits), against the authors' faithful recipe: its attention
# ``auto`` (flash_attention_2 where flash-attn is installed, as the authors; else SDPA with the
# 2-D mask), named in the row.
_GPU_TRAIN = dict(
    LLAMA_1B,
    samples=4,
    instruction=(100, 400),
    reflection=(300, 1000),
    answer=(100, 400),
    max_tokens=4096,
    steps=1,
)
_TEACHER_STUDENT = (1800, 1100, 2400, 1500)  # a packed micro-batch's teacher / student lengths

PROFILES = {
    "tiny": Profile(
        name="tiny",
        device="cpu",
        dtype="fp32",
        loss_shapes=((64, 32, 256),),
        interpreted_loss_shapes=((32, 32, 128),),
        mask_samples=(2,),
        packing_samples=8,
        attention=(((40, 24, 64), 4, 2, 16),),
        train_step=dict(
            _CPU_TRAIN,
            vocab=512,
            hidden=64,
            layers=1,
            intermediate=128,
            reflection=(30, 60),
            instruction=(10, 30),
            answer=(10, 30),
        ),
        rounds=1,
    ),
    "cpu": Profile(
        name="cpu",
        device="cpu",
        dtype="fp32",
        loss_shapes=((256, 256, 8192), (1024, 256, 8192)),
        interpreted_loss_shapes=((32, 32, 256),),
        mask_samples=(4, 16),
        packing_samples=64,
        attention=(((600, 400, 800, 500), 4, 2, 64),),
        train_step=_CPU_TRAIN,
    ),
    "gpu": Profile(
        name="gpu",
        device="cuda",
        dtype="bf16",
        loss_shapes=((4096, 4096, 32000), (4096, 4096, 128256), (16384, 4096, 128256)),
        interpreted_loss_shapes=((4096, 4096, 32000), (4096, 4096, 128256), (16384, 4096, 128256)),
        mask_samples=(64, 512),
        packing_samples=512,
        attention=((_TEACHER_STUDENT * 2, 32, 8, 128),),
        train_step=_GPU_TRAIN,
        rounds=10,
    ),
    "headline": Profile(
        name="headline",
        device="cuda",
        dtype="bf16",
        loss_shapes=((16384, 4096, 128256), (16384, 4096, 32000)),
        interpreted_loss_shapes=((16384, 4096, 128256), (16384, 4096, 32000)),
        mask_samples=(512,),
        packing_samples=512,
        attention=((_TEACHER_STUDENT * 2, 32, 8, 128),),
        train_step=_GPU_TRAIN,
        rounds=5,
        other_loss_modes=("full",),  # the suite's time limit: the others' forward + backward
    ),
}


def selected(config) -> Profile:
    """The profile of this pytest run (--bench-profile; auto: gpu with CUDA, else cpu)."""
    import torch

    name = config.getoption("bench_profile", "auto")
    if name == "auto":
        name = "gpu" if torch.cuda.is_available() else "cpu"
    return PROFILES[name]


def noisy_on(profile: Profile) -> list:
    """``marks`` for a row whose time drifts beyond the gate's threshold between two runs on
    the shared CPU (measured: bench/RESULTS.md); none on CUDA."""
    return [pytest.mark.noisy] if profile.device == "cpu" else []
