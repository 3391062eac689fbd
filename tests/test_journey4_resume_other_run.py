"""`--resume PATH` naming a checkpoint of another run folder than checkpoint.out_dir (a forgotten
--set checkpoint.out_dir, the config's default folder): one line naming the run the checkpoint
belongs to and the setting that resumes it. It said the checkpoint 'has no tokenizer beside
it', pointing at OUT/tokenizer of the folder it was not in."""

from __future__ import annotations

from reflectioncoder.cli import main

DATA = "tests/data/reflection_small.jsonl"


def run_argv(out, *extra, steps=1):
    """`train` of the tiny preset on the fixture, a checkpoint every step, no tracker."""
    return ["train", "--preset", "tiny", "--set", f"data.files=[{DATA}]", "--no-progress",
            "--set", f"checkpoint.out_dir={out}", "--set", f"train.max_steps={steps}",
            "--set", "checkpoint.save_every=1", "--set", "logging.report_to=[none]",
            *extra]  # fmt: skip


def test_a_checkpoint_of_another_run_names_that_run(tmp_path, capsys):
    run, other = tmp_path / "run", tmp_path / "other"
    assert main(run_argv(run)) == 0
    step = run / "checkpoints" / "step-000001"
    capsys.readouterr()
    assert main(run_argv(other, "--resume", str(step))) == 1
    assert capsys.readouterr().err == (
        f"reflectioncoder train: {step}: --resume: a checkpoint of the run {run}, not of "
        f"checkpoint.out_dir {other}: set checkpoint.out_dir={run} (a copy of that folder "
        "resumes too)\n"
    )
    assert not other.exists()
    # the same checkpoint from its own folder resumes (a finished run: nothing to do)
    assert main(run_argv(run, "--resume", str(step))) == 0
