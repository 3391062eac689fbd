"""``reflectioncoder runs RUN`` lists the scores ``evaluate`` wrote into the run (RUN/eval/, of
its final model or a checkpoint's), as the evaluation printed them (percentages): a user
inspecting runs saw the checkpoints and had to open each result JSON for its pass@k."""

from __future__ import annotations

from reflectioncoder.cli import main

SAMPLES = "../shared/reference-samples/ReflectionCoder-CL-7B/humaneval.jsonl"


def test_runs_lists_the_runs_evaluations(tmp_path, capsys):
    run = tmp_path / "run"  # a run folder as train leaves it (the parts `runs` reads)
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    result = run / "eval" / "result-humaneval.json"
    argv = ["evaluate", "--task", "humaneval", "--samples", SAMPLES, "--limit", "4"]
    assert main([*argv, "--json", str(result), "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    scored = {line.split()[0]: line.split()[1] for line in printed[1:3]}  # HumanEval, HumanEval+
    (run / "eval" / "result-mbpp-step-000002.json").write_text('{"scores": ')  # a kill's
    assert main(["runs", str(run)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[2:4] == [
        f"evaluated eval/result-humaneval.json: HumanEval pass@1 {scored['HumanEval']}, "
        f"HumanEval+ pass@1 {scored['HumanEval+']} (4 tasks)",
        "evaluated eval/result-mbpp-step-000002.json: not a whole result file",
    ], listed
