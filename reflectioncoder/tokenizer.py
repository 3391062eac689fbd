"""A small byte-level BPE tokenizer trained locally (tests, demo, benchmarks).

Nothing is downloaded: the tokenizer is trained with Hugging Face ``tokenizers`` from the texts
given, and wrapped as a ``PreTrainedTokenizerFast`` so the rest of the code treats it like any
tokenizer loaded from a model folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
BASE_SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` with bos/eos/pad/unk tokens.

    The SPEC's seven special tokens are NOT added here (``data.tokenize.add_special_tokens``
    does that, recording the original split first). When ``out_dir`` is given the tokenizer is
    saved there with ``save_pretrained``. ``vocab_size`` must leave room for the 256 byte symbols
    and the four base special tokens.
    """
    if isinstance(texts, str):
        raise ValueError("texts: expected an iterable of strings, got a single str")
    min_size = 256 + len(BASE_SPECIAL_TOKENS)
    if not isinstance(vocab_size, int) or vocab_size < min_size:
        raise ValueError(f"vocab_size: must be an int >= {min_size}, got {vocab_size!r}")

    tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    # Byte-level: every string is encodable, so <unk> never appears in practice.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Like Llama-family tokenizers: encode(..., add_special_tokens=True) prepends BOS.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN} $A",
                pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
                special_tokens=[(BOS_TOKEN, 0)],
            ),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BASE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((str(t) for t in texts), trainer=trainer)
    fast = _wrap(tok)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(out_dir))
    return fast


def tokenizer_from_json(serialised: str) -> PreTrainedTokenizerFast:
    """A tokenizer ``train_tokenizer`` made, from its ``backend_tokenizer.to_str()``."""
    return _wrap(Tokenizer.from_str(serialised))


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
    )
