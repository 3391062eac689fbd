"""The chat template saved with every checkpoint: SPEC §1's sequence format, as Jinja.

A user message renders as ``<|user|><|text|>CONTENT<|endofblock|><|endofmessage|>``; an
assistant message the same with ``<|assistant|>``; the generation prompt opens an assistant text
block. Content is a string (one text block) or a list of ``{"type": text|code|execution,
"content": ...}`` blocks. So ``apply_chat_template`` of SPEC §5's user message, plus the opening
python fence, is the exact prompt the evaluation uses; the sequence starts with BOS, as in
training (special tokens are not added again when the template is tokenised).
"""

from __future__ import annotations

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>' -}}"
    "{%- if message['content'] is string -%}"
    "{{- '<|text|>' + message['content'] + '<|endofblock|>' -}}"
    "{%- else -%}"
    "{%- for block in message['content'] -%}"
    "{{- '<|' + block['type'] + '|>' + block['content'] + '<|endofblock|>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|endofmessage|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|><|text|>' -}}{%- endif -%}"
)


def make_usable(model, tokenizer) -> None:
    """Set what plain transformers needs to prompt and stop the saved model: the chat template,
    and eos/pad/bos ids in the config and the generation config (generation stops at the end of
    the assistant's message, ``<|endofmessage|>``, or at EOS)."""
    from reflectioncoder.data.tokenize import END_OF_MESSAGE

    tokenizer.chat_template = CHAT_TEMPLATE
    eos, pad, bos = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
    end_of_message = tokenizer.convert_tokens_to_ids(END_OF_MESSAGE)
    stops = [i for i in (eos, end_of_message) if isinstance(i, int) and i != tokenizer.unk_token_id]
    pad = pad if pad is not None else eos
    for config in (model.config, model.generation_config):
        config.bos_token_id = bos
        config.pad_token_id = pad
    model.config.eos_token_id = eos
    model.generation_config.eos_token_id = stops
