"""Issue 5's "trust the score": every task of HumanEval+ and MBPP+ scored on a sample that
returns the canonical answer in another dress (a tuple for a list, a float for an int, a
subclass, a value off by 1e-8 or by 1e-5, a printed flood, ``sys.exit``, ...), through the CLI;
each task's verdict (base, base and plus) must be EvalPlus 0.3.1's on the same file.

EvalPlus's verdicts are in tests/data/hidden8_evalplus_verdicts.json, recorded on 2026-12-06
with `python -m evalplus.evaluate --dataset humaneval|mbpp --samples S --parallel 2` (offline:
HUMANEVAL_OVERRIDE_PATH / MBPP_OVERRIDE_PATH on ../shared/evaldata, load 11 on 2 cores); the 7
tasks where it ran out of wall time there were run again alone (`untrusted_check`, 10 s limits);
HumanEval/15 (a 6.9 MB str subclass), Mbpp/7 and Mbpp/232 (a deque and a generator on
set-equality tasks), excluded until the sandbox fixes adb7a99 and ee45520, were recorded with
evalplus.evaluate.check_correctness (1 s minimum, factor 4). The file's "excluded" names three
tasks and why (EvalPlus failing a canonical solution here; two whose verdict is a race with the
time limit). Not dressed at all: numpy values (tests/test_hidden8_eval_agreement.py) and
Fraction/Decimal values (not plain data: a failure by issue 5's rule, where EvalPlus compares
them with `==`)."""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reflectioncoder.eval.tasks import mbpp_deserialize_inputs

REPO_ROOT = Path(__file__).resolve().parents[1]
VERDICTS = Path(__file__).resolve().parent / "data" / "hidden8_evalplus_verdicts.json"
HEAD = (
    "from collections import OrderedDict as OD\nimport collections\nimport sys, os\n"
    "class OL(list): pass\nclass OT(tuple): pass\nclass OF(float): pass\n"
    "class OI(int): pass\nclass OS(str): pass\n"
)
# What the canonical result ``r`` is returned as, by its type (the task's index picks one).
TWEAKS = {
    list: ["tuple(r)", "OL(r)", "[x for x in r]", "r[::-1]", "collections.deque(r)",
           "(x for x in r)", "[r][0]"],
    tuple: ["list(r)", "OT(r)", "tuple(x for x in r)"],
    set: ["frozenset(r)", "sorted(r)", "set(r)"],
    dict: ["OD(r)", "list(r.items())", "dict(r)"],
    float: ["r * (1 + 1e-8)", "r + 1e-5", "OF(r)", "round(r, 2)", "complex(r, 0)",
            "float('nan') if r else r"],
    int: ["float(r)", "OI(r)", "r + 0.0000001", "complex(r)", "(print('passed' * 999), r)[1]"],
    str: ["OS(r)", "r.encode()", "r + ''", "r.strip()", "bytearray(r.encode())"],
    bool: ["int(r)", "1 - r", "'yes' if r else ''", "(sys.exit(0), r)[1]",
           "(os._exit(0), r)[1]"],
    type(None): ["0", "r"],
}  # fmt: skip
DATA = {
    "humaneval": ("humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz", "HumanEval"),
    "mbpp": ("mbppplus/MbppPlus-v0.2.0.jsonl.gz", "MBPP"),
}


def tricky_samples(data_dir: Path, dataset: str) -> list[dict]:
    """One sample per task: the canonical solution, its result dressed by ``TWEAKS``."""
    with gzip.open(data_dir / DATA[dataset][0], "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    out = []
    for i, row in enumerate(rows):
        program, name = row["prompt"] + row["canonical_solution"], row["entry_point"]
        env: dict = {}
        exec(program, env)
        inputs = row["base_input"]
        if dataset == "mbpp":
            inputs = mbpp_deserialize_inputs(row["task_id"], inputs)
        tweaks = TWEAKS.get(type(env[name](*copy.deepcopy(inputs[0]))))
        if tweaks:
            program = (
                f"{HEAD}{program}\n_right = {name}\n\ndef {name}(*args):\n"
                f"    r = _right(*args)\n    return {tweaks[i % len(tweaks)]}\n"
            )
        out.append({"task_id": row["task_id"], "solution": program})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["humaneval", "mbpp"])
def test_every_task_dressed_oddly_gets_evalplus_verdict(dataset, shared_dir, tmp_path):
    samples = tmp_path / f"{dataset}.jsonl"
    rows = tricky_samples(shared_dir / "evaldata", dataset)
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "reflectioncoder", "evaluate", "--task", dataset, "--samples",
         str(samples), "--data-dir", str(shared_dir / "evaldata"), "--json", str(result),
         "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    details = json.loads(result.read_text())["details"]
    recorded = json.loads(VERDICTS.read_text())
    want = recorded[dataset]
    got = {}
    for tid, (r,) in details.items():
        got[tid] = [r["base"] == "pass", r["base"] == "pass" and r["plus"] == "pass"]
    differ = {t: (got[t], want[t]) for t in want if got[t] != want[t]}
    assert not differ, f"(ours, EvalPlus 0.3.1) differ on {len(differ)} tasks: {differ}"
    assert set(got) == set(want) | {t for t in recorded["excluded"] if t in got}
    assert 0 < sum(b for b, _ in want.values()) < len(want)  # both verdicts occur
