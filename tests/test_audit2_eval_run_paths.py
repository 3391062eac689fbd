"""`evaluate --model` without --json, on a model inside a run folder, keeps what it generated
and scored in RUN/eval/: the final model's under `samples-TASK.jsonl` / `result-TASK.json`, a
checkpoint's under names of its own, so that evaluating a checkpoint never replaces the final
model's samples and result (issue 11, item 7: generated samples go into the run folder; issue
23: evaluate a run's final model and its checkpoints)."""

from __future__ import annotations

import argparse

from reflectioncoder.eval.cli import add_arguments
from reflectioncoder.eval.request import EvalRequest


def _request(model, data_dir) -> EvalRequest:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--task", "humaneval", "--model", str(model), "--data-dir", str(data_dir)]
    return EvalRequest.from_args(parser.parse_args(argv))


def test_a_checkpoint_and_the_final_model_write_apart(tmp_path, shared_dir):
    run = tmp_path / "run"
    final, step = run / "final", run / "checkpoints" / "step-000004" / "model"
    for folder in (final, step):
        folder.mkdir(parents=True)
        for name in ("config.json", "tokenizer.json"):  # what from_args checks a model by
            (folder / name).write_text("{}")
    (run / "config.yaml").write_text("preset: tiny\n")
    data = shared_dir / "evaldata"
    at_final, at_step = _request(final, data), _request(step, data)
    assert at_final.samples_out() == run.resolve() / "eval" / "samples-humaneval.jsonl"
    assert at_final.result_out() == run.resolve() / "eval" / "result-humaneval.json"
    assert at_step.samples_out() == run.resolve() / "eval" / "samples-humaneval-step-000004.jsonl"
    assert at_step.result_out() == run.resolve() / "eval" / "result-humaneval-step-000004.json"
