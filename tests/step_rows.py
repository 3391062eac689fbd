"""The step model's rows (``bench.step_model.model_rows``), computed once per test process:
one call takes 5-10 s on 2 CPU cores and six documentation tests read the same rows."""

import copy
import functools

from bench import step_model as sm


@functools.cache
def _rows() -> list[dict]:
    return sm.model_rows()


def model_rows() -> list[dict]:
    """A copy of today's rows, so that no test can change another's."""
    return copy.deepcopy(_rows())
