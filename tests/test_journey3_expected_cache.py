"""The expected-output cache after a run killed while appending to it (HumanEval/130's line is
124 MB: a Ctrl-C can land inside it): the next runs score as before and leave the cache whole.
The torn line used to stop every later run ("not JSON: Expecting ',' delimiter", no file named)
and the next append continued it, so two tasks were lost for good."""

from __future__ import annotations

import json

from reflectioncoder.cli import main


def _score(samples, shared_dir, out, limit: int) -> dict:
    argv = ["evaluate", "--task", "humaneval", "--samples", str(samples), "--limit", str(limit)]
    argv += ["--data-dir", str(shared_dir / "evaldata"), "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_a_torn_cache_line_is_computed_again(tmp_path, shared_dir, monkeypatch):
    monkeypatch.setenv("REFLECTIONCODER_CACHE", str(tmp_path / "cache"))
    samples = shared_dir / "reference-samples/ReflectionCoder-CL-7B/humaneval.jsonl"
    first = _score(samples, shared_dir, tmp_path / "a.json", 3)
    (cache,) = (tmp_path / "cache" / "eval").iterdir()
    cache.write_bytes(cache.read_bytes()[:-100])  # killed inside the last line
    again = _score(samples, shared_dir, tmp_path / "b.json", 3)
    assert (
        again["scores"]
        == first["scores"]
        == {
            "HumanEval": {"pass@1": 1.0},
            "HumanEval+": {"pass@1": 1.0},
        }
    )
    more = _score(samples, shared_dir, tmp_path / "c.json", 4)  # appends after the torn tail
    assert more["scores"]["HumanEval+"] == {"pass@1": 1.0}
    rows = [json.loads(line) for line in cache.read_bytes().splitlines()]  # every line whole
    assert {r["task_id"] for r in rows} == {f"HumanEval/{i}" for i in range(4)}
    assert cache.read_bytes().endswith(b"\n")


def test_a_line_an_older_version_appended_to_a_torn_one_is_left_out(
    tmp_path, shared_dir, monkeypatch
):
    """Two rows on one line (the old append after a torn tail): both tasks computed again,
    never scored against outputs decoded across the two rows (HumanEval+ fell to 66.7)."""
    monkeypatch.setenv("REFLECTIONCODER_CACHE", str(tmp_path / "cache"))
    samples = shared_dir / "reference-samples/ReflectionCoder-CL-7B/humaneval.jsonl"
    _score(samples, shared_dir, tmp_path / "a.json", 3)
    (cache,) = (tmp_path / "cache" / "eval").iterdir()
    first, second, third = cache.read_bytes().splitlines(keepends=True)
    cache.write_bytes(first + second[:-100] + third)
    again = _score(samples, shared_dir, tmp_path / "b.json", 3)
    assert again["scores"]["HumanEval+"] == {"pass@1": 1.0}
    assert cache.read_bytes().startswith(first + second[:-100] + third)  # appended after it
