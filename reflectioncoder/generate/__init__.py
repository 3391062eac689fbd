"""The one model client: prompts or chats in, texts out, from a local ``transformers`` model,
vLLM (when installed) or any OpenAI-compatible endpoint. Evaluation, ``build-data`` and the
demo all generate through it; what a text means (prompts, cutting) is theirs.

Each backend is a ``Generator``: ``complete(prompts, config, progress=None)`` returns
``config.n`` texts per prompt.
"""

from reflectioncoder.generate.config import SPEC_STOPS, GenerationConfig, Generator, cut_at_stop
from reflectioncoder.generate.endpoint import BackendError, OpenAIClient, RateLimiter, RetryPolicy
from reflectioncoder.generate.local import LocalModel, generate_hf
from reflectioncoder.generate.vllm_engine import VllmModel, vllm_available

__all__ = [
    "SPEC_STOPS",
    "BackendError",
    "GenerationConfig",
    "Generator",
    "LocalModel",
    "OpenAIClient",
    "RateLimiter",
    "RetryPolicy",
    "VllmModel",
    "cut_at_stop",
    "generate_hf",
    "vllm_available",
]
