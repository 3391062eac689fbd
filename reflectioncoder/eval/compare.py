"""EvalPlus 0.3.1's output comparison, run outside the sandbox on decoded plain data: ``==``,
then ``np.allclose`` for floats (with EvalPlus's sticky ``atol``), and the special oracles of
its ``eval/_special_oracle.py`` (HumanEval/32, MBPP's set-equality and not-None tasks, ...)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from reflectioncoder.eval.sandbox import codec
from reflectioncoder.eval.tasks import PythonTask

__all__ = ["MBPP_OUTPUT_NOT_NONE", "MBPP_OUTPUT_SET_EQ", "Comparer", "outputs_match"]

# Special oracles of EvalPlus 0.3.1 (eval/_special_oracle.py), by entry point.
MBPP_OUTPUT_NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}
MBPP_OUTPUT_SET_EQ = {
    "similar_elements",
    "find_char_long",
    "common_in_nested_lists",
    "extract_singly",
    "larg_nnum",
    "intersection_array",
    "find_dissimilar",
    "Diff",
}


def _surface_area(base_edge: float, height: float) -> int:  # Mbpp/581: height is perpendicular
    slant = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 4 * (base_edge * slant) / 2)


def _digit_distance_nums(a: int, b: int) -> int:  # Mbpp/558: pad with zeros to equal length
    sa, sb = str(a), str(b)
    width = max(len(sa), len(sb))
    return sum(abs(int(x) - int(y)) for x, y in zip(sa.zfill(width), sb.zfill(width), strict=True))


def _poly(xs: list, x: float) -> float:  # HumanEval/32
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def _is_floats(x: Any) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    if isinstance(x, np.ndarray):
        return x.dtype == np.float64 or x.dtype == np.float32
    return False


def _bounded_set(values: Any) -> set:
    """``set(values)`` for untrusted values: refused (ValueError) when more than a few unequal
    values share a hash, which would make building the set quadratic (a crafted output)."""
    items = list(values)
    hashes = list(map(hash, items))
    if len(items) - len(set(hashes)) > codec.COLLISIONS_ALLOWED:  # duplicates, or collisions
        distinct: dict[int, list] = {}
        for h, x in zip(hashes, items, strict=True):
            seen = distinct.setdefault(h, [])
            if all(x != y for y in seen):
                if len(seen) >= codec.COLLISIONS_ALLOWED:
                    raise ValueError("values with colliding hashes")
                seen.append(x)
    return set(items)


def _digest_of(value: Any) -> Any:
    """``value`` known by its digest, as the box ships a big plain string or list: the box
    ships a subclass of one whole (it is read through its base type), and equal values must
    compare equal however they crossed."""
    if isinstance(value, codec.Digest):
        return value
    tagged = codec.encode_output(value)
    if isinstance(tagged, dict) and "$sha" in tagged:
        return codec.Digest(*tagged["$sha"])
    return value


class Comparer:
    """EvalPlus's per-input check, run here on decoded plain data. Keeps EvalPlus's state:
    ``atol`` becomes 1e-6 for the rest of a phase once a float expected output is seen."""

    def __init__(self, task: PythonTask) -> None:
        self.task = task
        self.atol = task.atol

    def __call__(self, inp: Any, out: Any, exp: Any) -> bool:
        try:
            return self._check(inp, out, exp)
        except Exception:  # any error while comparing is a failed test, as in EvalPlus
            return False

    def _check(self, inp: Any, out: Any, exp: Any) -> bool:
        task, ep = self.task, self.task.entry_point
        if isinstance(out, codec.Opaque) and not (
            task.dataset == "mbpp" and ep in MBPP_OUTPUT_NOT_NONE
        ):
            return False
        if isinstance(exp, codec.Digest):
            return _digest_of(out) == exp  # big outputs: equal iff same digest
        if isinstance(out, codec.Digest):
            return False
        exact = out == exp
        if task.dataset == "mbpp":
            if ep == "are_equivalent":  # Mbpp/164
                exact = True
            elif ep == "sum_div":  # Mbpp/295
                exact = exact or out == 0
            elif ep == "surface_Area":  # Mbpp/581
                exact = exact or abs(out - _surface_area(*inp)) <= self.atol
            elif ep == "digit_distance_nums":  # Mbpp/558
                exact = exact or out == _digit_distance_nums(*inp)
            elif ep in MBPP_OUTPUT_SET_EQ:
                exact = _bounded_set(out) == set(exp)
            elif ep in MBPP_OUTPUT_NOT_NONE:  # expected is "the output is not None"
                exact = out == exp if isinstance(out, bool) else exp == (out is not None)
        if task.dataset == "humaneval" and ep == "find_zero":
            return abs(_poly(*inp, out)) <= self.atol
        if self.atol == 0 and _is_floats(exp):
            self.atol = 1e-6
        if not exact and self.atol != 0:
            if type(out) is not type(exp):
                return False
            if isinstance(exp, (list, tuple)) and len(out) != len(exp):
                return False
            return bool(np.allclose(out, exp, rtol=1e-07, atol=self.atol))
        return bool(exact)


def outputs_match(task: PythonTask, inputs: list, outputs: list, expected: list) -> list[bool]:
    """Per-input verdicts of one phase (EvalPlus semantics), on already-decoded outputs."""
    cmp = Comparer(task)
    return [cmp(i, o, e) for i, o, e in zip(inputs, outputs, expected, strict=True)]
