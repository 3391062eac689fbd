"""Loading a checkpoint into FSDP2's shards (``train/fsdp_load.py``), over 2 gloo ranks on the CPU.

A tiny Llama saved with ``save_pretrained`` (safetensors, several files) is built on the meta
device and each rank reads its own rows once sharded. Its shards hold exactly the values the
whole-model path gives the same model saved as ``pytorch_model.bin`` (which still loads whole
on every rank): bf16 and fp32, tied and untied heads, the special-token rows (embedding rows
split unevenly over the ranks) and RoPE's buffer included. No tensor larger than a rank's
largest shard is ever made during the load (while the whole-model path makes whole ones). A
short run from that load logs the whole-model path's losses exactly, and a relaunch resumes its
checkpoint (the DCP shards override the loaded ones) as the uninterrupted run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import REPO_ROOT, _overrides, _rows
from test_fsdp_engine import STANDALONE, _same_rows, _torchrun, leave
from test_zero3_load import save_model

from reflectioncoder.testing.toy_jsonl import write_toy_jsonl

FSDP = ["distributed.backend=fsdp", "train.epochs=1"]
RoPE_BUFFERS = ("inv_freq", "original_inv_freq")
EXACT = [(key, 0.0, 0.0) for key in ("loss", "ce", "teacher_ce", "kl", "grad_norm")]


def _both_formats(folder: Path, seed: int, *, tied: bool, stored: torch.dtype) -> dict:
    """The same model saved as safetensors and as pytorch_model.bin."""
    for name in ("safetensors", "bin"):
        save_model(folder / name, seed, tied=tied, dtype=stored, pickled=name == "bin")
    return {"new": str(folder / "safetensors"), "old": str(folder / "bin")}


def _run(data: Path, out: Path, seed: int, model: str, dtype: str) -> list[str]:
    return (
        _overrides(data, out, seed, "sample")
        + FSDP
        + [
            f"model.name_or_path={model}",
            f"model.dtype={dtype}",
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "tied, stored, dtype",
    [(False, torch.float32, "bf16"), (True, torch.bfloat16, "fp32")],
    ids=["untied-fp32-to-bf16", "tied-bf16-to-fp32"],
)
def test_each_rank_reads_only_its_shards_and_holds_the_whole_model_paths_values(
    tmp_path, seed, tied, stored, dtype
):
    folders = _both_formats(tmp_path, seed, tied=tied, stored=stored)
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 6, seed=seed, generation_fraction=0.2)
    spec = {
        path: _run(data, tmp_path / f"run-{path}", seed, folders[path], dtype)
        for path in ("new", "old")
    }
    ranks = _launch({"compare": spec})
    print(json.dumps([{k: r[k] for k in ("rank", "largest", "largest_shard", "largest_param")}
                      for r in ranks]))  # fmt: skip
    for rank in ranks:
        assert rank["differ"] == [], rank  # every parameter's shard and every buffer, bitwise
        assert rank["masters"] == ["torch.float32"], rank  # fp32 masters of the dtype's values
        rope = {f"model.model.rotary_emb.{n}": "torch.float32" for n in RoPE_BUFFERS}
        assert rank["buffers"] == rope, rank  # computed (never left on meta), fp32
        # the embedding table (307 rows, the special tokens' 7 included) split 154 / 153
        assert rank["rows"] == (154 if rank["rank"] == 0 else 153), rank
        assert rank["tied"] == tied, rank
        # never more than this rank's largest (padded) shard, and never a whole parameter
        assert rank["largest"]["new"] <= rank["largest_shard"] < rank["largest_param"], rank
        # the whole-model path does make whole ones: what the measure is there to catch
        assert rank["largest"]["old"] >= rank["largest_param"], rank
    assert "each rank reads only its shards" in ranks[0]["log"]["new"]
    assert "has no safetensors weights: each rank loads the whole model" in ranks[0]["log"]["old"]


@pytest.mark.slow
def test_a_run_from_the_sharded_load_logs_the_whole_model_paths_losses(tmp_path, seed):
    folders = _both_formats(tmp_path, seed, tied=False, stored=torch.float32)
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 15, seed=seed, generation_fraction=0.2)
    for path in ("old", "new"):
        overrides = _run(data, tmp_path / path, seed, folders[path], "bf16")
        _torchrun({"overrides": overrides, "resume": False, "stop": None})
    old, new = _rows(tmp_path / "old"), _rows(tmp_path / "new")
    _same_rows(old, new, EXACT)  # the same shards, the same steps: the same losses, exactly
    assert len(new) >= 2 and new[-1]["loss"] != new[0]["loss"]  # it really trained


@pytest.mark.slow
def test_a_relaunch_resumes_over_the_sharded_load(tmp_path, seed):
    folders = _both_formats(tmp_path, seed, tied=True, stored=torch.float32)
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 15, seed=seed, generation_fraction=0.2)
    reference, moved = tmp_path / "reference", tmp_path / "moved"
    _torchrun({"overrides": _run(data, reference, seed, folders["new"], "fp32"),
               "resume": False, "stop": None})  # fmt: skip
    overrides = _run(data, moved, seed, folders["new"], "fp32")
    _torchrun({"overrides": overrides, "resume": False, "stop": 2})
    log = _torchrun({"overrides": overrides, "resume": True, "stop": None})
    assert "at step 2" in log and "each rank reads only its shards" in log
    want, got = _rows(reference), _rows(moved)
    assert len(want) > 2
    _same_rows(want, got, EXACT)


def _launch(spec: dict) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    args += [*STANDALONE, __file__, json.dumps(spec)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert sorted(r["rank"] for r in ranks) == [0, 1], proc.stdout
    return ranks


class LargestTensor:
    """The most elements any storage an op reads or writes holds (a DTensor's: its local
    shard's), meta tensors aside: a whole parameter made or read anywhere shows here."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        seen = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in torch.utils._pytree.tree_leaves((args, kwargs, out)):
                    seen.note(t)
                return out

        self.largest = 0
        self.mode = Mode()

    def note(self, t) -> None:
        from torch.distributed.tensor import DTensor

        if isinstance(t, DTensor):
            t = t._local_tensor
        # Byte views (of what file reads fill) count through the tensors they view.
        if isinstance(t, torch.Tensor) and not t.is_meta and t.dtype != torch.uint8:
            self.largest = max(self.largest, t.untyped_storage().nbytes() // t.itemsize)


def _compare(spec: dict) -> None:
    """One rank: a Trainer on each path (the meta build first), the largest storage each made
    while it started, then every parameter's local shard and every buffer compared."""
    import logging

    from reflectioncoder.config_loader import load_config
    from reflectioncoder.train.trainer import Trainer

    logs: dict[str, list[str]] = {}

    class Keep(logging.Handler):
        def emit(self, record):
            logs.setdefault(current, []).append(record.getMessage())

    logging.getLogger("reflectioncoder").addHandler(Keep())
    logging.getLogger("reflectioncoder").setLevel(logging.INFO)
    trainers, largest = {}, {}
    for current in ("new", "old"):
        measure = LargestTensor()
        with measure.mode:
            trainers[current] = Trainer(load_config(base="tiny", overrides=spec[current]))
        largest[current] = measure.largest
    new, old = (trainers[p].engine.module for p in ("new", "old"))
    differ = []
    for (name, a), (_, b) in zip(new.named_parameters(), old.named_parameters(), strict=True):
        if a.dtype != b.dtype or not torch.equal(a.to_local(), b.to_local()):
            differ.append(name)
    for (name, a), (_, b) in zip(new.named_buffers(), old.named_buffers(), strict=True):
        if a.dtype != b.dtype or not torch.equal(a, b):
            differ.append(name)
    params = list(new.parameters())
    embedding = trainers["new"].model.get_input_embeddings().weight
    info = trainers["new"].info
    report = {
        "rank": info.rank,
        "differ": differ,
        "masters": sorted({str(p.to_local().dtype) for p in params}),
        "buffers": {name: str(b.dtype) for name, b in new.named_buffers()},
        "rows": embedding.to_local().shape[0],
        "tied": trainers["new"].model.get_output_embeddings().weight is embedding,
        "largest": largest,
        "largest_shard": max(math.ceil(p.shape[0] / 2) * math.prod(p.shape[1:]) for p in params),
        "largest_param": max(p.numel() for p in params),
        "log": {path: "\n".join(lines) for path, lines in logs.items()},
    }
    ranks = [None] * info.world_size  # one line from rank 0: the ranks' prints would interleave
    torch.distributed.all_gather_object(ranks, report)
    if info.is_main:
        print("\n".join(json.dumps(r) for r in ranks), flush=True)
    for trainer in trainers.values():
        trainer.close()


if __name__ == "__main__":  # one rank under torchrun
    _compare(json.loads(sys.argv[1])["compare"])
    leave()  # the results printed and both trainers closed: no interpreter teardown
