"""What the docs show is what a new user gets today:
- docs/training.md's `OUT/metrics.jsonl` row has a real row's fields, and a refusal it shows is
  the line `train` prints;
- each Python block of README.md and docs/*.md defines or imports every name it uses, but those
  a leading `# given: a, b` comment says the reader supplies;
- docs/demo.md's output is one run's, with no line today's code does not print;
- docs/loss.md's bench_loss rows name the providers it runs, and the packing figures
  docs/data.md points to are today's bench output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for block in PYTHON_BLOCK.finditer(text):
            line = text[: block.start()].count("\n") + 1
            found.append((f"{path.relative_to(REPO)}:{line}", block.group(1)))
    return found


def undefined_names(source: str) -> set[str]:
    """The names pyflakes' rule F821 (through ruff) finds used and never defined or imported."""
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F821",
         "--output-format", "concise", "--stdin-filename", "block.py", "-"],
        input=source, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode in (0, 1) and "invalid-syntax" not in run.stdout, run.stdout + run.stderr
    return set(re.findall(r"F821 Undefined name `(\w+)`", run.stdout))


@pytest.mark.parametrize("where, source", python_blocks(), ids=[w for w, _ in python_blocks()])
def test_python_block_names_come_from_it_or_the_reader(where, source):
    given = re.match(r"# given: (.*(?:\n# .*)*)", source)
    supplied = set(re.findall(r"\b(\w+)\b(?![^(]*\))", given.group(1))) if given else set()
    missing = undefined_names(source) - supplied
    assert not missing, f"{where}: uses {sorted(missing)} without importing or defining them"


def test_an_undefined_name_is_found():
    assert undefined_names("import os\nx = torch.ones(2)\nos.sep\n") == {"torch"}


def _documented_metrics_row() -> dict:
    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    after = text.split("`OUT/metrics.jsonl`, one row per step", 1)[1]
    block = re.search(r"```json\n(.*?)\n```", after, re.S).group(1)
    return json.loads(block)


def test_training_doc_metrics_row_has_a_real_rows_fields(tmp_path, seed):
    """A CPU run without logging.peak_tflops: no mfu / hfu, every other field."""
    from test_trainer import tiny_config

    from reflectioncoder.train.trainer import Trainer

    trainer = Trainer(tiny_config(tmp_path, seed, n=8))
    try:
        trainer.train()
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    written = [list(row) for row in rows if "loss" in row]
    assert written and all(keys == written[0] for keys in written)
    assert list(_documented_metrics_row()) == written[0]


def test_the_loss_plot_adds_no_line_to_the_log_on_a_fresh_machine(tmp_path):
    """The CLI logs at INFO; matplotlib's first run there logs `generated new fontManager` at
    INFO, a line docs/demo.md does not show. A fresh MPLCONFIGDIR is such a first run."""
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from reflectioncoder.train.metrics import plot_losses\n"
        "plot_losses([{'step': 1, 'loss': 2.0}, {'step': 2, 'loss': 1.0}], sys.argv[1])\n"
    )
    env = {"MPLCONFIGDIR": str(tmp_path / "mpl"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "loss.png")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert run.stdout + run.stderr == ""


def test_demo_doc_output_is_one_runs():
    """docs/demo.md's printed run is one run: its progress lines' clock fits in the training time
    its summary gives, and the summary's steps fit in its total."""
    text = (REPO / "docs" / "demo.md").read_text(encoding="utf-8")
    block = text.split("What it prints", 1)[1].split("```", 2)[1]
    line = r"^train: \d+/\d+ steps .*\((\d+) s(?:, [\d.]+ (?:s|min|h) left)?\)$"
    last_progress = int(re.findall(line, block, re.M)[-1])
    parts = re.search(
        r"^time +data (\d+) s, tokenizer (\d+) s, train (\d+) s, generate (\d+) s$", block, re.M
    )
    total = int(re.search(r"^demo finished in (\d+) s$", block, re.M).group(1))
    data, tokenizer, train, generate = (int(x) for x in parts.groups())
    assert last_progress <= train
    assert data + tokenizer + train + generate <= total + 2  # four parts, each rounded


def test_loss_doc_bench_rows_name_providers_bench_loss_prints():
    """docs/loss.md's `python -m bench.bench_loss` table: each row's provider is one the bench
    runs today, and each row has the header's columns."""
    from bench.bench_loss import PROVIDERS

    text = (REPO / "docs" / "loss.md").read_text(encoding="utf-8")
    block = text.split("Benchmark: `python -m bench.bench_loss`", 1)[1].split("```", 2)[1]
    header, *rows = [ln for ln in block.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert rows
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] in PROVIDERS and len(cells) == header.count("|") - 1, row


def test_packing_results_docs_point_to_are_todays_bench_output():
    """docs/data.md sends the reader to bench/results/packing.md for the packing figures: it is
    what today's `python -m bench.bench_packing --md` writes from the rows beside it."""
    from bench.bench_packing import to_markdown

    rows = json.loads((REPO / "bench/results/packing.json").read_text(encoding="utf-8"))
    written = (REPO / "bench/results/packing.md").read_text(encoding="utf-8")
    assert "bench/results/packing.md" in (REPO / "docs/data.md").read_text(encoding="utf-8")
    assert to_markdown(rows, rows[0]["samples"], 16) == written  # 16: the bench's --batch


def test_training_doc_relaunch_refusal_is_what_train_prints(tmp_path, monkeypatch, capsys):
    """docs/training.md's `$ reflectioncoder train ...` into README's finished runs/tiny: the
    command's one line, as the doc shows it."""
    import shlex
    import shutil

    from reflectioncoder.cli import main as cli_main

    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    shown = re.search(
        r"^\$ (reflectioncoder train --config configs/tiny\.yaml .*)\n(.*)$", text, re.M
    )
    assert shown, "docs/training.md no longer shows the relaunch into runs/tiny"
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "tiny.yaml", tmp_path / "configs")
    run = tmp_path / "runs" / "tiny"
    for folder in ("checkpoints/step-000096", "final"):  # what a finished run leaves
        (run / folder).mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    monkeypatch.chdir(tmp_path)
    assert cli_main(shlex.split(shown.group(1))[1:]) == 1
    assert capsys.readouterr().err.strip() == shown.group(2)


def test_tiny_run_on_the_demo_data_shows_todays_step_counts():
    """README.md's and docs/training.md's `train --preset tiny` on `make demo`'s data (its
    `--n` samples, the preset's epochs, samples per step, save_every and keep_last) show the
    steps, the kept checkpoints and the done line that run gives today (they said 96 steps
    once the demo wrote 240 samples, 120 steps)."""
    from reflectioncoder.config_presets import preset
    from reflectioncoder.demo import build_parser

    samples = build_parser().parse_args([]).n
    tiny = preset("tiny")
    steps = samples * tiny["train"]["epochs"] // tiny["train"]["samples_per_step"]
    every, keep = tiny["checkpoint"]["save_every"], tiny["checkpoint"]["keep_last"]
    saved = sorted({*range(every, steps + 1, every), steps})[-keep:]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    training = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    assert f"INFO done: {steps} of {steps} steps" in readme
    assert re.search(rf"^train: \d+/{steps} steps ", readme, re.M)
    assert f"the run was already complete ({steps} of {steps} steps)" in training
    table = re.findall(r"^checkpoints/step-(\d+) +(\d+)/(\d+) ", training, re.M)
    assert [(int(a), int(b), int(c)) for a, b, c in table] == [(s, s, steps) for s in saved]
    assert f"--resume continues from runs/tiny/checkpoints/step-{steps:06d}" in training


def test_train_picks_deepspeeds_cpu_accelerator_before_checking_its_config(monkeypatch):
    """Without a GPU, `train` names DeepSpeed's CPU accelerator before anything imports it:
    a config check no longer prints DeepSpeed's `Setting accelerator to CPU` warning first."""
    import torch

    from reflectioncoder.cli import main as cli_main

    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_main(["train", "--preset", "tiny", "--print-config"]) == 0
    assert os.environ.get("DS_ACCELERATOR") == "cpu"


@pytest.mark.slow
def test_training_doc_deepspeed_typo_line_is_all_train_prints(tmp_path):
    """docs/training.md's misspelt DeepSpeed key: the one line it shows, and nothing before it
    (DeepSpeed's accelerator warning used to come first on a CPU machine)."""
    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    shown = re.search(r"^reflectioncoder train: docs/examples/ds-zero3-typo\.json.*$", text, re.M)
    assert shown, "docs/training.md no longer shows the misspelt DeepSpeed key"
    argv = ["train", "--preset", "tiny", "--set", "data.files=[tests/data/reflection_small.jsonl]"]
    argv += ["--set", f"checkpoint.out_dir={tmp_path / 'ds-typo'}"]
    argv += ["--set", "distributed.backend=deepspeed"]
    argv += ["--set", "distributed.deepspeed_config=docs/examples/ds-zero3-typo.json"]
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(
        [sys.executable, "-m", "reflectioncoder.cli", *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert (done.stdout + done.stderr).strip() == shown.group(0)  # DeepSpeed logs to stdout
