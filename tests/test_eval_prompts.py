"""Prompts and post-processing exactly as SPEC section 5 (strings written out from the SPEC)."""

from __future__ import annotations

import random

import pytest

from reflectioncoder.eval.prompts import (
    humaneval_prompt,
    mbpp_prompt,
    multiple_prompt,
    postprocess,
    postprocess_multiple,
)
from reflectioncoder.eval.tasks import (
    MultiplETask,
    PythonTask,
    load_humaneval_plus,
    load_mbpp_plus,
    load_multiple,
)

WRAP = "<|user|><|text|>{}<|endofblock|><|endofmessage|><|assistant|><|text|>```python\n"


def _py(prompt: str, dataset: str) -> PythonTask:
    return PythonTask("T/1", prompt, "f", "", [], [], 0.0, dataset)


def test_humaneval_prompt(seed):
    name = f"f{seed % 1000}"
    prompt = f'\n\ndef {name}(x):\n    """Double x."""\n  \n'
    want = WRAP.format(
        f'Write a complete Python function for the problem.\n\ndef {name}(x):\n    """Double x."""'
    )
    assert humaneval_prompt(_py(prompt, "humaneval")) == want


def test_mbpp_prompt():
    prompt = '"""\nWrite a function to add.\nassert add(1, 2) == 3\n"""\n'
    body = (
        "Write a function to add.\nYour code should satisfy the following assertion:\n"
        "```python\nassert add(1, 2) == 3\n```"
    )
    assert mbpp_prompt(_py(prompt, "mbpp")) == WRAP.format(body)
    with pytest.raises(ValueError, match="T/1"):
        mbpp_prompt(_py('"""one line"""', "mbpp"))


def test_prompts_on_the_real_data(shared_dir):
    he = load_humaneval_plus(shared_dir / "evaldata")
    assert len(he) == 164
    p = humaneval_prompt(he["HumanEval/0"])
    assert p.startswith("<|user|><|text|>Write a complete Python function for the problem.\n\n")
    assert p.endswith("<|endofmessage|><|assistant|><|text|>```python\n")
    mbpp = load_mbpp_plus(shared_dir / "evaldata")
    p = mbpp_prompt(mbpp["Mbpp/2"])
    assert "Write a function to find the shared elements from the given two lists.\n" in p
    assert "```python\nassert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10)))" in p


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("def f(x):\n    return 2 * x\n```\nThis doubles x.", "def f(x):\n    return 2 * x"),
        ("def f(x):\n    return x\n```<|endofblock|>", "def f(x):\n    return x"),
        # no fence at all: the reference drops up to the first newline (its quirk, kept)
        ("def f(x):\n    return x<|endofblock|>", "return x"),
        ("Sure:\n```python\ndef g():\n    pass\n```\nDone.", "def g():\n    pass"),
        (
            "def f():\n    if True:\n        return 1\nif __name__ == '__main__':\n    f()```",
            "def f():\n    if True:\n        return 1",
        ),
        ("def f():\n    return 1\n\nassert f() == 1\n```", "def f():\n    return 1"),
        ("def f():\n    return 1\nprint(f())\n```", "def f():\n    return 1"),
        ("def f():\n    return 1\n# Test\nf()\n```", "def f():\n    return 1"),
        ("<|text|>def f():\n    return 1<|code|>\n```", "def f():\n    return 1"),
    ],
)
def test_postprocess(raw, want):
    assert postprocess(raw) == want


def test_postprocess_keeps_indented_stops(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    body = "def f(x):\n" + "".join(f"    if x == {i}:\n        print({i})\n" for i in range(n))
    assert postprocess(body + "```") == body.strip()


def test_multiple_prompt_and_postprocess(shared_dir):
    tasks = load_multiple(shared_dir / "evaldata", "cpp")
    task = tasks["HumanEval_53_add"]
    p = multiple_prompt(task)
    assert p.startswith("<|user|><|text|>Write a complete C++ function for the problem.\n\n")
    assert p.endswith("<|assistant|><|text|>```c++\n" + task.prompt)
    raw = "    return x + y;\n}\nint main() {\n}\n```"
    assert postprocess_multiple(task, raw) == "    return x + y;"
    js = MultiplETask("t", "js", "function add(x, y){\n", "test();", ["\nfunction "])
    assert postprocess_multiple(js, "  return x + y;\n}\n\nfunction g() {\n}\n") == (
        "  return x + y;\n}\n\nfunction g() {\n}"
    )


def test_chat_prompt_uses_the_models_template():
    from reflectioncoder.chat_template import CHAT_TEMPLATE
    from reflectioncoder.eval.prompts import chat_prompt, postprocess_chat
    from reflectioncoder.tokenizer import train_tokenizer

    tok = train_tokenizer(["def f(x):\n    return x\n"] * 10, 300)
    task = _py('def f(x):\n    """Return x."""\n', "humaneval")
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    user = 'Write a complete Python function for the problem.\n\ndef f(x):\n    """Return x."""'
    want = f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n```python\n"
    assert chat_prompt(task, tok) == want
    # SPEC's own template writes BOS, which encoding adds again: the rendered BOS goes, so the
    # prompt is the SPEC one exactly
    tok.chat_template = CHAT_TEMPLATE
    assert chat_prompt(task, tok) == humaneval_prompt(task)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        chat_prompt(task, tok)
    raw = "def f(x):\n    return x\n```\nThis function returns x.<|endofmessage|>"
    assert postprocess_chat(raw) == "def f(x):\n    return x"
