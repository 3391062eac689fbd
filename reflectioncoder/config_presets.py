"""Presets: a run's starting config as a nested dict, before its YAML file and overrides.

``tiny`` (the CPU demo, a small Llama built from sizes), ``paper`` (SPEC §4) and ``smollm2``
(SmolLM2-135M-Instruct fine-tuned on a CPU).
"""

from __future__ import annotations

from typing import Any

from reflectioncoder.errors import UsageError, did_you_mean


def preset(name: str) -> dict[str, Any]:
    """Preset ``name`` (a key of ``PRESETS``) as a nested dict."""
    if not isinstance(name, str) or name not in PRESETS:
        hint = did_you_mean(name, PRESETS)
        raise UsageError(
            f"unknown {name!r}{hint}; known: {', '.join(sorted(PRESETS))}", field="preset"
        )
    return PRESETS[name]()


def tiny_preset() -> dict[str, Any]:
    """The demo: a ~1M-parameter Llama built from config, trained for a few hundred CPU steps."""
    return {
        "model": {
            "arch": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_layers": 2,
                "num_heads": 4,
                "num_kv_heads": 2,
                "max_position_embeddings": 4096,
                "tie_word_embeddings": False,
            },
            "tokenizer_vocab_size": 512,
            "dtype": "fp32",
        },
        # a whole pack: build-data's samples run to ~2K ids with a 512-token vocabulary (max_len
        # 1024 dropped 17-65 of the demo's 240 samples, its longest reflections)
        "data": {"files": [], "max_len": 4096},
        "mask": {"strategies": ["block_mask"], "block_order": "tce"},
        "packing": {"max_tokens": 4096, "normalisation": "sample"},
        "optim": {"lr": 2e-3, "warmup_ratio": 0.05, "weight_decay": 0.0, "grad_clip": 1.0},
        "train": {"epochs": 4, "samples_per_step": 8, "seed": 3407, "device": "cpu"},
        "distributed": {"backend": "none", "zero_stage": 0},
        "checkpoint": {"out_dir": "runs/tiny", "save_every": 50, "keep_last": 2},
        "logging": {"log_every": 1},
    }


def paper_preset() -> dict[str, Any]:
    """SPEC §4: AdamW 5e-5, cosine, 5% warm-up, 2 epochs, 512 sequences, 4096, bf16, ZeRO-1 on
    several GPUs (``backend: auto``); one GPU runs the one-process engine, which sums each bf16
    gradient into fp32 as the backward makes it (DeepSpeed's bookkeeping costs 42 bytes a
    parameter a micro-batch there) and, for a 7B, puts its optimizer on the host."""
    return {
        "model": {
            "name_or_path": "deepseek-ai/deepseek-coder-6.7b-base",
            "dtype": "bf16",
            "gradient_checkpointing": True,
        },
        # Generation set once, each reflection set twice (SPEC §4): give the files with
        # --set data.files=[codefeedback.jsonl,reflectionseq-gpt.jsonl,reflectionseq-ds.jsonl].
        "data": {"files": [], "upsample": None, "max_len": 4096},
        "mask": {"strategies": ["block_mask"], "block_order": "tce", "distill": True, "kl": True},
        "packing": {"max_tokens": 16384, "normalisation": "sample"},
        "optim": {
            "lr": 5e-5,
            "schedule": "cosine",
            "warmup_ratio": 0.05,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
        },
        "train": {"epochs": 2, "samples_per_step": 512, "seed": 3407, "device": "auto"},
        "distributed": {"backend": "auto", "zero_stage": 1},
        "checkpoint": {"out_dir": "runs/paper", "save_every": 200, "keep_last": 2},
        "logging": {"log_every": 1},
    }


def smollm2_preset() -> dict[str, Any]:
    """SmolLM2-135M-Instruct (``reflectioncoder install-model smollm2-135m-instruct``) fine-tuned
    on a CPU: the paper's method and optimizer (block_mask ``tce``, CE + KL, AdamW 5e-5, cosine,
    5% warm-up), fp32, 8 samples per step, a few dozen steps (about a minute each on one busy
    core; bench/RESULTS.md)."""
    from reflectioncoder.install_model import default_folder

    return {
        "model": {
            "name_or_path": str(default_folder("smollm2-135m-instruct")),
            "dtype": "fp32",
            "gradient_checkpointing": False,
        },
        "data": {"files": [], "max_len": 2048},  # build-data samples: up to 1408 ids
        "mask": {"strategies": ["block_mask"], "block_order": "tce", "distill": True, "kl": True},
        "packing": {"max_tokens": 4096, "normalisation": "sample"},
        "optim": {"lr": 5e-5, "schedule": "cosine", "warmup_ratio": 0.05, "grad_clip": 1.0},
        "train": {"max_steps": 30, "samples_per_step": 8, "seed": 3407, "device": "cpu"},
        "distributed": {"backend": "none", "zero_stage": 0},
        # a step takes minutes on a CPU: a Ctrl-C loses at most 4 of them
        "checkpoint": {"out_dir": "runs/smollm2", "save_every": 4, "keep_last": 1},
        "logging": {"log_every": 1},
    }


PRESETS = {"tiny": tiny_preset, "paper": paper_preset, "smollm2": smollm2_preset}
