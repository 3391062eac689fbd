"""One-off generation backends: transformers ``generate``, vLLM (when installed), and any
OpenAI-compatible HTTP endpoint. Each takes prompts and returns raw texts (n per prompt); the
caller post-processes them (``prompts.postprocess``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reflectioncoder.eval.prompts import GENERATION_STOP

__all__ = ["GenerationConfig", "generate_hf", "generate_openai", "generate_vllm", "vllm_available"]


@dataclass
class GenerationConfig:
    """Decoding settings; greedy (temperature 0) is the paper's one-off setting."""

    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1  # samples per prompt
    batch_size: int = 8
    seed: int = 0
    stop: tuple[str, ...] = tuple(GENERATION_STOP)
    stop_strings: tuple[str, ...] = ()
    """Plain-text stops: a sequence ends once its text holds one (the closing code fence of a
    ``chat`` prompt), so a batch is not held up by a model writing prose after its code."""

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


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]


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
    """transformers ``generate``, batched with left padding and a KV cache; special tokens kept
    in the decoded text (the stop strings are special tokens), then cut at the first stop
    string. ``threads``: torch's CPU threads (None leaves torch's setting). ``stats``, when
    given, gets the tokens generated (padding excluded; so is the end token where it is the
    pad token) and the wall and CPU seconds of generation, model loading excluded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads is not None:
        torch.set_num_threads(threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    stop_ids = [tok.convert_tokens_to_ids(s) for s in config.stop]
    stop_ids = [i for i in stop_ids if isinstance(i, int) and i != tok.unk_token_id]
    eos = [tok.eos_token_id, *stop_ids] if tok.eos_token_id is not None else stop_ids
    torch.manual_seed(config.seed)
    t0, cpu0, new_tokens = time.perf_counter(), time.process_time(), 0
    # Batches of similar prompt lengths: less left padding computed (the order is restored).
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts_by_prompt: dict[int, list[str]] = {}
    for start in range(0, len(prompts), config.batch_size):
        chosen = order[start : start + config.batch_size]
        batch = [prompts[i] for i in chosen]
        # the prompt strings hold our special tokens literally: BOS is added, nothing else
        enc = tok(batch, return_tensors="pt", padding=True).to(device)
        kwargs = dict(
            max_new_tokens=config.max_new_tokens,
            do_sample=config.temperature > 0,
            num_return_sequences=config.n,
            eos_token_id=eos or None,
            pad_token_id=tok.pad_token_id,
        )
        if config.temperature > 0:
            kwargs.update(temperature=config.temperature, top_p=config.top_p)
        if config.stop_strings:
            kwargs.update(stop_strings=list(config.stop_strings), tokenizer=tok)
        with torch.no_grad():
            gen = model.generate(**enc, **kwargs)
        new = gen[:, enc["input_ids"].shape[1] :].cpu()  # one host copy per batch
        new_tokens += int((new != tok.pad_token_id).sum())
        texts = tok.batch_decode(new, skip_special_tokens=False)
        stops = (*config.stop, *config.stop_strings)
        for j, i in enumerate(chosen):
            outs = texts[j * config.n : (j + 1) * config.n]
            texts_by_prompt[i] = [_cut_at_stop(_strip_pad(t, tok), stops) for t in outs]
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


def _strip_pad(text: str, tok) -> str:
    for special in (tok.pad_token, tok.eos_token):
        if special:
            text = text.replace(special, "")
    return text


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def generate_vllm(
    model_dir: str, prompts: Sequence[str], config: GenerationConfig, *, tensor_parallel: int = 1
) -> list[list[str]]:
    """vLLM (the authors' backend), when installed."""
    if not vllm_available():
        raise RuntimeError("--backend vllm: vllm is not installed (pip install vllm)")
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, tensor_parallel_size=tensor_parallel, seed=config.seed)
    params = SamplingParams(
        n=config.n,
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_new_tokens,
        skip_special_tokens=False,
        spaces_between_special_tokens=False,
        stop=[*config.stop, *config.stop_strings],
    )
    results = llm.generate(list(prompts), params)
    return [[o.text for o in r.outputs] for r in results]


def generate_openai(
    base_url: str,
    model: str,
    prompts: Sequence[str],
    config: GenerationConfig,
    *,
    api_key: str | None = None,
    timeout_s: float = 600.0,
    progress: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """Any OpenAI-compatible server's ``/v1/completions`` (vLLM, TGI, llama.cpp, ...)."""
    url = base_url.rstrip("/") + (
        "/completions" if base_url.rstrip("/").endswith("/v1") else "/v1/completions"
    )
    out = []
    for prompt in prompts:
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "n": config.n,
            "stop": list(config.stop),
            "seed": config.seed,
            "skip_special_tokens": False,  # vLLM's extension; others ignore it
        }
        req = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {api_key}"} if api_key else {}),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                data = json.loads(resp.read())
        except urllib.error.URLError as exc:
            raise RuntimeError(f"--base-url {base_url}: request failed: {exc}") from None
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != config.n:
            raise RuntimeError(
                f"--base-url {base_url}: expected {config.n} choices, got {len(choices)}"
            )
        out.append([_cut_at_stop(c.get("text", ""), config.stop) for c in choices])
        if progress:
            progress(1)
    return out
