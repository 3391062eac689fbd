"""What to generate: the decoding settings every backend takes, and the stop rule they share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reflectioncoder.data.special import END_OF_BLOCK, END_OF_MESSAGE

# SPEC §5: generation stops where the model closes its text block or its message.
SPEC_STOPS: tuple[str, ...] = (END_OF_BLOCK, END_OF_MESSAGE)


@dataclass
class GenerationConfig:
    """Decoding settings; greedy (temperature 0) is the paper's one-off setting."""

    max_new_tokens: int = 1024
    """Tokens generated at most per sample."""
    temperature: float = 0.0
    """0: greedy; above 0: sampling at this temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]; applies when sampling."""
    n: int = 1
    """Samples per prompt (above 1 needs temperature > 0)."""
    batch_size: int = 8
    """Prompts per ``generate()`` call of the local transformers backend; vLLM and an
    OpenAI-compatible server schedule their own batches."""
    seed: int = 0
    """Sampling seed: the local backend's torch seed and the server's ``seed``; vLLM takes its
    seed when the engine is built (``VllmModel(seed=...)``)."""
    stop: tuple[str, ...] = SPEC_STOPS
    """Special tokens that end a sequence (also cut from the text)."""
    stop_strings: tuple[str, ...] = ()
    """Plain-text stops: a sequence ends once its text holds one (the closing code fence of a
    ``chat`` prompt), so a batch is not held up by a model writing prose after its code."""
    skip_special_tokens: bool = False
    """Decode without special tokens (a chat reply, the demo); by default they stay in the text,
    where the stops are cut and ``eval.prompts`` removes the block tokens."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature == 0 and self.n > 1:
            raise ValueError("n > 1 needs temperature > 0 (greedy gives n identical samples)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def all_stops(self) -> tuple[str, ...]:
        return (*self.stop, *self.stop_strings)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first of ``stops`` it holds (all of it when it holds none)."""
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]


class Generator:
    """What every backend is: ``complete(prompts, config, progress=None)`` returns
    ``config.n`` texts per prompt, in the prompts' order; ``progress(k)`` is called as k more
    prompts are done, ``on_done(i, texts)`` as prompt i's texts are (to keep them at once). A
    backend writes ``_complete_batch`` and says how many prompts it takes at a time
    (``prompts_per_call``; None: all)."""

    prompts_per_call: int | None = None

    def complete(
        self,
        prompts: Sequence[str],
        config: GenerationConfig,
        *,
        progress: Callable[[int], None] | None = None,
        on_done: Callable[[int, list[str]], None] | None = None,
    ) -> list[list[str]]:
        size = self.prompts_per_call or max(len(prompts), 1)
        out: list[list[str]] = []
        for start in range(0, len(prompts), size):
            batch = list(prompts[start : start + size])
            texts = self._complete_batch(batch, config)
            for i, prompt_texts in enumerate(texts, start):
                if on_done:
                    on_done(i, prompt_texts)
            out += texts
            if progress:
                progress(len(batch))
        return out

    def _complete_batch(self, prompts: list[str], config: GenerationConfig) -> list[list[str]]:
        raise NotImplementedError
