"""Loading a model straight into ZeRO-3 partitions (``model.load_model_into_partitions``): every
rank's piece of every parameter, special-token rows included, holds exactly the values of the
unpartitioned path (``load_model`` + ``add_special_token_embeddings``), bit for bit: pieces cut
anywhere (a special-token row split between two, the last one padded), checkpoints in another
dtype, tied heads, sharded checkpoints, and a vocabulary padded past the tokenizer; and for real
with 2 gloo ranks under DeepSpeed, through the trainer's ``build_model``."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reflectioncoder.data.tokenize import add_special_tokens
from reflectioncoder.model import (
    add_special_token_embeddings,
    build_tiny_llama,
    load_model,
    load_model_into_partitions,
)
from reflectioncoder.tokenizer import train_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
TEXTS = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200)]


def save_model(folder: Path, seed: int, *, tied: bool, dtype: torch.dtype, extra_rows: int = 0):
    """A tiny Llama saved with its tokenizer; ``extra_rows``: vocabulary padded past it."""
    tok = train_tokenizer(TEXTS, vocab_size=300)
    model = build_tiny_llama(
        len(tok) + extra_rows, hidden_size=32, intermediate_size=48, tie_word_embeddings=tied,
        seed=seed,
    )  # fmt: skip
    model.config._attn_implementation = "sdpa"
    model.to(dtype).save_pretrained(str(folder), max_shard_size="40KB")  # several shards
    tok.save_pretrained(str(folder))
    return tok


def reference(folder: Path, tokenizer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The unpartitioned path's parameters (what one process trains from)."""
    model = load_model(folder, dtype=dtype)
    add_special_token_embeddings(model, tokenizer, add_special_tokens(tokenizer))
    return dict(model.named_parameters())


@pytest.mark.parametrize(
    "tied, stored, dtype, extra_rows",
    [
        (False, torch.float32, torch.float32, 0),
        (True, torch.bfloat16, torch.float32, 0),
        (False, torch.float32, torch.bfloat16, 5),
    ],
    ids=["untied-fp32", "tied-bf16-to-fp32", "fp32-to-bf16-padded-vocab"],
)
def test_pieces_hold_the_unpartitioned_values(tmp_path, seed, tied, stored, dtype, extra_rows):
    tok = save_model(tmp_path, seed, tied=tied, dtype=stored, extra_rows=extra_rows)
    want = reference(tmp_path, copy.deepcopy(tok), dtype)
    # Pieces of 3205 elements: a boundary falls inside the first special-token row of the
    # (307, 32) tables (element 9615: row 300.5), and the last piece is padded.
    size = 3205
    got: dict[str, list[torch.Tensor]] = {}
    for k in range(math.ceil(max(p.numel() for p in want.values()) / size)):
        pieces = []

        def piece(param, k=k, pieces=pieces):
            pieces.append(torch.full((size,), float("nan"), dtype=param.dtype))
            return pieces[-1], k * size

        grown = copy.deepcopy(tok)
        model, ids = load_model_into_partitions(
            tmp_path,
            grown,
            add_special_tokens(grown),
            dtype=dtype,
            partition_context=contextlib.nullcontext(),
            local_piece=piece,
        )
        for (name, _), p in zip(model.named_parameters(), pieces, strict=True):
            got.setdefault(name, []).append(p)
    assert got.keys() == want.keys()
    for name, param in want.items():
        flat = torch.cat(got[name])[: param.numel()]
        assert flat.dtype == param.dtype
        assert torch.equal(flat, param.detach().reshape(-1)), name
    head = model.get_output_embeddings().weight
    assert (head is model.get_input_embeddings().weight) == tied
    assert max(ids.values()) < want["model.embed_tokens.weight"].shape[0]


def _child(spec: dict) -> None:
    """One rank: the trainer's build under ZeRO-3, then each parameter gathered and compared to
    the unpartitioned path's, bitwise. Prints one JSON line per rank."""
    from transformers import AutoTokenizer

    from reflectioncoder.config import load_config
    from reflectioncoder.train import distributed
    from reflectioncoder.train.trainer import build_model

    info = None
    report = []
    for case in spec["cases"]:
        cfg = load_config(
            base="tiny",
            overrides=[
                f"model.name_or_path={case['folder']}",
                f"model.dtype={case['dtype']}",
                "data.files=[unused.jsonl]",
                "distributed.backend=deepspeed",
                "distributed.zero_stage=3",
            ],
        )
        info = info or distributed.setup(cfg.distributed, spec.get("device", "cpu"))
        dtype = distributed.resolve_dtype(cfg.model.dtype, info.device)
        tokenizer = AutoTokenizer.from_pretrained(case["folder"])
        model = build_model(cfg, copy.deepcopy(tokenizer), dtype, info)
        want = reference(Path(case["folder"]), tokenizer, dtype)
        whole = [name for name, p in model.named_parameters() if p.numel()]
        local = sum(p.ds_tensor.numel() for p in model.parameters())
        half = sum(math.ceil(p.ds_numel / info.world_size) for p in model.parameters())
        devices = sorted({str(p.ds_tensor.device) for p in model.parameters()})
        differ = []
        for name, param in model.named_parameters():
            with distributed.gathered_params(param, modifier_rank=None):
                if not torch.equal(param.detach().cpu(), want[name].detach()):
                    differ.append(name)
        report.append(
            {"whole": whole, "differ": differ, "local": local, "half": half, "on": devices}
        )
    print(json.dumps({"rank": info.rank, "cases": report}), flush=True)
    distributed.shutdown()


def test_two_ranks_load_their_pieces_of_the_checkpoint(tmp_path, seed):
    cases = []
    for name, tied, stored, dtype in (
        ("untied", False, torch.float32, "bf16"),
        ("tied", True, torch.bfloat16, "fp32"),
    ):
        save_model(tmp_path / name, seed, tied=tied, dtype=stored)
        cases.append({"folder": str(tmp_path / name), "dtype": dtype})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    args += ["--standalone", __file__, json.dumps({"cases": cases})]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    for k in range(len(cases)):
        for got in (r["cases"][k] for r in ranks):
            assert got["whole"] == [] and got["differ"] == [], got  # partitioned, exact
            assert got["local"] == got["half"] > 0  # each rank holds its half, no more


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
