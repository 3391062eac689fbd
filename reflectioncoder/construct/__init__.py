"""Reflection-sequence construction by real execution (SPEC §1 data), for the demo and tests.

``reflectioncoder build-data --out FILE --n N --seed S`` writes ReflectionSeq jsonl from the
template problems; ``--problems FILE`` from the user's own (``from_problems``, resumable).
"""

from reflectioncoder.construct.backend import (
    Backend,
    Draft,
    MutationBackend,
    OpenAIBackend,
    TransformersBackend,
    Turn,
)
from reflectioncoder.construct.build import build_dataset, write_jsonl
from reflectioncoder.construct.problems import Problem, TestCase, generate_problems
from reflectioncoder.generate import BackendError

__all__ = [
    "Backend",
    "BackendError",
    "Draft",
    "MutationBackend",
    "OpenAIBackend",
    "Problem",
    "TestCase",
    "TransformersBackend",
    "Turn",
    "build_dataset",
    "generate_problems",
    "write_jsonl",
]
