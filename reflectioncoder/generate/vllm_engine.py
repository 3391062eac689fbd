"""vLLM (the authors' backend), when it is installed: ``pip install vllm`` on a CUDA machine."""

from __future__ import annotations

from reflectioncoder.errors import UserError
from reflectioncoder.generate.config import GenerationConfig, Generator


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class VllmModel(Generator):
    """A model folder served in-process by vLLM's ``LLM``; stops are vLLM's own (the text ends
    before the stop)."""

    def __init__(self, model_dir: str, tensor_parallel: int = 1, seed: int = 0) -> None:
        if not vllm_available():
            raise UserError("--backend vllm: vllm is not installed (pip install vllm)")
        from vllm import LLM

        self.llm = LLM(model=model_dir, tensor_parallel_size=tensor_parallel, seed=seed)

    def _complete_batch(self, prompts: list[str], config: GenerationConfig) -> list[list[str]]:
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
        results = self.llm.generate(prompts, params)  # vLLM schedules its own batches
        return [[o.text for o in r.outputs] for r in results]
