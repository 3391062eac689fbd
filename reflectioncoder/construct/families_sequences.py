"""Template families over sequences: strings and lists."""

from __future__ import annotations

from collections.abc import Iterator

from reflectioncoder.construct.templates import (
    Template,
    random_ints,
    random_maybe_sorted,
    random_nonempty_ints,
    random_sentence,
    random_text,
    random_word,
)


def string_templates() -> Iterator[Template]:
    sentence = lambda r: (random_sentence(r),)
    for c in "aeiorstn":
        yield Template(
            "count_char", f"count_letter_{c}", "(s: str) -> int",
            f"Return how many times the letter '{c}' occurs in s.",
            f"""
            count = 0
            for ch in s:
                if ch == '{c}':
                    count += 1
            return count
            """, sentence)  # fmt: skip
        yield Template(
            "remove_char", f"remove_letter_{c}", "(s: str) -> str",
            f"Return s with every letter '{c}' removed.",
            f"""
            result = ''
            for ch in s:
                if ch != '{c}':
                    result += ch
            return result
            """, sentence)  # fmt: skip
        yield Template(
            "first_char", f"index_of_letter_{c}", "(s: str) -> int",
            f"Return the index of the first '{c}' in s, or -1 if s has none.",
            f"""
            for i in range(len(s)):
                if s[i] == '{c}':
                    return i
            return -1
            """, lambda r: (random_word(r),))  # fmt: skip
    yield Template(
        "string", "count_vowels", "(s: str) -> int", "Return the number of vowels (aeiou) in s.",
        """
        count = 0
        for ch in s:
            if ch in 'aeiou':
                count += 1
        return count
        """, sentence)  # fmt: skip
    yield Template(
        "string", "reverse_string", "(s: str) -> str", "Return s reversed.",
        """
        result = ''
        for i in range(len(s) - 1, -1, -1):
            result += s[i]
        return result
        """, lambda r: (random_word(r),))  # fmt: skip
    yield Template(
        "string", "is_palindrome", "(s: str) -> bool",
        "Return True if s reads the same forwards and backwards.",
        """
        for i in range(len(s) // 2):
            if s[i] != s[len(s) - 1 - i]:
                return False
        return True
        """, lambda r: (random_text(r),))  # fmt: skip
    yield Template(
        "string", "count_words", "(s: str) -> int",
        "Return the number of space-separated words in s.",
        """
        count = 0
        for word in s.split(' '):
            if len(word) > 0:
                count += 1
        return count
        """, sentence)  # fmt: skip
    yield Template(
        "string", "longest_word_length", "(s: str) -> int",
        "Return the length of the longest space-separated word in s (0 if there is none).",
        """
        best = 0
        for word in s.split():
            if len(word) > best:
                best = len(word)
        return best
        """, sentence)  # fmt: skip
    yield Template(
        "string", "capitalize_words", "(s: str) -> str",
        "Return s with the first letter of every space-separated word in upper case.",
        """
        words = []
        for word in s.split(' '):
            if len(word) > 0:
                word = word[0].upper() + word[1:]
            words.append(word)
        return ' '.join(words)
        """, sentence)  # fmt: skip
    short_or_word = lambda r: (r.choice(["", "ab"]) if r.random() < 0.3 else random_word(r),)
    for n in range(2, 5):
        yield Template(
            "string", f"first_{n}_chars", "(s: str) -> str",
            f"Return the first {n} characters of s (all of s if it is shorter).",
            f"""
            result = ''
            for i in range(min({n}, len(s))):
                result += s[i]
            return result
            """, short_or_word)  # fmt: skip


def list_templates() -> Iterator[Template]:
    ints = lambda r: (random_ints(r),)
    short = lambda r: (random_ints(r, max_len=5),)
    for name, cmp, words in [("max_or_none", ">", "largest"), ("min_or_none", "<", "smallest")]:
        yield Template(
            "list", name, "(nums: list[int]) -> int | None",
            f"Return the {words} number in nums, or None if nums is empty.",
            f"""
            if len(nums) == 0:
                return None
            best = nums[0]
            for x in nums[1:]:
                if x {cmp} best:
                    best = x
            return best
            """, ints)  # fmt: skip
    yield Template(
        "list", "index_of_max", "(nums: list[int]) -> int",
        "Return the index of the first largest number in the non-empty list nums.",
        """
        best = 0
        for i in range(1, len(nums)):
            if nums[i] > nums[best]:
                best = i
        return best
        """, lambda r: (random_nonempty_ints(r),))  # fmt: skip
    yield Template(
        "list", "running_sum", "(nums: list[int]) -> list[int]",
        "Return the running sums of nums: element i is nums[0] + ... + nums[i].",
        """
        result = []
        total = 0
        for x in nums:
            total += x
            result.append(total)
        return result
        """, ints)  # fmt: skip
    yield Template(
        "list", "differences", "(nums: list[int]) -> list[int]",
        "Return the differences nums[i + 1] - nums[i] between neighbouring numbers.",
        """
        result = []
        for i in range(len(nums) - 1):
            result.append(nums[i + 1] - nums[i])
        return result
        """, ints)  # fmt: skip
    yield Template(
        "list", "is_sorted", "(nums: list[int]) -> bool",
        "Return True if nums is sorted in non-decreasing order.",
        """
        for i in range(len(nums) - 1):
            if nums[i] > nums[i + 1]:
                return False
        return True
        """, lambda r: (random_maybe_sorted(r),))  # fmt: skip
    yield Template(
        "list", "reverse_list", "(nums: list[int]) -> list[int]", "Return nums in reverse order.",
        """
        result = []
        for i in range(len(nums) - 1, -1, -1):
            result.append(nums[i])
        return result
        """, ints)  # fmt: skip
    yield Template(
        "list", "unique_in_order", "(nums: list[int]) -> list[int]",
        "Return the numbers of nums without repeats, keeping the first occurrence of each.",
        """
        seen = []
        for x in nums:
            if x not in seen:
                seen.append(x)
        return seen
        """, lambda r: ([r.randint(0, 5) for _ in range(r.randint(0, 8))],))  # fmt: skip
    yield Template(
        "list", "count_equal_neighbours", "(nums: list[int]) -> int",
        "Return how many times two neighbouring numbers in nums are equal.",
        """
        count = 0
        for i in range(1, len(nums)):
            if nums[i] == nums[i - 1]:
                count += 1
        return count
        """, lambda r: ([r.randint(0, 3) for _ in range(r.randint(0, 8))],))  # fmt: skip
    yield Template(
        "list", "second_largest", "(nums: list[int]) -> int | None",
        "Return the second largest distinct number in nums, or None if there is none.",
        """
        values = sorted(set(nums))
        if len(values) < 2:
            return None
        return values[-2]
        """, short)  # fmt: skip
    for k in range(1, 10):
        yield Template(
            "map", f"add_{k}_to_each", "(nums: list[int]) -> list[int]",
            f"Return a new list with {k} added to every number of nums.",
            f"""
            result = []
            for x in nums:
                result.append(x + {k})
            return result
            """, short)  # fmt: skip
    for k in range(2, 10):
        yield Template(
            "map", f"multiply_each_by_{k}", "(nums: list[int]) -> list[int]",
            f"Return a new list with every number of nums multiplied by {k}.",
            f"""
            result = []
            for x in nums:
                result.append(x * {k})
            return result
            """, short)  # fmt: skip
    for lo, hi in [(0, 5), (0, 9), (1, 10), (-3, 3), (2, 8), (-5, 5)]:
        yield Template(
            "clamp", f"clamp_{lo}_{hi}".replace("-", "minus_"), "(nums: list[int]) -> list[int]",
            f"Return nums with every number below {lo} replaced by {lo} and every number "
            f"above {hi} replaced by {hi}.",
            f"""
            result = []
            for x in nums:
                if x < {lo}:
                    result.append({lo})
                elif x > {hi}:
                    result.append({hi})
                else:
                    result.append(x)
            return result
            """, ints)  # fmt: skip
    for k in range(1, 4):
        yield Template(
            "rotate", f"rotate_left_{k}", "(nums: list[int]) -> list[int]",
            f"Return nums rotated left by {k} position(s) (an empty list stays empty).",
            f"""
            if len(nums) == 0:
                return []
            shift = {k} % len(nums)
            return nums[shift:] + nums[:shift]
            """, lambda r: (random_ints(r, max_len=6),))  # fmt: skip
