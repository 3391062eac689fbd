"""vLLM (the authors' backend), when it is installed: ``pip install vllm`` on a CUDA machine."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from reflectioncoder.generate.config import GenerationConfig


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class VllmModel:
    """A model folder served in-process by vLLM's ``LLM``; stops are vLLM's own (the text ends
    before the stop)."""

    def __init__(self, model_dir: str, tensor_parallel: int = 1, seed: int = 0) -> None:
        if not vllm_available():
            raise RuntimeError("--backend vllm: vllm is not installed (pip install vllm)")
        from vllm import LLM

        self.llm = LLM(model=model_dir, tensor_parallel_size=tensor_parallel, seed=seed)

    def complete(
        self,
        prompts: Sequence[str],
        config: GenerationConfig,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=config.n,
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_new_tokens,
            skip_special_tokens=config.skip_special_tokens,
            spaces_between_special_tokens=False,
            stop=list(config.all_stops),
        )
        results = self.llm.generate(list(prompts), params)
        if progress:
            progress(len(prompts))
        return [[o.text for o in r.outputs] for r in results]
