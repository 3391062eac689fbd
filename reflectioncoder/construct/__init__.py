"""Reflection-sequence construction by real execution (SPEC §1 data), for the demo and tests.

``reflectioncoder build-data --out FILE --n N --seed S`` writes ReflectionSeq jsonl.
"""

from reflectioncoder.construct.backend import Backend, Draft, MutationBackend, OpenAIBackend, Turn
from reflectioncoder.construct.build import build_dataset, write_jsonl
from reflectioncoder.construct.problems import Problem, TestCase, generate_problems

__all__ = [
    "Backend",
    "Draft",
    "MutationBackend",
    "OpenAIBackend",
    "Problem",
    "TestCase",
    "Turn",
    "build_dataset",
    "generate_problems",
    "write_jsonl",
]
