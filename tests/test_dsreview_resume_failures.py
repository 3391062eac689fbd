"""--resume as a multi-GPU user hits it when something differs: a DeepSpeed checkpoint missing a
rank's optimizer file (a copy that left it out, another node's local disk) stops in one line
naming the ranks and what to do, where it converted half the state and failed with a reshape
error; a damaged one that fails to convert leaves no ``.tmp-universal`` behind; a config that
plans other steps names the setting that changed; another micro-batch size (packing.max_tokens)
continues as the uninterrupted run."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from test_distributed import TOLERANCE, _overrides, _rows
from test_resume_anywhere import SINGLE, _part, zero
from test_resume_anywhere import (
    test_resume_on_another_layout_continues_as_one_process as continues_as_one_process,
)

from reflectioncoder.cli import main
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train import restore
from reflectioncoder.train.restore import needs_conversion
from reflectioncoder.train.run_folder import LOCK_FILE

ZERO2_ON_2 = {"engine": "deepspeed", "zero_stage": 2, "world_size": 2}


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    sets = [f"data.files=[{data}]", f"checkpoint.out_dir={out}", "checkpoint.save_every=1",
            "train.max_steps=2", "logging.tensorboard=false", *extra]  # fmt: skip
    return ["train", "--preset", "tiny", "--no-progress", *(a for s in sets for a in ("--set", s))]


def _tree(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every folder, and every file but the lock (a launch writes its pid there) with its size
    and mtime."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        if p.is_file()
        else None
        for p in sorted(folder.rglob("*"))
        if p.name != LOCK_FILE
    }


def _as_zero2_on_2_ranks(step: Path, rank_files: dict[int, bytes]) -> None:
    """Make a one-process checkpoint read as DeepSpeed ZeRO-2 on 2 ranks wrote it, holding the
    optimizer files of ``rank_files`` only."""
    state = json.loads((step / "trainer_state.json").read_text())
    state["layout"] = ZERO2_ON_2
    (step / "trainer_state.json").write_text(json.dumps(state))
    folder = step / "deepspeed"
    folder.mkdir()
    # whole zip archives, as torch.save writes (what `runs` and --resume look at before a load)
    _whole_archive(folder / "mp_rank_00_model_states.pt", b"model states")
    for rank, data in rank_files.items():
        _whole_archive(folder / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", data)


def _whole_archive(file: Path, data: bytes) -> None:
    with zipfile.ZipFile(file, "w") as archive:
        archive.writestr("archive/data.pkl", data)


@pytest.fixture
def run(tmp_path, capsys) -> tuple[list[str], Path]:
    """A finished 2-step one-process run saving every step, and its argv."""
    data = write_toy_jsonl(tmp_path / "d.jsonl", 4)
    argv = _argv(data, tmp_path / "run")
    assert main(argv) == 0
    capsys.readouterr()
    return argv, tmp_path / "run" / "checkpoints"


def test_a_missing_rank_file_stops_in_one_line_touching_nothing(run, capsys):
    argv, checkpoints = run
    step = checkpoints / "step-000002"
    _as_zero2_on_2_ranks(step, {0: b"rank 0's"})
    before = _tree(checkpoints.parent)
    assert main([*argv, "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"reflectioncoder train: {step}: --resume: holds no optimizer state of rank(s) [1] of the "
        "2 that wrote it (no deepspeed/*zero_pp_rank_1_mp_rank_00_optim_states.pt): copy those "
        f"files into {step / 'deepspeed'} (a node-local disk holds its own ranks' files); or an "
        f"earlier one: --resume {checkpoints / 'step-000001'}"
    ], err
    assert _tree(checkpoints.parent) == before


def test_a_conversion_that_fails_leaves_the_checkpoint_as_it_was(run, capsys, monkeypatch):
    """DeepSpeed's universal conversion stopping on a damaged file once it has written part of
    its output (as it does on a rank's optimizer file cut short): one line, and no
    half-written .tmp-universal left in the checkpoint."""
    argv, checkpoints = run
    step = checkpoints / "step-000002"
    _as_zero2_on_2_ranks(step, {0: b"rank 0's", 1: b"rank 1's"})

    def converts_part(deepspeed_dir: Path, out: Path) -> None:
        (out / "zero" / "model.embed_tokens.weight").mkdir(parents=True)
        raise EOFError("Ran out of input")

    monkeypatch.setattr(restore, "convert_to_universal", converts_part)
    before = _tree(checkpoints.parent)
    assert main([*argv, "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"reflectioncoder train: {step}: --resume: cannot be read, a file in it is damaged (Ran "
        f"out of input); an earlier one: --resume {checkpoints / 'step-000001'}"
    ], err
    assert _tree(checkpoints.parent) == before


def test_a_config_that_plans_other_steps_names_what_changed(run, capsys):
    argv, checkpoints = run
    before = _tree(checkpoints.parent)
    assert main([*argv, "--set", "train.samples_per_step=3", "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed from the run's: train.samples_per_step 8 -> 3" in err[0], err
    assert _tree(checkpoints.parent) == before


def test_another_micro_batch_size_continues_as_the_uninterrupted_run(tmp_path, seed):
    """packing.max_tokens sets the micro-batches a step is cut into, not the step's samples:
    a resume with another continues with the same samples, tokens and losses."""
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 15, seed=seed, generation_fraction=0.2)
    common = ["train.max_steps=4", "train.epochs=2", *SINGLE]
    reference, moved = tmp_path / "reference", tmp_path / "moved"
    _part(_overrides(data, reference, seed, "sample") + common, False, None)
    _part(_overrides(data, moved, seed, "sample") + common, False, 2)
    _part(_overrides(data, moved, seed, "sample") + common + ["packing.max_tokens=450"], True, None)
    want, got = _rows(reference), _rows(moved)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for w, g in zip(want, got, strict=True):
        assert (g["samples"], g["tokens"]) == (w["samples"], w["tokens"]), g["step"]
        for key, rel, abs_ in TOLERANCE:
            assert g[key] == pytest.approx(w[key], rel=rel, abs=abs_), (g["step"], key)


@pytest.mark.slow  # torchrun launches of 2 and 3 ranks and a reference: ~60 s here
def test_zero3_on_ranks_that_do_not_divide_its_parameters(tmp_path, seed):
    """ZeRO-3 on 2 ranks resumed on 3: a parameter of 1024 elements is 3 partitions of 342, the
    last one padded past the end. DeepSpeed 0.19.8's full-parameter setters read past it
    ("start (684) + length (342) exceeds dimension size (1024)"); each rank now writes its
    padded share, and the run continues as one uninterrupted process."""
    continues_as_one_process(
        tmp_path, seed, (2, zero(3)), (3, zero(3)), "ZeRO-3 on 2 rank(s); this run is DeepSpeed "
        "ZeRO-3 on 3 rank(s)"
    )  # fmt: skip


@pytest.mark.slow  # torchrun launches of 2 ranks and a reference: ~60 s here
def test_zero2_resumed_on_the_same_ranks_with_the_optimizer_offloaded(tmp_path, seed):
    """Same ranks and stage, DeepSpeed's CPU Adam now: its native load took torch AdamW's param
    groups and stopped at the first step (KeyError 'bias_correction'); the layout records the
    offload, so the state is converted, and the run continues as one uninterrupted process."""
    continues_as_one_process(
        tmp_path, seed, (2, zero(2)), (2, [*zero(2), "distributed.offload_optimizer=true"]),
        "(offload_optimizer there: False, here: True): converting"
    )  # fmt: skip


def test_a_checkpoint_of_another_precision_or_offload_converts():
    """DeepSpeed names a bf16 run's ZeRO files apart (bf16_zero_pp_rank_*: an fp32 run on the
    same ranks looked for zero_pp_rank_* and stopped, file not found) and steps an offloaded
    one with CPU Adam: either recorded, a change converts; unrecorded is off."""
    zero1 = {"engine": "deepspeed", "zero_stage": 1, "world_size": 2}
    assert not needs_conversion(zero1, dict(zero1))
    assert not needs_conversion(dict(zero1, bf16=True), dict(zero1, bf16=True))
    assert needs_conversion(dict(zero1, bf16=True), zero1)
    assert needs_conversion(zero1, dict(zero1, offload_optimizer=True))
