"""`reflectioncoder runs` on a run stopped before its first checkpoint (Ctrl-C at step 4 of a
run saving every 50) said `FOLDER: holds no checkpoints and no final model` and exited 2, as for
a typo: a user asking what is left of the run now reads how far it got and what --resume does."""

from __future__ import annotations

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer


def test_runs_names_the_steps_of_a_run_that_saved_nothing(tmp_path, capsys):
    data = write_toy_jsonl(tmp_path / "data.jsonl", 4, seed=0)
    train_tokenizer([data.read_text()], 300, tmp_path / "tok")
    out = tmp_path / "run"
    sets = {"data.files": f"[{data}]", "model.tokenizer": tmp_path / "tok"}
    sets.update({"checkpoint.out_dir": out, "train.max_steps": 2, "train.samples_per_step": 1})
    sets.update({"checkpoint.save_every": 0, "checkpoint.save_final": False})
    sets.update({"logging.report_to": "[none]"})
    assert main(train_argv(sets, "--no-progress")) == 0
    assert not (out / "checkpoints").exists() and not (out / "final").exists()
    capsys.readouterr()
    assert main(["runs", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{out}: a run that logged 2 step(s) (last loss ")
    assert printed[0].endswith("and saved no checkpoint (checkpoint.save_every: 0)")
    assert printed[1] == "--resume: no resumable checkpoint (a resumed run starts from step 0)"
