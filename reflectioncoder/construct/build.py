"""Assemble ReflectionSeq samples (SPEC §1) by really executing every attempt, and write jsonl.

A reflection sample is: the instruction; the reflection sequence (text, code, execution, then
per round a reflection text, the fixed code and its execution); the instruction again; the
one-off answer in a python fence. Execution blocks hold what the sandbox printed.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from reflectioncoder.construct.backend import Backend, Draft, MutationBackend, Turn
from reflectioncoder.construct.execute import Execution, run_tests
from reflectioncoder.construct.problems import Problem, generate_problems
from reflectioncoder.data.special import SPECIAL_TOKENS
from reflectioncoder.errors import UserError, atomic_write_text, ctrl_c_to_main_thread

STYLES = ("humaneval", "mbpp")


@dataclass
class BuildStats:
    """What a build did: samples written per type, attempts rejected and why, executions run."""

    reflection: int = 0
    generation: int = 0
    executions: int = 0
    rejected: Counter = field(default_factory=Counter)
    rounds: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        rounds = ", ".join(f"{k} round(s): {v}" for k, v in sorted(self.rounds.items()))
        rejected = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected.items())) or "none"
        return (
            f"{self.reflection} reflection + {self.generation} generation samples, "
            f"{self.executions} sandboxed runs in {self.seconds:.1f} s; {rounds}; "
            f"rejected attempts: {rejected}"
        )


def _text(content: str) -> dict:
    return {"type": "text", "content": content}


def answer_block(code: str) -> dict:
    """The one-off answer: the code in a python fence (SPEC §1, message 4)."""
    return _text(f"```python\n{code.rstrip()}\n```")


def has_special_token(sample: dict) -> bool:
    """True when any content holds one of SPEC's seven special-token strings (a bad sample)."""
    return any(
        special in block["content"]
        for message in sample["messages"]
        for block in message["content"]
        for special in SPECIAL_TOKENS
    )


def generation_sample(problem: Problem, style: str) -> dict:
    """A plain instruction sample (``type: generation``): instruction -> answer."""
    return {
        "type": "generation",
        "task_id": problem.task_id,
        "messages": [
            {"role": "user", "content": [_text(problem.instruction(style))]},
            {"role": "assistant", "content": [answer_block(problem.solution)]},
        ],
    }


def reflection_sample(
    problem: Problem,
    backend: Backend,
    rng: random.Random,
    style: str = "humaneval",
    max_rounds: int = 3,
    max_attempts: int = 6,
    timeout_s: float = 5.0,
    stats: BuildStats | None = None,
    redraw_passing: bool = True,
) -> dict | None:
    """One reflection sample for ``problem``, or None when no attempt led to a passing fix.

    Stage 1: the first attempt must fail when run with the tests (an attempt that passes is
    redrawn, up to ``max_attempts``); then the backend reflects on the real output until the
    code passes, for at most ``max_rounds`` rounds. Stage 2: the backend answers the problem
    again in one block (message 4), which is run too: ``construct.final_passed``.
    ``redraw_passing=False``: a first attempt that passes is kept (a sample with 0 rounds), as a
    model's correct first answer is in the paper's pipeline.
    """
    stats = stats if stats is not None else BuildStats()

    def run(draft: Draft) -> Turn:
        stats.executions += 1 + draft.meta.get("runs", 0)  # with the backend's own runs
        program = problem.test_program(draft.code)
        return Turn(draft, program, run_tests(problem, draft.code, timeout_s=timeout_s))

    for _ in range(max_attempts):
        history = [run(backend.attempt(problem, rng))]
        if history[-1].execution.passed and redraw_passing:
            stats.rejected["first attempt passed"] += 1
            continue
        while not history[-1].execution.passed and len(history) <= max_rounds:
            history.append(run(backend.reflect(problem, history, rng)))
        if not history[-1].execution.passed:
            stats.rejected["never passed"] += 1
            continue
        # Stage 2: the problem again, answered in one standalone block, which runs too.
        answer = history[-1].draft
        if hasattr(backend, "answer"):
            answer = backend.answer(problem, history, rng)
        if answer.code == history[-1].draft.code:
            final = history[-1].execution  # the same program: its run already decided it
        else:
            final = run_tests(problem, answer.code, timeout_s=timeout_s)
            stats.executions += 1
        sample = _reflection_record(problem, backend.name, style, history, answer, final)
        if has_special_token(sample):
            stats.rejected["special-token string in content"] += 1
            continue
        stats.rounds[len(history) - 1] += 1
        stats.kinds.update(sample["construct"]["mutations"])
        return sample
    return None


def _reflection_record(
    problem: Problem,
    backend_name: str,
    style: str,
    history: list[Turn],
    answer: Draft,
    final: Execution,
) -> dict:
    """The SPEC §1 sample: the instruction, the reflection sequence (each turn's text, unless it
    has none, its program and real output), the instruction again and the one-off answer; how it
    was made."""
    body = []
    for turn in history:
        if turn.draft.text.strip():  # a reply that opens with its code has no text block
            body.append(_text(turn.draft.text))
        body += [
            {"type": "code", "content": turn.program.rstrip("\n")},
            {"type": "execution", "content": turn.execution.output},
        ]
    instruction = problem.instruction(style)
    return {
        "type": "reflection",
        "task_id": problem.task_id,
        "construct": {
            "backend": backend_name,
            "mutations": [e.kind for e in history[0].draft.meta.get("edits", ())],
            "rounds": len(history) - 1,
            "final_passed": final.passed,
        },
        "messages": [
            {"role": "user", "content": [_text(instruction)]},
            {"role": "assistant", "content": body},
            {"role": "user", "content": [_text(instruction)]},
            {"role": "assistant", "content": [answer_block(answer.code)]},
        ],
    }


def attempt_policy(backend: Backend) -> dict:
    """``reflection_sample``'s attempts for ``backend``: the mutation backend means to write a
    bug, so a mutant that passes is redrawn (up to 6 times); a model's first answer that passes
    is a sample with 0 rounds, as in the paper's pipeline (asking a greedy model again would
    only repeat it)."""
    mutation = isinstance(backend, MutationBackend)
    return {"max_attempts": 6 if mutation else 1, "redraw_passing": mutation}


def failure_kind(error: Exception) -> str:
    """A failure's kind, the same for every problem it happens to (ids and quotes cut)."""
    text = re.sub(r"^problem [^:]+: ", "", str(error))
    return text.split(" in ")[0][:80]


def build_dataset(
    n: int,
    seed: int,
    workers: int = 1,
    generation_fraction: float = 0.25,
    backend: Backend | None = None,
    timeout_s: float = 5.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict], BuildStats]:
    """``n`` samples (about ``generation_fraction`` of them generation samples), seeded.

    Problems are the template problems in a seeded order, reused with fresh mutations when
    ``n`` exceeds their number. Deterministic given ``seed`` whatever ``workers`` is.
    progress: called with (done, total) after each reflection sample.
    """
    if n < 0:
        raise ValueError(f"n: expected a non-negative number of samples, got {n}")
    if workers < 1:
        raise ValueError(f"workers: expected at least 1, got {workers}")
    if not 0.0 <= generation_fraction <= 1.0:
        raise ValueError(
            f"generation_fraction: expected a value in [0, 1], got {generation_fraction}"
        )
    backend = backend if backend is not None else MutationBackend(timeout_s=timeout_s)
    start = time.perf_counter()
    problems = generate_problems(seed)
    n_generation = round(n * generation_fraction)
    n_reflection = n - n_generation
    stats = BuildStats()

    def one(index: int) -> tuple[dict | None, BuildStats]:
        problem = problems[index % len(problems)]
        rng = random.Random(f"{seed}/reflection/{index}")
        style = "humaneval" if rng.random() < 0.8 else "mbpp"
        local = BuildStats()
        try:
            sample = reflection_sample(
                problem,
                backend,
                rng,
                style,
                timeout_s=timeout_s,
                stats=local,
                **attempt_policy(backend),
            )
        except UserError:  # the model could not be reached: the build stops, saying why
            raise
        except ValueError as e:  # a model's reply without code: this problem gives no sample
            local.rejected[failure_kind(e)] += 1
            sample = None
        return sample, local

    reflections = _made_in_order(one, n_reflection, workers, stats, progress)
    if len(reflections) < n_reflection:
        why = ", ".join(f"{k}: {v}" for k, v in stats.rejected.most_common(3))
        raise RuntimeError(
            f"made only {len(reflections)} of {n_reflection} reflection samples (rejected: {why})"
        )
    rng = random.Random(f"{seed}/generation")
    generations = [
        generation_sample(problems[i % len(problems)], rng.choice(STYLES))
        for i in range(len(problems) - 1, len(problems) - 1 - n_generation, -1)
    ]
    samples = reflections + generations
    random.Random(f"{seed}/order").shuffle(samples)
    stats.reflection, stats.generation = len(reflections), len(generations)
    stats.seconds = time.perf_counter() - start
    return samples, stats


def _made_in_order(
    one: Callable[[int], tuple[dict | None, BuildStats]],
    n: int,
    workers: int,
    stats: BuildStats,
    progress: Callable[[int, int], None] | None,
) -> list[dict]:
    """Up to ``n`` samples of ``one(index)`` for indices 0, 1, ... in order (deterministic
    whatever ``workers`` is); each index's stats added to ``stats``."""
    made: list[dict] = []
    next_index = 0
    # A problem may yield no sample (every attempt passed); draw more indices until n are made.
    # sandbox runs are subprocesses
    pool = ThreadPoolExecutor(max_workers=workers, initializer=ctrl_c_to_main_thread)
    try:
        while len(made) < n and next_index < n * 4 + 8:
            batch = range(next_index, next_index + (n - len(made)))
            next_index = batch.stop
            for sample, local in pool.map(one, batch):  # ordered: deterministic output
                stats.executions += local.executions
                stats.rejected.update(local.rejected)
                stats.rounds.update(local.rounds)
                stats.kinds.update(local.kinds)
                if sample is not None and len(made) < n:
                    made.append(sample)
                    if progress is not None:
                        progress(len(made), n)
    finally:  # on Ctrl-C: drop the queued runs, wait only for those running
        pool.shutdown(wait=True, cancel_futures=True)
    return made


def write_jsonl(samples: list[dict], path: str | Path) -> Path:
    """Write one JSON object per line (UTF-8); creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Through a temporary file: Ctrl-C or a kill leaves the old file or the whole new one.
    text = "".join(json.dumps(sample, ensure_ascii=False) + "\n" for sample in samples)
    return atomic_write_text(path, text)
