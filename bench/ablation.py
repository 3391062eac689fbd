"""The paper's ablation in miniature: does ReflectionCoder's training help a real model?

Arms, all from the same base model, data, steps and seeds:
  base        the model as installed (no training);
  sft         fine-tuned on the final answers only (each sample's instruction and one-off answer:
              plain supervised fine-tuning, no reflection, no student, no KL);
  reflection  ReflectionCoder: the whole reflection sequence, teacher + dynamically masked
              student (block_mask, order tce), CE + KL (preset `smollm2`).
Held-out evaluation (greedy, `--prompt-format chat`: each model's own chat template): the first
tasks of HumanEval(+) and MBPP(+), and template problems of the `build-data` bank that no
training sample was built from; training samples sharing a word 10-gram with a held-out problem
or a benchmark prompt are dropped (the project's decontamination rule, data/decontaminate.py).

  python -m bench.ablation --size cpu --out runs/ablation      # SmolLM2-135M, ~30 min idle
  python -m bench.ablation --size gpu --out runs/ablation-gpu  # on a lent GPU (gpu_call.sh)
  python -m bench.ablation --dry-run --out /tmp/abl           # toy model, every step (CI)

Writes OUT/ablation.json (every arm x seed x benchmark, with times) and OUT/ablation.md (the
table: mean and spread over seeds). Each finished evaluation is saved at once, so a stopped run
keeps what it measured; run the same command again to continue it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ARMS = ("base", "sft", "reflection")


@dataclass(frozen=True)
class Size:
    """One size of the ablation; every arm and seed gets the same."""

    n_data: int  # build-data samples made (before hold-out and decontamination)
    steps: int  # optimizer steps per trained arm
    samples_per_step: int
    seeds: tuple[int, ...]
    humaneval: int  # first N tasks
    mbpp: int
    heldout: int  # held-out bank problems
    max_new_tokens: int
    batch_size: int
    lr: float
    toy: bool = False  # a tiny random model built here (CI), not the installed SmolLM2


SIZES = {
    "toy": Size(24, 2, 2, (0, 1), 2, 2, 2, 24, 4, 2e-3, toy=True),
    # About 30 min of one idle core, estimated from cpu-small's CPU seconds (bench/RESULTS.md).
    "cpu": Size(96, 6, 8, (0, 1, 2), 10, 20, 20, 160, 10, 5e-5),
    # What ran on the shared 2-core machine of issue 22's session (load 9-12).
    "cpu-small": Size(64, 4, 4, (0, 1), 5, 10, 10, 128, 10, 5e-5),
    "gpu": Size(1000, 120, 16, (0, 1, 2), 164, 378, 60, 512, 64, 5e-5),
}
HELDOUT_START = 150  # held-out problems: the bank's seeded order from here (training uses the ends)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--dry-run", action="store_true", help="the toy size (CI)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--model", type=Path, default=None, help="base model folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    args = parser.parse_args(argv)
    size = SIZES["toy" if args.dry_run else args.size]
    import torch

    torch.set_num_threads(args.threads)
    _quiet()
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.model or (_toy_model(args.out / "toy-base") if size.toy else _installed())
    train_file, sft_file, heldout, data_note = prepare_data(size, args.out / "data")
    results_path = args.out / "ablation.json"
    done = json.loads(results_path.read_text()) if results_path.is_file() else {"rows": []}
    done.update(size=asdict(size), base=str(base), data=data_note, threads=args.threads)
    have = {(r["arm"], r["seed"]) for r in done["rows"]}
    for arm in ARMS:
        for seed in size.seeds[:1] if arm == "base" else size.seeds:  # base: greedy, no seed
            if (arm, seed) in have:
                continue
            row = {"arm": arm, "seed": seed}
            model = base
            if arm != "base":
                run = args.out / f"{arm}-seed{seed}"
                data = sft_file if arm == "sft" else train_file
                row["train"] = train_arm(arm, base, data, run, size, seed, args)
                model = run / "final"
            row["eval"] = evaluate_arm(model, heldout, size, args, args.out / f"eval-{arm}-{seed}")
            done["rows"].append(row)
            results_path.write_text(json.dumps(done, indent=1) + "\n")
            print(json.dumps(row), flush=True)
    table = markdown(done)
    (args.out / "ablation.md").write_text(table)
    print(table)
    return 0


def _quiet() -> None:
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("reflectioncoder").setLevel(logging.WARNING)


def _installed() -> Path:
    from reflectioncoder.install_model import default_folder

    folder = default_folder("smollm2-135m-instruct")
    if not (folder / "config.json").is_file():
        sys.exit(f"ablation: no model at {folder}; reflectioncoder install-model {folder.name}")
    return folder


def _toy_model(folder: Path) -> Path:
    """A tiny random Llama with a locally trained tokenizer and SPEC's chat template."""
    if (folder / "config.json").is_file():
        return folder
    from reflectioncoder.chat_template import CHAT_TEMPLATE
    from reflectioncoder.construct.problems import generate_problems
    from reflectioncoder.model import build_tiny_llama
    from reflectioncoder.tokenizer import train_tokenizer

    texts = [p.prompt + p.solution for p in generate_problems(0)]
    tok = train_tokenizer(texts, 400)
    tok.chat_template = CHAT_TEMPLATE
    model = build_tiny_llama(len(tok), attn_implementation="sdpa", seed=0)
    model.config.bos_token_id = tok.bos_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------- data


def prepare_data(size: Size, folder: Path) -> tuple[Path, Path, list, dict]:
    """build-data samples (real execution) for training, minus those of held-out problems or
    sharing a 10-gram with one or with a benchmark prompt; the same samples' final answers only
    (the SFT arm); the held-out problems."""
    from reflectioncoder.construct.build import build_dataset, write_jsonl
    from reflectioncoder.construct.problems import generate_problems
    from reflectioncoder.data.decontaminate import BenchmarkIndex, sample_text
    from reflectioncoder.eval.tasks import default_data_dir

    problems = generate_problems(0)
    heldout = problems[HELDOUT_START : HELDOUT_START + size.heldout]
    held_ids = {p.task_id for p in heldout}
    t0 = time.perf_counter()
    samples, stats = build_dataset(size.n_data, seed=0, workers=4)
    held_index = BenchmarkIndex.from_texts({"heldout": [(p.task_id, p.prompt) for p in heldout]})
    bench_index = BenchmarkIndex.load(default_data_dir())
    kept, dropped = [], {"held-out problem": 0, "10-gram of a held-out problem": 0, "benchmark": 0}
    for s in samples:
        text = sample_text(s)
        if s["task_id"] in held_ids:
            dropped["held-out problem"] += 1
        elif held_index.hits(text):
            dropped["10-gram of a held-out problem"] += 1
        elif bench_index.hits(text):
            dropped["benchmark"] += 1
        else:
            kept.append(s)
    train = write_jsonl(kept, folder / "train.jsonl")
    sft = write_jsonl([final_answer_only(s) for s in kept], folder / "sft.jsonl")
    note = {
        "built": stats.summary(),
        "seconds": round(time.perf_counter() - t0, 1),
        "kept": len(kept),
        "dropped": dropped,
        "heldout": sorted(held_ids),
    }
    return train, sft, heldout, note


def final_answer_only(sample: dict) -> dict:
    """A reflection sample as plain SFT data: its last instruction and its one-off answer."""
    if sample["type"] != "reflection":
        return sample
    return {"type": "generation", "task_id": sample["task_id"], "messages": sample["messages"][2:]}


# ------------------------------------------------------------------------------ training


def train_arm(arm: str, base: Path, data: Path, run: Path, size: Size, seed: int, args) -> dict:
    from reflectioncoder.config_loader import load_config
    from reflectioncoder.train.metrics import step_rows
    from reflectioncoder.train.trainer import Trainer

    overrides = [
        f"model.name_or_path={base}",
        f"data.files=[{data}]",
        f"checkpoint.out_dir={run}",
        f"train.max_steps={size.steps}",
        f"train.samples_per_step={size.samples_per_step}",
        f"train.seed={seed}",
        f"train.threads={args.threads}",
        f"train.device={'auto' if args.device is None else args.device}",
        f"optim.lr={size.lr}",
        "logging.progress=false",
        "logging.tensorboard=false",
        # as the preset was when RESULTS' table was measured: no checkpoint, 1024 ids a sample
        "checkpoint.save_every=0",
        "data.max_len=1024",
    ]
    cfg = load_config(None, overrides, base="smollm2")
    t0, cpu0 = time.perf_counter(), time.process_time()
    trainer = Trainer(cfg, overwrite=True)
    try:
        trainer.train()
    finally:
        trainer.close()
    rows = step_rows(run / "metrics.jsonl")
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "steps": len(rows),
        "loss": [round(r["loss"], 4) for r in rows],
        "tokens": sum(r["tokens"] for r in rows),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


# ---------------------------------------------------------------------------- evaluation


def evaluate_arm(model: Path, heldout: list, size: Size, args, out: Path) -> dict:
    """pass@1 on the HumanEval(+) and MBPP(+) subsets (reflectioncoder evaluate) and on the
    held-out bank problems (their own tests, in the sandbox)."""
    from reflectioncoder.cli import main as cli

    out.mkdir(parents=True, exist_ok=True)
    scores, seconds = {}, {}
    for task, limit in (("humaneval", size.humaneval), ("mbpp", size.mbpp)):
        t0 = time.perf_counter()
        argv = [
            "evaluate", "--task", task, "--model", str(model), "--prompt-format", "chat",
            "--limit", str(limit), "--max-new-tokens", str(size.max_new_tokens),
            "--batch-size", str(size.batch_size), "--threads", str(args.threads),
            "--json", str(out / f"{task}.json"), "--no-progress",
        ]  # fmt: skip
        if args.device:
            argv += ["--device", args.device]
        if cli(argv) != 0:
            raise RuntimeError(f"evaluate {task} on {model} failed")
        result = json.loads((out / f"{task}.json").read_text())
        scores.update({k: v["pass@1"] for k, v in result["scores"].items()})
        seconds[task] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    scores["held-out"] = heldout_pass_rate(model, heldout, size, args, out / "heldout.jsonl")
    seconds["held-out"] = round(time.perf_counter() - t0, 1)
    return {"pass@1": scores, "seconds": seconds}


def heldout_pass_rate(model: Path, problems: list, size: Size, args, path: Path) -> float:
    from transformers import AutoTokenizer

    from reflectioncoder.construct.execute import run_program
    from reflectioncoder.eval import prompts as pr
    from reflectioncoder.generate import GenerationConfig, generate_hf

    tok = AutoTokenizer.from_pretrained(str(model))
    prompts = [pr.chat_request(p.instruction("humaneval"), tok) for p in problems]
    config = GenerationConfig(
        max_new_tokens=size.max_new_tokens,
        batch_size=size.batch_size,
        stop_strings=(pr.FENCE,),
    )
    texts = generate_hf(str(model), prompts, config, device=args.device, threads=args.threads)
    rows = []
    for p, outs in zip(problems, texts, strict=True):
        completion = pr.postprocess_chat(outs[0])
        passed = run_program(p.test_program(completion), timeout_s=5.0).passed
        rows.append({"task_id": p.task_id, "completion": completion, "passed": passed})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return sum(r["passed"] for r in rows) / len(rows)


# ------------------------------------------------------------------------------- report


def markdown(done: dict) -> str:
    rows = done["rows"]
    benches = list(rows[0]["eval"]["pass@1"]) if rows else []
    size = done["size"]
    lines = [
        f"Ablation: {size['steps']} steps x {size['samples_per_step']} samples per trained arm, "
        f"seeds {list(size['seeds'])}; pass@1 (%) greedy, mean ± sample std over seeds (n = "
        f"seeds evaluated); subsets: HumanEval first {size['humaneval']}, MBPP first "
        f"{size['mbpp']}, {size['heldout']} held-out bank problems.",
        "",
        "| arm | n | " + " | ".join(benches) + " | train s (per arm) | final loss |",
        "| --- | --- | " + " | ".join("---" for _ in benches) + " | --- | --- |",
    ]
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        cells = []
        for b in benches:
            vals = [100 * r["eval"]["pass@1"][b] for r in mine]
            spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {spread:.1f}")
        trained = [r["train"] for r in mine if "train" in r]
        secs = f"{statistics.mean(t['seconds'] for t in trained):.0f}" if trained else "-"
        loss = ", ".join(f"{t['loss'][-1]:.3f}" for t in trained) if trained else "-"
        lines.append(f"| {arm} | {len(mine)} | " + " | ".join(cells) + f" | {secs} | {loss} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
