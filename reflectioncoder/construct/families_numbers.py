"""Template families over integers: predicates applied to a list (count, filter, any, all, ...)
and number functions."""

from __future__ import annotations

from collections.abc import Iterator

from reflectioncoder.construct.templates import Template, random_ints

_PREDICATES: list[tuple[str, str, str]] = [
    ("even", "even", "x % 2 == 0"),
    ("odd", "odd", "x % 2 == 1"),
    ("positive", "positive", "x > 0"),
    ("negative", "negative", "x < 0"),
    ("nonzero", "nonzero", "x != 0"),
]
_PREDICATES += [(f"greater_than_{k}", f"greater than {k}", f"x > {k}") for k in range(1, 10)]
_PREDICATES += [(f"less_than_{k}", f"less than {k}", f"x < {k}") for k in range(1, 10)]
_PREDICATES += [(f"at_least_{k}", f"at least {k}", f"x >= {k}") for k in range(2, 10)]
_PREDICATES += [(f"divisible_by_{k}", f"divisible by {k}", f"x % {k} == 0") for k in range(3, 8)]


def predicate_templates() -> Iterator[Template]:
    ints = lambda r: (random_ints(r),)
    short = lambda r: (random_ints(r, max_len=4),)
    for suffix, words, cond in _PREDICATES:
        yield Template(
            "sum_if", f"sum_{suffix}", "(nums: list[int]) -> int",
            f"Return the sum of the numbers in nums that are {words}.",
            f"""
            total = 0
            for x in nums:
                if {cond}:
                    total += x
            return total
            """, ints)  # fmt: skip
        yield Template(
            "count_if", f"count_{suffix}", "(nums: list[int]) -> int",
            f"Return how many numbers in nums are {words}.",
            f"""
            count = 0
            for x in nums:
                if {cond}:
                    count += 1
            return count
            """, ints)  # fmt: skip
        yield Template(
            "filter_if", f"keep_{suffix}", "(nums: list[int]) -> list[int]",
            f"Return the numbers in nums that are {words}, in their original order.",
            f"""
            result = []
            for x in nums:
                if {cond}:
                    result.append(x)
            return result
            """, ints)  # fmt: skip
        yield Template(
            "index_if", f"index_of_first_{suffix}", "(nums: list[int]) -> int",
            f"Return the index of the first number in nums that is {words}, or -1 if none is.",
            f"""
            for i in range(len(nums)):
                x = nums[i]
                if {cond}:
                    return i
            return -1
            """, ints)  # fmt: skip
        yield Template(
            "all_if", f"all_{suffix}", "(nums: list[int]) -> bool",
            f"Return True if every number in nums is {words} (True for an empty list).",
            f"""
            for x in nums:
                if not {cond}:
                    return False
            return True
            """, short)  # fmt: skip
        yield Template(
            "any_if", f"any_{suffix}", "(nums: list[int]) -> bool",
            f"Return True if at least one number in nums is {words}.",
            f"""
            for x in nums:
                if {cond}:
                    return True
            return False
            """, short)  # fmt: skip


def number_templates() -> Iterator[Template]:
    terms = [
        ("sum_up_to", "i", "the numbers"),
        ("sum_of_squares", "i * i", "the squares"),
        ("sum_of_cubes", "i * i * i", "the cubes"),
        ("sum_odd_terms", "2 * i + 1", "2*i + 1 for the numbers i"),
        ("sum_pronic", "i * (i + 1)", "i*(i + 1) for the numbers i"),
    ]
    for name, term, words in terms:
        yield Template(
            "series", name, "(n: int) -> int",
            f"Return the sum of {words} from 1 to n inclusive (0 when n < 1).",
            f"""
            total = 0
            for i in range(1, n + 1):
                total += {term}
            return total
            """, lambda r: (r.randint(0, 12),))  # fmt: skip
    for k in range(2, 10):
        yield Template(
            "multiples", f"sum_multiples_of_{k}", "(n: int) -> int",
            f"Return the sum of the positive multiples of {k} that are below n.",
            f"""
            total = 0
            for i in range(1, n):
                if i % {k} == 0:
                    total += i
            return total
            """, lambda r: (r.randint(0, 40),))  # fmt: skip
    for k in range(2, 8):
        yield Template(
            "power_table", f"powers_of_{k}", "(n: int) -> list[int]",
            f"Return the list [{k}**0, {k}**1, ..., {k}**(n-1)] of the first n powers of {k}.",
            f"""
            result = []
            value = 1
            for _ in range(n):
                result.append(value)
                value *= {k}
            return result
            """, lambda r: (r.randint(0, 6),))  # fmt: skip
    yield Template(
        "number", "factorial", "(n: int) -> int", "Return n! (1 when n is 0).",
        """
        result = 1
        for i in range(2, n + 1):
            result *= i
        return result
        """, lambda r: (r.randint(0, 9),))  # fmt: skip
    yield Template(
        "number", "fibonacci", "(n: int) -> int",
        "Return the n-th Fibonacci number, with fibonacci(0) == 0 and fibonacci(1) == 1.",
        """
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        return a
        """, lambda r: (r.randint(0, 15),))  # fmt: skip
    yield Template(
        "number", "digit_sum", "(n: int) -> int", "Return the sum of the decimal digits of n >= 0.",
        """
        total = 0
        while n > 0:
            total += n % 10
            n //= 10
        return total
        """, lambda r: (r.randint(0, 99999),))  # fmt: skip
    yield Template(
        "number", "count_digits", "(n: int) -> int",
        "Return the number of decimal digits of n >= 0 (1 for 0).",
        """
        if n == 0:
            return 1
        count = 0
        while n > 0:
            count += 1
            n //= 10
        return count
        """, lambda r: (r.choice([0, r.randint(1, 9), r.randint(10, 99999)]),))  # fmt: skip
    yield Template(
        "number", "is_prime", "(n: int) -> bool", "Return True if n is a prime number.",
        """
        if n < 2:
            return False
        for d in range(2, n):
            if n % d == 0:
                return False
        return True
        """, lambda r: (r.randint(0, 40),))  # fmt: skip
    yield Template(
        "number", "gcd", "(a: int, b: int) -> int",
        "Return the greatest common divisor of two non-negative integers.",
        """
        while b != 0:
            a, b = b, a % b
        return a
        """, lambda r: (r.randint(0, 60), r.randint(0, 60)))  # fmt: skip
    yield Template(
        "number", "power", "(base: int, exp: int) -> int",
        "Return base raised to the non-negative power exp, using repeated multiplication.",
        """
        result = 1
        for _ in range(exp):
            result *= base
        return result
        """, lambda r: (r.randint(-4, 6), r.randint(0, 5)))  # fmt: skip
    yield Template(
        "number", "reverse_digits", "(n: int) -> int",
        "Return the number whose decimal digits are those of n >= 0 in reverse order.",
        """
        result = 0
        while n > 0:
            result = result * 10 + n % 10
            n //= 10
        return result
        """, lambda r: (r.randint(0, 9999),))  # fmt: skip
    yield Template(
        "number", "count_divisors", "(n: int) -> int",
        "Return how many positive integers divide n >= 1.",
        """
        count = 0
        for d in range(1, n + 1):
            if n % d == 0:
                count += 1
        return count
        """, lambda r: (r.randint(1, 40),))  # fmt: skip
