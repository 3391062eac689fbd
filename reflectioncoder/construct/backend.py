"""Who writes the code and the reflections: the ``Backend`` protocol and two backends.

- ``MutationBackend`` (offline, the default): the first attempt is the reference solution with
  one or two mutations; each reflection explains the failure the sandbox really printed and
  reverts one mutation.
- ``OpenAIBackend``: any OpenAI-compatible chat endpoint (``/v1/chat/completions``), so a real
  model can write attempts, reflections and the one-off answer, as in the paper;
  ``TransformersBackend``: the same with a local ``transformers`` model. Both are the paper's
  chat (``ChatBackend``) over the one model client, ``reflectioncoder.generate``.
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from reflectioncoder.construct.execute import Execution, run_tests
from reflectioncoder.construct.mutate import KINDS, Edit, apply_mutations, site_kinds
from reflectioncoder.construct.problems import Problem, TestCase
from reflectioncoder.generate import GenerationConfig, LocalModel, OpenAIClient, RetryPolicy


@dataclass(frozen=True)
class Draft:
    """A backend's turn: a short ``text`` and the function ``code`` (tests are added by us)."""

    text: str
    code: str
    meta: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Turn:
    """One round of a reflection sequence: the draft, the program run, and its execution."""

    draft: Draft
    program: str
    execution: Execution


@runtime_checkable
class Backend(Protocol):
    """Writes first attempts and, from the interpreter's feedback, reflections with fixes."""

    name: str

    def attempt(self, problem: Problem, rng: random.Random) -> Draft:
        """The first attempt at ``problem``."""
        ...

    def reflect(self, problem: Problem, history: list[Turn], rng: random.Random) -> Draft:
        """Explain why the last turn of ``history`` failed, and give fixed code."""
        ...

    # Optional: ``answer(problem, history, rng) -> Draft``, stage 2 (the problem again, answered
    # in one standalone block); a backend without it answers with its last fix.


# ----------------------------------------------------------------------------- feedback parsing

_GOT_RE = re.compile(r"^AssertionError: got (.*)$", re.MULTILINE)
_FRAME_RE = re.compile(r'File "main\.py", line (\d+), in <module>')


def failing_test(problem: Problem, program: str, output: str) -> TestCase | None:
    """The test whose line the traceback's last top-level frame points at, if any.

    Found from the line number, so it works whether or not the traceback shows source lines.
    """
    frames = _FRAME_RE.findall(output)
    if not frames:
        return None
    lines = program.splitlines()
    line = int(frames[-1])
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    return next((t for t in problem.tests if source == t.checked_assertion()), None)


def describe_failure(problem: Problem, program: str, execution: Execution) -> str:
    """One or two sentences on what the execution of ``program`` shows, from its output alone."""
    output = execution.output
    if execution.timed_out:
        return "Running the tests timed out: the program never finished, so a loop does not end."
    lines = [line for line in output.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else "no output"
    failing = failing_test(problem, program, output)
    got = _GOT_RE.search(output)
    if failing is not None and got is not None:
        return (
            f"The test `{failing.call} == {failing.expected}` failed: "
            f"the function returned {got.group(1)} instead of {failing.expected}."
        )
    where = f" while checking `{failing.call}`" if failing is not None else ""
    return f"Running the tests raised `{last}`{where}."


_DIAGNOSIS = {
    "off_by_one": [
        "This is an off-by-one error: {wrong} is one away from what it should be, {correct}.",
        "The bound in {wrong} is off by one; it must be {correct}.",
    ],
    "wrong_operator": [
        "The line {wrong} uses the wrong operator; it should be {correct}.",
        "{wrong} computes the wrong thing because of its operator: it must be {correct}.",
    ],
    "wrong_comparison": [
        "The comparison in {wrong} is wrong; it should be {correct}.",
        "{wrong} compares the wrong way round or at the wrong boundary: it must be {correct}.",
    ],
    "missing_case": [
        "The code misses a case. It needs: {correct}",
        "A case is not handled; this part is missing: {correct}",
    ],
    "wrong_return": [
        "The function returns the wrong value: {wrong} should be {correct}.",
        "{wrong} hands back the wrong value; it must be {correct}.",
    ],
}
_PLANS = [
    "Let me fix that and run the tests again.",
    "I'll correct it and rerun the tests.",
    "Fixing it and testing again.",
]
_OPENERS = [
    "I'll write `{name}` and test it on a few cases.",
    "Let me implement `{name}` and check it against some tests.",
    "Here is a first version of `{name}`, with tests.",
]


def _snippet(lines: tuple[str, ...]) -> str:
    """One line as inline code, several as a python fence on lines of their own."""
    if len(lines) == 1:
        return f"`{lines[0].strip()}`"
    return "\n```python\n" + "\n".join(lines) + "\n```\n"


def diagnose(edit: Edit, rng: random.Random) -> str:
    """A sentence explaining ``edit`` (the mutation being reverted)."""
    if edit.kind not in KINDS:
        raise ValueError(f"edit.kind: unknown mutation kind {edit.kind!r}")
    wrong = _snippet(edit.wrong) if edit.wrong else ""
    return rng.choice(_DIAGNOSIS[edit.kind]).format(correct=_snippet(edit.correct), wrong=wrong)


def _join(parts: list[str]) -> str:
    """Sentences joined by spaces; a part that ends in a code fence starts a new line."""
    text = ""
    for part in parts:
        sep = "" if not text else "\n" if text.endswith("```") else " "
        text += sep + part.strip().replace(" \n", "\n")
    return text


class MutationBackend:
    """Offline backend: mutated reference solutions and templated, feedback-driven reflections.

    two_bug_rate: the share of first attempts that carry two mutations, each checked to fail
    the tests on its own (so two reflection rounds, and the last fix is the reference). The
    reflection fixes the bug the observed failure points at, found by running each fix alone.
    These checks are extra sandboxed runs, counted in the build's figures but not in the sample.
    """

    name = "mutation"

    def __init__(self, two_bug_rate: float = 0.25, timeout_s: float = 5.0) -> None:
        if not 0.0 <= two_bug_rate <= 1.0:
            raise ValueError(f"two_bug_rate: expected a value in [0, 1], got {two_bug_rate}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s: expected a positive number of seconds, got {timeout_s}")
        self.two_bug_rate = two_bug_rate
        self.timeout_s = timeout_s

    def attempt(self, problem: Problem, rng: random.Random) -> Draft:
        kinds = site_kinds(problem.solution)
        if not kinds:
            raise ValueError(f"problem {problem.task_id}: its solution admits no mutation")
        # Draw a kind first, then a site of that kind, so every kind is common.
        kind = rng.choice(sorted(set(kinds)))
        first = rng.choice([i for i, k in enumerate(kinds) if k == kind])
        sites = [first]
        runs = 0
        if rng.random() < self.two_bug_rate and len(kinds) > 1:
            sites.append(rng.choice([i for i in range(len(kinds)) if i != first]))
            # Keep only bugs the tests can see: a bug that passes alone would survive into the
            # final answer, since the fixes stop once the tests pass.
            seen = []
            for site in sites:
                code = apply_mutations(problem.solution, [site]).code
                runs += 1
                if not run_tests(problem, code, timeout_s=self.timeout_s).passed:
                    seen.append(site)
            sites = seen or sites[:1]
        mutant = apply_mutations(problem.solution, sites)
        text = rng.choice(_OPENERS).format(name=problem.entry_point)
        meta = {"sites": mutant.sites, "edits": mutant.edits, "runs": runs}
        return Draft(text, mutant.code, meta)

    def reflect(self, problem: Problem, history: list[Turn], rng: random.Random) -> Draft:
        last = history[-1]
        sites, edits = last.draft.meta["sites"], last.draft.meta["edits"]
        if not sites:
            raise ValueError(f"problem {problem.task_id}: no mutation left to fix")
        k, checks = self._explaining_bug(problem, sites, last) if len(sites) > 1 else (0, 0)
        remaining = tuple(sites[:k] + sites[k + 1 :])
        code = apply_mutations(problem.solution, remaining).code
        parts = [
            describe_failure(problem, last.program, last.execution),
            diagnose(edits[k], rng),
            rng.choice(_PLANS),
        ]
        left = tuple(edits[:k] + edits[k + 1 :])
        meta = {"sites": remaining, "edits": left, "runs": checks}
        return Draft(_join(parts), code, meta)

    def answer(self, problem: Problem, history: list[Turn], rng: random.Random) -> Draft:
        """The one-off answer is the code the reflections arrived at."""
        return Draft("", history[-1].draft.code)

    def _explaining_bug(
        self, problem: Problem, sites: tuple[int, ...], last: Turn
    ) -> tuple[int, int]:
        """Which of several bugs the observed failure points at, decided by running: the first
        whose fix alone makes the tests pass, else the first whose fix changes the output.
        Returns (that bug's index, sandboxed runs made)."""
        changed = None
        for k in range(len(sites)):
            code = apply_mutations(problem.solution, sites[:k] + sites[k + 1 :]).code
            run = run_tests(problem, code, timeout_s=self.timeout_s)
            if run.passed:
                return k, k + 1
            if changed is None and run.output != last.execution.output:
                changed = k
        return (changed if changed is not None else 0), len(sites)


# ----------------------------------------------------------------------------- chat backends

_PYTHON_TAGS = ("python", "py", "python3")
SYSTEM_PROMPT = "Write Python in one ```python fence. Tests are added and run for you."
FEEDBACK_PROMPT = (
    "Running your code with the tests printed:\n```\n{output}\n```\n"
    "Explain what went wrong, then give the whole fixed function."
)
ANSWER_PROMPT = (
    "{instruction}\n\nAnswer with the complete solution in one standalone ```python block."
)


def _fenced_blocks(reply: str) -> list[tuple[str, int, str]]:
    """The reply's closed code fences, in order: (tag, the offset where the fence opens, its
    code). Fences are whole lines (CRLF too); a fence's closing line is never taken for the
    opening of the next one, whatever the tags (``bash``, ``output``); a code line may end in
    the closing fence."""
    blocks, opened, offset = [], None, 0
    for line in reply.splitlines(keepends=True):
        mark = line.strip()
        if opened is None and mark.startswith("```"):
            opened = (mark[3:].strip().lower(), offset, offset + len(line))
        elif opened is not None and mark.endswith("```"):  # "```", or "    return x```"
            tag, start, body = opened
            blocks.append((tag, start, reply[body : offset + line.rfind("```")]))
            opened = None
        offset += len(line)
    return blocks


_CODE_STARTS = ("def ", "class ", "import ", "from ", "@")


def _bare_code(reply: str) -> str | None:
    """A reply that is code with no opening fence, up to a closing fence it may add (SmolLM2
    answers so about half the time): that code when it compiles (compiled, never run), else
    None."""
    lines = reply.strip().splitlines()
    if not lines or not lines[0].startswith(_CODE_STARTS):
        return None
    end = next((i for i, line in enumerate(lines) if line.strip().startswith("```")), len(lines))
    code = "\n".join(lines[:end]).strip() + "\n"
    try:
        compile(code, "<reply>", "exec")
    except (SyntaxError, ValueError):
        return None
    return code


def _opens_unclosed_fence(reply: str) -> bool:
    """Whether the reply's fence lines, paired in order, leave one open at its end."""
    return sum(line.strip().startswith("```") for line in reply.splitlines()) % 2 == 1


def _defines(code: str) -> bool:
    """Whether ``code`` defines a function or class at its top level that is not a test (a
    solution, not a usage example such as ``print(add_one(5))`` nor the tests a model writes
    after it: ``def test_add():``, ``class TestAdd(unittest.TestCase):``)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return any(isinstance(node, kinds) and not _is_test(node) for node in tree.body)


def _is_test(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    """A pytest function (``test_*``) or a test class (``Test*``, a ``...TestCase`` base)."""
    if not isinstance(node, ast.ClassDef):
        return node.name == "test" or node.name.startswith("test_")
    bases = [ast.unparse(base) for base in node.bases]
    return node.name.startswith("Test") or any(b.endswith("TestCase") for b in bases)


def split_reply(reply: str) -> Draft:
    """A chat reply -> (the text before its code fence, the fenced code): the last python
    fence that defines a function or class other than tests, else the last python fence (a
    model that writes the solution, then "You can use it like this:" and a call, or its tests,
    ran those alone). A fence
    without a language tag counts only when the reply has no python-tagged one: an output or
    shell block after the code is not the code. A reply with no fence that starts as code and
    compiles is that code (no text)."""
    blocks = _fenced_blocks(reply)
    code = [b for b in blocks if b[0] in _PYTHON_TAGS] or [b for b in blocks if not b[0]]
    code = [b for b in code if _defines(b[2])] or code
    if not code:
        bare = _bare_code(reply)
        if bare is not None:
            return Draft("", bare)
        if reply.strip().startswith(_CODE_STARTS):  # no fence, cut at the token limit
            raise ValueError(
                "reply: unfenced code that does not compile (cut short? "
                f"--max-new-tokens) in {reply[-200:]!r}"
            )
        if _opens_unclosed_fence(reply):  # a small model's reply cut at its token limit
            raise ValueError(
                f"reply: code fence never closed (cut short? --max-new-tokens) in {reply[-200:]!r}"
            )
        raise ValueError(f"reply: no python code fence in {reply[:200]!r}")
    _, start, text = code[-1]
    return Draft(reply[:start].strip(), text.replace("\r\n", "\n").strip() + "\n")


class ChatBackend:
    """The paper's two stages as a chat, for any model behind ``_chat(messages) -> str``.

    Stage 1: the problem; the model's code runs with the tests; the real output goes back and
    the model reflects and fixes (``attempt`` / ``reflect``). Stage 2 (``answer``): with that
    conversation before it, the problem again, answered in one standalone code block.
    """

    name = "chat"

    def _chat(self, messages: list[dict]) -> str:
        raise NotImplementedError

    def _conversation(self, problem: Problem, history: list[Turn]) -> list[dict]:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": problem.instruction()},
        ]
        for turn in history:
            text = f"{turn.draft.text}\n```python\n{turn.draft.code.rstrip()}\n```".lstrip()
            messages.append({"role": "assistant", "content": text})
            if not turn.execution.passed:
                output = turn.execution.output
                messages.append({"role": "user", "content": FEEDBACK_PROMPT.format(output=output)})
        return messages

    def attempt(self, problem: Problem, rng: random.Random) -> Draft:
        return split_reply(self._chat(self._conversation(problem, [])))

    def reflect(self, problem: Problem, history: list[Turn], rng: random.Random) -> Draft:
        return split_reply(self._chat(self._conversation(problem, history)))

    def answer(self, problem: Problem, history: list[Turn], rng: random.Random) -> Draft:
        messages = self._conversation(problem, history)
        prompt = ANSWER_PROMPT.format(instruction=problem.instruction())
        return split_reply(self._chat([*messages, {"role": "user", "content": prompt}]))


class OpenAIBackend(ChatBackend):
    """Any OpenAI-compatible chat endpoint, through ``generate.OpenAIClient``.

    base_url: e.g. ``http://localhost:8000/v1``; requests go to ``{base_url}/chat/completions``,
    retried, backed off and rate-limited as ``policy`` says (``generate.RetryPolicy``); a
    4xx reply that retrying cannot fix (a wrong model name, a bad key) is a user error.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        temperature: float = 0.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.client = OpenAIClient(base_url, model, api_key, policy)
        self.temperature = temperature

    def _chat(self, messages: list[dict]) -> str:
        return self.client.chat(messages, self.temperature)


class TransformersBackend(ChatBackend):
    """A local ``transformers`` model (a model folder), greedy, through ``generate.LocalModel``:
    the chat goes through the tokenizer's chat template when it has one, else as ``role: text``
    lines ending in ``assistant:``; generations run one at a time."""

    name = "transformers"

    def __init__(self, model_path: str, max_new_tokens: int = 1024, device: str = "cpu") -> None:
        self.model = LocalModel(model_path, device=device)
        self.config = GenerationConfig(
            max_new_tokens=max_new_tokens, batch_size=1, stop=(), skip_special_tokens=True
        )

    def _chat(self, messages: list[dict]) -> str:
        return self.model.chat(messages, self.config)
