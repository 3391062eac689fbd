"""A huge output (millions of elements) travels as a digest of its elements' text. That text
must be the plain data the element encodes to, never the element's own ``__repr__``: an object
whose repr copies the expected element's text would otherwise pass a huge-list task."""

import pytest

from reflectioncoder.eval.sandbox import codec

ROWS = 11


@pytest.fixture(autouse=True)
def small_huge(monkeypatch):
    """The digest path at toy sizes: 11 rows of 50 elements are 'huge' here."""
    monkeypatch.setattr(codec, "HUGE_MIN_LEN", 10)
    monkeypatch.setattr(codec, "HUGE_ITEMS", 500)


class Forged:
    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return repr(self.value)


class Count(int):
    def __repr__(self):
        return "99"


def _huge(row):
    return [row] * ROWS


def test_elements_whose_repr_copies_the_expected_text_do_not_match():
    expected = codec.encode_output(_huge(tuple(range(50))))
    assert "$sha" in expected
    assert codec.encode_output(_huge(tuple(range(50)))) == expected
    assert codec.encode_output(_huge(tuple(Forged(j) for j in range(50)))) != expected
    assert codec.encode_output(_huge(list(range(50)))) != expected  # a list is not a tuple


def test_a_subclassed_element_reads_as_its_base_value_not_its_repr():
    expected = codec.encode_output(_huge(tuple(range(50))))
    assert codec.encode_output(_huge(tuple(Count(j) for j in range(50)))) == expected
    other = codec.encode_output(_huge(tuple(range(1, 51))))
    assert codec.encode_output(_huge(tuple(Count(j + 1) for j in range(50)))) == other != expected
