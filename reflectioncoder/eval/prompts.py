"""Prompts and post-processing of SPEC section 5 (the authors' evaluation), exactly.

The model sees one user message and the start of an assistant text block that opens a code
fence; generation stops at ``<|endofblock|>`` / ``<|endofmessage|>``; the raw text is then cut at
the closing fence and at stop strings, with block tokens removed.
"""

from __future__ import annotations

from reflectioncoder.data.special import ASSISTANT, CODE, END_OF_BLOCK, END_OF_MESSAGE, TEXT, USER
from reflectioncoder.eval.tasks import MultiplETask, PythonTask
from reflectioncoder.generate.config import SPEC_STOPS

__all__ = [
    "GENERATION_STOP",
    "PROMPT_FORMATS",
    "bos_text",
    "chat_prompt",
    "chat_request",
    "MULTIPLE_LANGUAGE_NAMES",
    "humaneval_prompt",
    "humaneval_user",
    "mbpp_prompt",
    "multiple_prompt",
    "postprocess",
    "postprocess_chat",
    "postprocess_multiple",
    "python_prompt",
    "spec_prompt",
]

# Strings at which generation stops (the model closes its text block or message).
GENERATION_STOP = list(SPEC_STOPS)
_REMOVED = [TEXT, CODE, END_OF_BLOCK, END_OF_MESSAGE]
PYTHON_STOPS = ["\n# Test", "\nif", "\nassert", "\nprint", "\n```"]
FENCE = "```"

# Language names in the MultiPL-E prompt (the fence tag is the lower-cased name).
MULTIPLE_LANGUAGE_NAMES = {
    "cpp": "C++",
    "cs": "CSharp",
    "cs-bu": "CSharp",
    "java": "Java",
    "js": "Javascript",
    "php": "PHP",
    "ts": "Typescript",
    "sh": "Bash",
    "swift": "Swift",
    "rs": "Rust",
    "go": "Go",
    "python": "Python",
    "rb": "Ruby",
    "lua": "Lua",
    "pl": "Perl",
    "r": "R",
    "jl": "Julia",
    "scala": "Scala",
    "d": "D",
    "rkt": "Racket",
}
# Extra stops per language, cut at their LAST occurrence; js and php drop the data's own stops
# and get their closing brace back.
_MULTIPLE_STOPS = {
    "cpp": ["\nint main"],
    "js": ["\n}"],
    "php": ["\n}"],
    "ts": ["\n}"],
    "rs": ["\nfn main()"],
}
_CLOSE_BRACE = {"js", "php", "ts"}


# spec: SPEC §5's literal strings (the paper's; right for a model trained by this project).
# chat: the same user message through the model's own chat template (an instruct model's, e.g.
# ChatML), the reply opened with a python fence: the model writes the whole function. (Opening
# the reply with HumanEval's signature and docstring too made SmolLM2-135M-Instruct close
# fence at once: 0 of 20 tasks with a body, against 18 of 20 functions written this way.)
PROMPT_FORMATS = ("spec", "chat")


def spec_prompt(user_text: str, fence_tag: str = "python") -> str:
    """SPEC §5's wrapper: one user text block, then an assistant text block opening a fence."""
    return (
        f"{USER}{TEXT}{user_text}{END_OF_BLOCK}{END_OF_MESSAGE}{ASSISTANT}{TEXT}"
        f"{FENCE}{fence_tag}\n"
    )


def humaneval_user(prompt: str) -> str:
    """SPEC §5's HumanEval user message for a docstring prompt."""
    return f"Write a complete Python function for the problem.\n\n{prompt.strip()}"


def _mbpp_user(task: PythonTask) -> str:
    lines = task.prompt.replace('"""', "").strip().split("\n")
    if len(lines) < 2:
        raise ValueError(f"{task.task_id}: prompt needs a description line and an assertion")
    return (
        f"{lines[0]}\nYour code should satisfy the following assertion:\n```python\n{lines[1]}\n```"
    )


def humaneval_prompt(task: PythonTask) -> str:
    """HumanEval(+): the docstring prompt after a one-line instruction."""
    return spec_prompt(humaneval_user(task.prompt))


def mbpp_prompt(task: PythonTask) -> str:
    """MBPP(+): the task's first line and its first test (the prompt's second line)."""
    return spec_prompt(_mbpp_user(task))


def chat_request(user: str, tokenizer) -> str:
    """``user`` as one user message through ``tokenizer``'s chat template (generation prompt
    added), then the reply's opening python fence."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("--prompt-format chat: the model's tokenizer has no chat template")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos) :]  # the template writes BOS and encoding adds it again
    return text + f"{FENCE}python\n"


def _adds_bos(tokenizer) -> bool:
    """Whether encoding a text (special tokens added) starts it with BOS."""
    return tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]


def bos_text(tokenizer) -> str:
    """What a ``spec`` prompt starts with so that the model sees BOS first, as in every
    training sequence (SPEC §1: ids = [BOS] + tokenize(text)): BOS's text where encoding does
    not add it (SmolLM2's and Qwen's tokenizers), else nothing."""
    bos = tokenizer.bos_token
    return bos if bos and not _adds_bos(tokenizer) else ""


def chat_prompt(task: PythonTask, tokenizer) -> str:
    """The ``chat`` format: SPEC §5's user message for ``task`` through the model's template."""
    user = humaneval_user(task.prompt) if task.dataset == "humaneval" else _mbpp_user(task)
    return chat_request(user, tokenizer)


def python_prompt(task: PythonTask) -> str:
    return humaneval_prompt(task) if task.dataset == "humaneval" else mbpp_prompt(task)


def postprocess(text: str, stops: list[str] | None = None) -> str:
    """Raw generation -> completion: drop block tokens, cut at the closing fence (an odd number of
    fences: cut at the last; even: take what follows the first fence line), cut at the first
    stop string, strip."""
    for token in _REMOVED:
        text = text.replace(token, "")
    if text.count(FENCE) % 2 == 1:
        text = text[: text.rfind(FENCE)]
    else:
        text = text[text.find(FENCE) + 3 :]
        text = text[text.find("\n") + 1 :]
    for stop in (stops + ["\n```"]) if stops is not None else PYTHON_STOPS:
        if stop in text:
            text = text[: text.find(stop)]
    return text.strip()


def postprocess_chat(text: str) -> str:
    """Raw generation after a ``chat`` prompt (the fence already open) -> completion: drop block
    tokens, cut at the closing fence and at the first stop string."""
    for token in _REMOVED:
        text = text.replace(token, "")
    text = text.split(FENCE)[0]
    for stop in PYTHON_STOPS:
        text = text.split(stop)[0]
    return text.strip()


def multiple_prompt(task: MultiplETask) -> str:
    """MultiPL-E: the translated prompt, which the model continues inside the fence."""
    name = MULTIPLE_LANGUAGE_NAMES.get(task.language, task.language)
    user = f"Write a complete {name} function for the problem.\n\n{task.prompt.strip()}"
    return spec_prompt(user, name.lower()) + task.prompt


def postprocess_multiple(task: MultiplETask, text: str) -> str:
    """Raw generation (after the prompt) -> completion: cut at the LAST occurrence of each stop
    (the reference's rule). The program run is ``prompt + completion + "\\n" + tests``."""
    for token in GENERATION_STOP + [FENCE]:  # generation stops there
        if token in text:
            text = text[: text.find(token)]
    stops = list(_MULTIPLE_STOPS.get(task.language, []))
    if task.language not in ("php", "js"):
        stops += task.stop_tokens
    for stop in stops:
        if stop in text:
            text = text[: text.rfind(stop)]
    if task.language in _CLOSE_BRACE:
        text += "\n}"
    return text
