"""Reflection-data construction: problems, mutations, real sandboxed feedback, jsonl, CLI."""

from __future__ import annotations

import ast
import json
import random

import pytest
from reference.construct import structure_errors

from reflectioncoder.construct.backend import (
    Backend,
    Draft,
    MutationBackend,
    OpenAIBackend,
    describe_failure,
    failing_test,
    split_reply,
)
from reflectioncoder.construct.build import (
    BuildStats,
    build_dataset,
    reflection_sample,
    write_jsonl,
)
from reflectioncoder.construct.execute import run_program
from reflectioncoder.construct.mutate import KINDS, apply_mutations, site_kinds
from reflectioncoder.construct.problems import generate_problems
from reflectioncoder.testing.http_stub import JsonHandler, serving

FENCE = "```python\n"


def _answer_code(sample: dict) -> str:
    text = sample["messages"][3]["content"][0]["content"]
    assert text.startswith(FENCE) and text.endswith("\n```"), text
    return text[len(FENCE) : -len("\n```")]


def test_problems_are_distinct_and_well_formed(seed: int) -> None:
    problems = generate_problems(seed)
    assert len(problems) >= 300
    assert len({p.entry_point for p in problems}) == len(problems)
    assert len({p.task_id for p in problems}) == len(problems)
    for p in random.Random(seed).sample(problems, 40):
        (fn,) = ast.parse(p.solution).body
        assert isinstance(fn, ast.FunctionDef) and fn.name == p.entry_point
        prompt_fn = ast.parse(p.prompt + "    ...\n").body[0]
        assert prompt_fn.name == p.entry_point and ast.get_docstring(prompt_fn)
        assert len(p.tests) == 3 and len({t.call for t in p.tests}) == 3
        assert p.instruction().endswith(p.prompt.strip())
        assert p.tests[0].assertion() in p.instruction("mbpp")
    # A different seed shuffles the same templates, and draws other test inputs.
    other = generate_problems(seed + 1)
    assert {p.entry_point for p in other} == {p.entry_point for p in problems}
    with pytest.raises(ValueError, match="n:"):
        generate_problems(seed, n=len(problems) + 1)
    with pytest.raises(ValueError, match="style"):
        problems[0].instruction("plain")


def test_reference_solutions_pass_their_tests_in_the_sandbox(seed: int) -> None:
    for p in random.Random(seed).sample(generate_problems(seed), 4):
        run = run_program(p.test_program(p.solution))
        assert run.passed and not run.timed_out, (p.task_id, run.output)
        assert run.output == "All tests passed."


def test_mutations_change_the_code_and_name_the_edit(seed: int) -> None:
    rng = random.Random(seed)
    problems = generate_problems(seed)
    seen = set()
    for p in problems:
        seen.update(site_kinds(p.solution))
    assert seen == set(KINDS)
    for p in rng.sample(problems, 30):
        kinds = site_kinds(p.solution)
        site = rng.randrange(len(kinds))
        mutant = apply_mutations(p.solution, [site])
        assert mutant.code != p.solution
        ast.parse(mutant.code)
        (edit,) = mutant.edits
        assert edit.kind == kinds[site]
        solution_lines = [line.strip() for line in p.solution.splitlines()]
        mutant_lines = [line.strip() for line in mutant.code.splitlines()]
        assert edit.correct and all(line.strip() in solution_lines for line in edit.correct)
        assert all(line.strip() in mutant_lines for line in edit.wrong)
        # Reverting (no sites) gives the reference back.
        assert apply_mutations(p.solution, []).code == p.solution
    with pytest.raises(ValueError, match="sites"):
        apply_mutations(problems[0].solution, [len(site_kinds(problems[0].solution))])


def test_reflection_sample_holds_real_execution_feedback(seed: int) -> None:
    rng = random.Random(seed)
    problem = rng.choice(generate_problems(seed))
    stats = BuildStats()
    sample = reflection_sample(problem, MutationBackend(two_bug_rate=0.5), rng, stats=stats)
    assert sample is not None, stats.rejected
    assert structure_errors(sample) == []
    body = sample["messages"][1]["content"]
    assert [b["type"] for b in body] == ["text", "code", "execution"] * (len(body) // 3)
    assert 2 <= len(body) // 3 <= 4
    codes = [b["content"] for b in body if b["type"] == "code"]
    executions = [b["content"] for b in body if b["type"] == "execution"]
    # Each execution block is what running its code block prints: run them again.
    for code, execution in zip(codes, executions, strict=True):
        assert run_program(code).output == execution
    assert "Error" in executions[0] and "Traceback" in executions[0]
    assert all("All tests passed." not in e for e in executions[:-1])
    assert executions[-1] == "All tests passed."
    # The reflection quotes what the failure showed, and the one-off answer passes.
    first_reflection = body[3]["content"]
    last_line = executions[0].splitlines()[-1]
    got = last_line.removeprefix("AssertionError: got ")
    assert last_line in first_reflection or got in first_reflection
    answer = _answer_code(sample)
    assert answer == problem.solution
    assert codes[-1] == problem.test_program(answer).rstrip("\n")
    assert run_program(problem.test_program(answer)).passed
    assert sample["construct"]["rounds"] == len(codes) - 1


def test_built_dataset_loads_with_the_data_loader(tmp_path, seed: int) -> None:
    from reflectioncoder.data.schema import load_jsonl

    samples, stats = build_dataset(8, seed, workers=4, generation_fraction=0.5)
    path = write_jsonl(samples, tmp_path / "sub" / "data.jsonl")
    loaded = load_jsonl(path)
    assert len(loaded) == 8
    assert sum(s.type == "generation" for s in loaded) == 4 == stats.generation
    assert sum(s.is_reflection for s in loaded) == 4 == stats.reflection
    for sample in samples:
        assert structure_errors(sample) == []
    assert stats.executions >= 2 * stats.reflection
    # The same seed gives the same file, whatever the number of workers.
    again, _ = build_dataset(8, seed, workers=2, generation_fraction=0.5)
    for a, b in zip(again, samples, strict=True):
        blocks = [
            (x, y)
            for m, n in zip(a["messages"], b["messages"], strict=False)
            for x, y in zip(m["content"], n["content"], strict=False)
            if x != y
        ]
        assert a == b, blocks


def test_failing_test_is_found_from_the_traceback_line() -> None:
    problem = generate_problems(0)[0]
    program = problem.test_program(problem.solution)
    lines = program.splitlines()
    line = lines.index(problem.tests[1].checked_assertion()) + 1
    output = f'Traceback (most recent call last):\n  File "main.py", line {line}, in <module>\n'
    output += "AssertionError: got 12345"
    assert failing_test(problem, program, output) == problem.tests[1]
    assert failing_test(problem, program, "no traceback") is None
    from reflectioncoder.construct.execute import Execution

    text = describe_failure(problem, program, Execution(output, False, False, 1))
    assert problem.tests[1].call in text and "12345" in text


class _ScriptedBackend:
    """A backend that hands out the drafts it was given, in order."""

    name = "scripted"

    def __init__(self, drafts: list[Draft]) -> None:
        self.drafts = list(drafts)

    def attempt(self, problem, rng):
        return self.drafts.pop(0)

    def reflect(self, problem, history, rng):
        return self.drafts.pop(0)


def test_timeout_is_real_feedback(seed: int) -> None:
    problem = random.Random(seed).choice(generate_problems(seed))
    looping = problem.solution.replace(":\n", ":\n    while True:\n        pass\n", 1)
    backend = _ScriptedBackend([Draft("Try.", looping), Draft("Fixed.", problem.solution)])
    sample = reflection_sample(problem, backend, random.Random(seed), timeout_s=1.0)
    assert sample is not None
    first = sample["messages"][1]["content"][2]["content"]
    assert "TimeoutError" in first and "1 seconds" in first


def test_special_token_strings_are_rejected(seed: int) -> None:
    problem = random.Random(seed).choice(generate_problems(seed))
    broken = problem.solution.replace(":\n", ":\n    raise ValueError('bug')\n", 1)
    backend = _ScriptedBackend(
        [Draft("Try <|code|> this.", broken), Draft("Fixed.", problem.solution)]
    )
    stats = BuildStats()
    assert (
        reflection_sample(problem, backend, random.Random(seed), max_attempts=1, stats=stats)
        is None
    )
    assert stats.rejected["special-token string in content"] == 1


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="n:"):
        build_dataset(-1, 0)
    with pytest.raises(ValueError, match="workers"):
        build_dataset(1, 0, workers=0)
    with pytest.raises(ValueError, match="generation_fraction"):
        build_dataset(1, 0, generation_fraction=1.5)
    with pytest.raises(ValueError, match="two_bug_rate"):
        MutationBackend(two_bug_rate=2.0)
    with pytest.raises(ValueError, match="base_url"):
        OpenAIBackend("localhost:8000", "m")
    with pytest.raises(ValueError, match="reply"):
        split_reply("no code here")


def test_cli_build_data(tmp_path, seed: int) -> None:
    from reflectioncoder.cli import main

    out = tmp_path / "d.jsonl"
    argv = ["build-data", "--out", str(out), "--n", "3", "--seed", str(seed), "--workers", "3"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(structure_errors(r) == [] for r in rows)
    assert main(["build-data", "--out", str(out), "--n", "-1"]) == 2
    assert main(["build-data", "--out", str(out), "--n", "1", "--workers", "0"]) == 2
    assert main(["build-data", "--out", str(out), "--n", "1", "--backend", "openai"]) == 2


def test_openai_backend_against_a_local_stub(seed: int) -> None:
    rng = random.Random(seed)
    problem = rng.choice(generate_problems(seed))
    kinds = site_kinds(problem.solution)
    for _ in range(10):  # a mutant that really fails (some mutants are equivalent)
        buggy = apply_mutations(problem.solution, [rng.randrange(len(kinds))]).code
        run = run_program(problem.test_program(buggy))
        if not run.passed:
            break
    else:
        pytest.skip("ten drawn mutants all passed their tests")
    replies = [
        f"Here is my attempt.\n```python\n{buggy}\n```",
        f"The output shows the bug; fixed:\n```python\n{problem.solution}\n```",
        f"```python\n{problem.solution}\n```",  # stage 2: the one-off answer
    ]
    requests: list[dict] = []

    class Handler(JsonHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.read_json()
            requests.append(
                {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
            )
            self.reply({"choices": [{"message": {"role": "assistant", "content": replies.pop(0)}}]})

    with serving(Handler, threaded=False) as base:
        backend = OpenAIBackend(base + "/v1", "stub-model", api_key="k")
        assert isinstance(backend, Backend) and isinstance(MutationBackend(), Backend)
        sample = reflection_sample(problem, backend, rng, max_attempts=1)
    assert sample is not None and structure_errors(sample) == []
    assert [r["path"] for r in requests] == ["/v1/chat/completions"] * 3
    assert all(r["auth"] == "Bearer k" and r["body"]["model"] == "stub-model" for r in requests)
    body = sample["messages"][1]["content"]
    assert body[0]["content"] == "Here is my attempt."
    assert body[2]["content"] == run.output  # the real feedback ...
    assert run.output in requests[1]["body"]["messages"][-1]["content"]  # ... went to the model
    assert body[-1]["content"] == "All tests passed."
    assert _answer_code(sample).strip() == problem.solution.strip()
    assert sample["construct"]["final_passed"] is True
    stage2 = requests[2]["body"]["messages"]
    assert stage2[-1]["role"] == "user" and problem.instruction() in stage2[-1]["content"]
    assert stage2[-2]["role"] == "assistant"  # the passing fix, then the problem again


def test_with_two_bugs_the_reflection_fixes_the_one_the_failure_shows() -> None:
    from reflectioncoder.construct.backend import Turn

    problem = next(p for p in generate_problems(0) if p.entry_point == "fibonacci")
    kinds = site_kinds(problem.solution)
    edits = {i: apply_mutations(problem.solution, [i]).edits[0] for i in range(len(kinds))}
    loop = next(i for i, e in edits.items() if e.wrong == ("for _ in range(n + 1):",))
    ret = next(i for i, e in edits.items() if e.wrong == ("return n",))
    # `return n` hides the loop's bug: every failure shows n, whatever the loop computes.
    mutant = apply_mutations(problem.solution, [loop, ret])
    program = problem.test_program(mutant.code)
    draft = Draft("Try.", mutant.code, {"sites": mutant.sites, "edits": mutant.edits})
    turn = Turn(draft, program, run_program(program))
    assert not turn.execution.passed
    fix = MutationBackend().reflect(problem, [turn], random.Random(0))
    assert "`return n`" in fix.text and "`return a`" in fix.text
    assert fix.meta["sites"] == (loop,)
    assert fix.code == apply_mutations(problem.solution, [loop]).code
