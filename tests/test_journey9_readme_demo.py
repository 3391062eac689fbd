"""README's `make demo` output is the run docs/demo.md prints: the demo is seeded (data, tokenizer,
model, masks), so its loss table is the same on every machine, and README showed an older run's
(step 1 6.9510, step 200 1.2984, `loss: 6.738 -> 1.514`; `make demo` prints 6.9556, 1.2863,
6.752 -> 1.492 today, as docs/demo.md does)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _block_after(text: str, marker: str) -> str:
    return text.split(marker, 1)[1].split("```", 2)[1]


def test_readmes_demo_losses_are_the_demo_docs_run():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    demo = (REPO / "docs" / "demo.md").read_text(encoding="utf-8")
    shown = _block_after(readme, "The demo prints five headed steps").splitlines()
    run = _block_after(demo, "What it prints").splitlines()
    seeded = [
        line
        for line in shown
        if re.match(r"^( *\d+ +\d+\.\d{4} |step +loss |loss: |\[\d/5\] |\d+ reflection \+ )", line)
    ]
    assert len(seeded) >= 9, shown  # headers, the table's rows, the loss line, the data line
    for line in seeded:
        if line.startswith(tuple("0123456789")) and " samples, " in line:  # its time varies
            line = re.sub(r" in [\d.]+ s;.*", "", line)
            assert any(r.startswith(line) for r in run), line
        else:
            assert line in run, line
