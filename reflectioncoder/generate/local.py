"""A local ``transformers`` model: batched ``generate`` with left padding and the KV cache.

One loaded model serves prompts (``complete``: evaluation, the demo) and chats (``chat``:
``build-data --backend transformers``); generations run one batch at a time under a lock, so
threads may share it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

from reflectioncoder.cpus import default_threads
from reflectioncoder.errors import UserError
from reflectioncoder.generate.config import GenerationConfig, Generator, cut_at_stop


class LocalModel(Generator):
    """A model folder, loaded once: bfloat16 on CUDA, float32 on the CPU.

    ``device``: None picks CUDA when there is one. ``threads``: torch's CPU threads (None: the
    cores this process may use, less those other programs keep busy, ``cpus.default_threads``;
    torch's own count when OMP_NUM_THREADS is set: the user's)."""

    def __init__(self, model_dir: str, device: str | None = None, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads is None and "OMP_NUM_THREADS" not in os.environ:
            threads = default_threads()  # torch's is every core of the host, busy or not
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tok = AutoTokenizer.from_pretrained(model_dir)
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.tokenizer = tok
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        _require_fitting_tokenizer(model_dir, len(tok), model.get_input_embeddings().num_embeddings)
        model.generation_config = _ids_only(model.generation_config)
        self.model = model.to(self.device).eval()
        self._lock = threading.Lock()

    def _end_ids(self, stops: Sequence[str]) -> list[int]:
        """The ids that end a sequence: the tokenizer's and the model's end tokens, and every
        stop that is one token of the vocabulary."""
        tok = self.tokenizer
        ids = [tok.convert_tokens_to_ids(s) for s in stops]
        ids = [i for i in ids if isinstance(i, int) and i != tok.unk_token_id]
        model_eos = self.model.generation_config.eos_token_id
        model_eos = model_eos if isinstance(model_eos, list) else [model_eos]
        ends = [tok.eos_token_id, *ids, *model_eos]
        return list(dict.fromkeys(i for i in ends if i is not None))

    def complete(
        self,
        prompts: Sequence[str],
        config: GenerationConfig,
        *,
        progress: Callable[[int], None] | None = None,
        stats: dict | None = None,
        add_special_tokens: bool = True,
        on_done: Callable[[int, list[str]], None] | None = None,
    ) -> list[list[str]]:
        """``config.n`` texts per prompt, cut at the first stop. The prompts are encoded as they
        are (they may hold special tokens literally); ``add_special_tokens``: the tokenizer adds
        BOS (a chat template writes its own). ``stats``, when given, gets the tokens generated
        (padding excluded; so is the end token where it is the pad token), the wall and CPU
        seconds of generation, the threads and the batch size. ``on_done(i, texts)`` is called as
        prompt i's batch is done."""
        import torch

        tok = self.tokenizer
        torch.manual_seed(config.seed)
        t0, cpu0, new_tokens = time.perf_counter(), time.process_time(), 0
        # Batches of similar prompt lengths: less left padding computed (the order is restored).
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        texts_by_prompt: dict[int, list[str]] = {}
        for start in range(0, len(prompts), config.batch_size):
            chosen = order[start : start + config.batch_size]
            batch = [prompts[i] for i in chosen]
            enc = tok(
                batch, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
            ).to(self.device)
            new = self._generate(enc, config)
            new_tokens += int((new != tok.pad_token_id).sum())
            texts = self._decode(new, config)
            for j, i in enumerate(chosen):
                texts_by_prompt[i] = texts[j * config.n : (j + 1) * config.n]
                if on_done:
                    on_done(i, texts_by_prompt[i])
            if progress:
                progress(len(batch))
        if stats is not None:
            seconds = time.perf_counter() - t0
            stats.update(
                new_tokens=new_tokens,
                seconds=round(seconds, 2),
                cpu_seconds=round(time.process_time() - cpu0, 2),
                tokens_per_s=round(new_tokens / seconds, 2) if seconds else None,
                threads=torch.get_num_threads(),
                batch_size=config.batch_size,
            )
        return [texts_by_prompt[i] for i in range(len(prompts))]

    def _generate(self, enc, config: GenerationConfig):
        """One batch -> its new token ids (on the host: one copy per batch)."""
        import torch

        tok = self.tokenizer
        kwargs = dict(
            max_new_tokens=config.max_new_tokens,
            do_sample=config.temperature > 0,
            num_return_sequences=config.n,
            eos_token_id=self._end_ids(config.stop) or None,
            pad_token_id=tok.pad_token_id,
        )
        if config.temperature > 0:  # no top-k (transformers' default is 50; vLLM's, none)
            kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=0)
        if config.stop_strings:
            kwargs.update(stop_strings=list(config.stop_strings), tokenizer=tok)
        with self._lock, torch.no_grad():
            gen = self.model.generate(**enc, **kwargs)
        return gen[:, enc["input_ids"].shape[1] :].cpu()

    def _decode(self, new, config: GenerationConfig) -> list[str]:
        """Each sequence's text up to its first end token (the tokenizer's, the model's, a stop
        token: whichever ended it), cut at the first stop. A pad token the model wrote before
        its end stays, as greedy decoding wrote it; the padding of a sequence that a stop
        string ended follows that string, so the cut removes it."""
        tok = self.tokenizer
        ends = set(self._end_ids(config.stop))
        rows = []
        for row in new.tolist():
            end = next((j for j, t in enumerate(row) if t in ends), len(row))
            rows.append(row[:end])
        texts = tok.batch_decode(rows, skip_special_tokens=config.skip_special_tokens)
        return [cut_at_stop(t, config.all_stops) for t in texts]

    def chat(self, messages: list[dict], config: GenerationConfig) -> str:
        """One reply to ``messages``, through the tokenizer's chat template when it has one,
        else as ``role: text`` lines ending in ``assistant:``."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.complete([text], config, add_special_tokens=False)[0][0]
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return self.complete([text], config)[0][0]


def _ids_only(saved):
    """The model's generation config without its decoding defaults: decoding is
    ``GenerationConfig``'s alone (a saved ``repetition_penalty`` or ``top_k``, as Qwen2.5-Coder
    ships, made greedy decoding something else); its end, pad and BOS ids stay."""
    from transformers import GenerationConfig as HFGenerationConfig

    ids = ("bos_token_id", "eos_token_id", "pad_token_id")
    return HFGenerationConfig(**{name: getattr(saved, name, None) for name in ids})


def _require_fitting_tokenizer(model_dir: str, tokens: int, rows: int) -> None:
    """A tokenizer with ids past the model's embedding rows is another model's: refused at load,
    not as an index error in the middle of generating."""
    if tokens > rows:
        raise UserError(
            f"its tokenizer has {tokens} tokens but the model has {rows} embedding rows: "
            "not this model's tokenizer (save the one it was trained with beside it)",
            file=model_dir,
        )


def generate_hf(
    model_dir: str,
    prompts: Sequence[str],
    config: GenerationConfig,
    *,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    stats: dict | None = None,
) -> list[list[str]]:
    """Load ``model_dir`` and complete ``prompts`` (``LocalModel.complete``)."""
    model = LocalModel(model_dir, device=device, threads=threads)
    return model.complete(prompts, config, progress=progress, stats=stats)
