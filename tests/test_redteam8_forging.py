"""Red team, round 8: MultiPL-E forgeries in the two languages the table left "not tested".

TypeScript: a wrong ``add`` that reads its own compiled program, the source folder and the
environment for the nonce, prints what it finds and exits 0, fails (the nonce is on descriptor
3 only); one that patches ``node:assert`` passed, MultiPL-E's own limit, as in JS (since round
9 it fails: the scorer freezes node:assert before the completion runs).
PHP: the tests compare with ``!==`` and throw, and no completion can overload either; an
exception handler that exits 0, or an early ``exit(0)``, ends the program before the nonce.
"""

from __future__ import annotations

import pytest
from test_multiple_forging import _score

TS_READS_ITSELF = (
    "  const fs = require('fs');\n"
    "  const proc = (globalThis as any).process;\n"
    "  const dirs = [proc.cwd(), require('path').dirname(proc.argv[1])];\n"
    "  let text = JSON.stringify(proc.env) + proc.argv.join(' ');\n"
    "  for (const d of dirs) {\n"
    "    for (const f of fs.readdirSync(d)) {\n"
    "      try { text += fs.readFileSync(d + '/' + f, 'latin1'); } catch (e) {}\n"
    "    }\n"
    "  }\n"
    "  for (const m of text.match(/rc-done-[0-9a-f]{32}/g) || []) console.log(m);\n"
    "  proc.exit(0);\n"
    "  return 0;\n}\n"
)
TS_REDEFINES = "  return x * y;\n}\nrequire('node:assert').deepEqual = () => {};\n"

PHP_EXITS = {
    "exception handler exits 0": (
        "    set_exception_handler(function ($e) { exit(0); });\n    return $x * $y;\n}\n"
    ),
    "shutdown handler exits 0": (
        "    register_shutdown_function(function () { exit(0); });\n    return $x * $y;\n}\n"
    ),
    "early exit(0)": "    exit(0);\n}\n",
}


@pytest.mark.slow  # tsc: 5-7 s a sample here
def test_typescript_reading_itself_finds_no_nonce(shared_dir):
    res = _score("ts", TS_READS_ITSELF, shared_dir)
    assert res.status == "fail", (res.reason, res.stderr_tail, res.stdout_tail)


@pytest.mark.slow  # tsc: 5-7 s a sample here
def test_typescript_patching_node_assert_gains_nothing(shared_dir):
    """Round 9: node:assert is frozen before the completion's code runs (it passed before)."""
    res = _score("ts", TS_REDEFINES, shared_dir)
    assert res.status == "fail", (res.reason, res.stderr_tail, res.stdout_tail)


@pytest.mark.parametrize("attack", sorted(PHP_EXITS))
def test_php_exits_gain_nothing(attack, shared_dir):
    res = _score("php", PHP_EXITS[attack], shared_dir)
    assert res.status == "fail", (res.reason, res.stderr_tail, res.stdout_tail)


@pytest.mark.slow
def test_typescript_reading_itself_forges_a_nonce_in_the_source(shared_dir, monkeypatch):
    """With the nonce put back in the source, the same completion passes: its failing above is
    the descriptor's doing, not a broken attack."""
    import dataclasses

    from reflectioncoder.eval import multiple as ml

    lang = dataclasses.replace(ml.LANGUAGES["ts"], nonce='console.log("{nonce}");')
    monkeypatch.setitem(ml.LANGUAGES, "ts", lang)
    assert ml.nonce_in_source("ts")
    res = _score("ts", TS_READS_ITSELF, shared_dir)
    assert res.status == "pass", (res.reason, res.stderr_tail, res.stdout_tail)
