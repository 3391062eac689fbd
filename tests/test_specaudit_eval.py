"""SPEC §5's protocol: greedy one-off generation by default, and "special tokens removed" as the
authors' script removes them (docs/evaluation.md): the four block and message tokens go
wherever they sit; a role or execution token the model writes inside its code stays (so a
score compares with the released completions')."""

import pytest
import torch
from reference.serialise import SPECIALS

from reflectioncoder import generate as gn
from reflectioncoder.eval.prompts import GENERATION_STOP, humaneval_prompt, postprocess
from reflectioncoder.eval.tasks import PythonTask
from reflectioncoder.testing.tiny_model import save_tiny_model

REMOVED = ["<|text|>", "<|code|>", "<|endofblock|>", "<|endofmessage|>"]
KEPT = ["<|user|>", "<|assistant|>", "<|execution|>"]


@pytest.mark.parametrize("token", REMOVED)
def test_block_and_message_tokens_are_removed_anywhere(token):
    raw = f"def f(x):{token}\n    return {token}x + 1\n```\nDone."
    assert postprocess(raw) == "def f(x):\n    return x + 1"


@pytest.mark.parametrize("token", KEPT)
def test_role_and_execution_tokens_stay(token):
    raw = f"def f(x):\n    return x  # {token}\n```"
    assert postprocess(raw) == f"def f(x):\n    return x  # {token}"


def test_default_generation_is_greedy_and_stops_at_the_block_end(tmp_path, seed):
    """The default GenerationConfig (what `evaluate` runs without --temperature) continues SPEC
    §5's prompt with the argmax token each time, computed here by hand from the model's
    logits, until <|endofblock|>, <|endofmessage|> or EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["def add(x, y):\n    return x + y\n", "Write a complete Python function."] * 20
    folder = save_tiny_model(
        tmp_path / "m", texts, num_layers=2, special_tokens=SPECIALS, seed=seed
    )
    task = PythonTask("T/1", "def add(x, y):\n", "add", "", [], [], 0.0, "humaneval")
    prompt = humaneval_prompt(task)
    config = gn.GenerationConfig(max_new_tokens=12)
    assert config.temperature == 0 and config.n == 1
    (got,) = gn.generate_hf(str(folder), [prompt], config, device="cpu")
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ends = {tok.eos_token_id, *(tok.convert_tokens_to_ids(s) for s in GENERATION_STOP)}
    ids = tok(prompt)["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(config.max_new_tokens):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt in ends:
                break
            new.append(nxt)
    assert got == [tok.decode(new, skip_special_tokens=False)]


def test_a_batch_ended_by_a_stop_string_leaves_no_padding_in_the_text(tmp_path, seed):
    """A sequence a stop string ends is padded while its batch runs on: the cut at the stop
    string removes that padding (pad tokens are no longer dropped wherever they sit)."""
    texts = ["def add(x, y):\n    return x + y\n", "Write a complete Python function."] * 20
    folder = save_tiny_model(
        tmp_path / "m", texts, num_layers=2, special_tokens=SPECIALS, seed=seed
    )
    prompts = ["def add(x, y):", "Write a complete Python function for the problem."]
    free = gn.generate_hf(str(folder), prompts[:1], gn.GenerationConfig(max_new_tokens=12))
    stop = free[0][0][2:4]
    if not stop.strip():
        pytest.skip("the tiny model wrote too little to stop in")
    config = gn.GenerationConfig(max_new_tokens=12, stop_strings=(stop,), batch_size=2)
    batched = gn.generate_hf(str(folder), prompts, config, device="cpu")
    one_by_one = [
        gn.generate_hf(str(folder), [p], gn.GenerationConfig(**{**vars(config), "batch_size": 1}))[
            0
        ]
        for p in prompts
    ]
    assert batched == one_by_one
    # the first sequence stops early and is padded while the second runs on: no padding left
    assert batched[0][0] == free[0][0][: free[0][0].find(stop)]


def test_a_pad_token_the_model_writes_stays_in_its_greedy_text(tmp_path, seed):
    """Greedy decoding's text is the tokens the model wrote up to its end token: a model whose
    first greedy token is the pad token (here made so) has it in its text, as the authors'
    vLLM run (skip_special_tokens=False) keeps it; it was dropped as if it were padding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["def add(x, y):\n    return x + y\n", "Write a complete Python function."] * 20
    folder = save_tiny_model(
        tmp_path / "m", texts, num_layers=2, special_tokens=SPECIALS, seed=seed
    )
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = "def add(x, y):"
    assert tok.pad_token_id not in (tok.eos_token_id, None)
    with torch.no_grad():
        first = int(model.generate(**tok([prompt], return_tensors="pt"), max_new_tokens=1)[0, -1])
        head = model.get_output_embeddings().weight
        head[tok.pad_token_id] = 10 * head[first]  # pad's logit: 10x the greedy token's
    model.save_pretrained(folder)
    (got,) = gn.generate_hf(str(folder), [prompt], gn.GenerationConfig(max_new_tokens=3))
    assert got[0].startswith(tok.pad_token)
