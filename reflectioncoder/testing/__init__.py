"""Fixtures for tests and benchmarks, never used by a command.

- ``toy_jsonl``: small SPEC §1 jsonl files (tiny arithmetic functions, first wrong, then
  fixed) for trainer tests and smoke runs.
- ``synthetic``: synthetic reflection samples with realistic lengths, as ``TokenizedSample``
  objects directly (random content ids, no tokenizer), for packing and step benchmarks.
- ``tiny_model``: a tiny random Llama and a tokenizer trained on a few texts, saved as a
  Hugging Face folder, for tests that hand ``--model`` a folder.
- ``cli``: ``reflectioncoder train`` command lines as a user types them.
- ``http_stub``: scripted OpenAI-compatible servers on loopback (``JsonHandler``, ``serving``)
  for tests of the HTTP clients.
- ``live_run``: a real tiny-preset launch started and read until its ranks train, for tests
  that signal, kill or relaunch a run while it trains.
- ``heap``: the CPU heap a packed forward + loss leaves held (``held_by_forward``), the
  measure the memory plan's tests and bench/bench_activation_memory.py check it against.
"""
