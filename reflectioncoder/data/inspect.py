"""Show what the teacher and the student see for each sample at an optimizer step.

Teacher: every token; tokens that carry a CE label are shown inside [[ ]].
Student: hidden runs are shown as <~N hidden~>; the student's labelled tokens inside [[ ]].
``--json OUT`` writes one object per sample (file order; over-length samples left out and
reported): input_ids, labels, student_positions, student_labels, kl_positions.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from reflectioncoder.data.config import STRATEGIES, DataConfig, MaskConfig
from reflectioncoder.data.dataset import load_dataset
from reflectioncoder.data.masking import draw_masks, visibility_host
from reflectioncoder.data.schema import DataError
from reflectioncoder.data.tokenize import IGNORE, TokenizedSample, add_special_tokens
from reflectioncoder.errors import (
    atomic_write_text,
    refuse_overwriting_input,
    require_file,
    require_model_folder,
    require_writable_output,
)
from reflectioncoder.printable import printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, nargs="+", help="jsonl file(s) (SPEC §1)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (local)")
    parser.add_argument(
        "--step", type=int, default=0, help="optimizer step (from 0, below --total-steps)"
    )
    parser.add_argument("--total-steps", type=int, default=1, help="optimizer steps of the run")
    parser.add_argument(
        "--seed", type=int, default=3407, help="the run's train.seed (the masks are drawn from it)"
    )
    parser.add_argument(
        "--strategy",
        action="append",
        choices=STRATEGIES,
        help="mask strategy (repeat for several; default block_mask)",
    )
    parser.add_argument("--block-order", default="tce", help="block_mask order, e.g. tce or etc")
    parser.add_argument(
        "--max-len",
        type=int,
        default=4096,
        help="drop (and report) samples with more ids (data.max_len)",
    )
    parser.add_argument("--no-distill", action="store_true", help="no student pass")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad samples, report them")
    parser.add_argument("--limit", type=int, default=None, help="print at most this many (>= 1)")
    parser.add_argument("--json", dest="json_out", default=None, help="write the views here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def sample_views(
    samples: list[TokenizedSample], step: int, total_steps: int, cfg: MaskConfig, seed: int
) -> list[dict]:
    """One JSON-ready dict per sample: what the teacher and the student see at ``step``."""
    students = [s for s in samples if s.is_reflection and cfg.distill]
    plan = draw_masks(students, step, total_steps, cfg, seed)
    visible = visibility_host(plan)
    by_uid = {}
    for k, s in enumerate(students):
        lo, hi = int(plan.offsets[k]), int(plan.offsets[k + 1])
        by_uid[id(s)] = (visible[lo:hi], plan.strategies[k])
    views = []
    for s in samples:
        view = {
            "source": s.source,
            "type": "reflection" if s.is_reflection else "generation",
            "input_ids": s.ids.tolist(),
            "labels": s.labels.tolist(),
            "student_positions": [],
            "student_labels": [],
            "kl_positions": [],
            "strategy": None,
            "rate": plan.rate,
        }
        if id(s) in by_uid:
            vis, strategy = by_uid[id(s)]
            pos = torch.nonzero(vis).flatten()
            view["student_positions"] = pos.tolist()
            view["student_labels"] = s.student_labels[pos].tolist()
            if cfg.kl:
                view["kl_positions"] = torch.nonzero(s.student_labels != IGNORE).flatten().tolist()
            view["strategy"] = strategy
        views.append(view)
    return views


def _runs(keys: list) -> list[tuple[int, int]]:
    """[lo, hi) of each run of equal consecutive ``keys``."""
    cuts = [p for p in range(1, len(keys)) if keys[p] != keys[p - 1]]
    return list(zip([0, *cuts], [*cuts, len(keys)], strict=True)) if keys else []


def _render(ids: list[int], decode, labelled: list[bool], shown: list[bool] | None = None) -> str:
    """The tokens as text, [[ ]] around labelled runs, <~N hidden~> for hidden runs. Each run
    is decoded as one piece: a character a byte-level tokenizer splits over several tokens
    (most non-ASCII text) reads whole, where decoding token by token printed U+FFFD."""
    shown = shown if shown is not None else [True] * len(ids)
    keys = [(shown[p], shown[p] and labelled[p]) for p in range(len(ids))]
    out = []
    for lo, hi in _runs(keys):
        visible, marked = keys[lo]
        if not visible:
            out.append(f"<~{hi - lo} hidden~>")
            continue
        text = decode(ids[lo:hi])
        out.append(f"[[{text}]]" if marked else text)
    return "".join(out)


def format_view(view: dict, tokenizer) -> str:
    ids = view["input_ids"]

    def decode(run: list[int]) -> str:
        return tokenizer.decode(run, clean_up_tokenization_spaces=False)

    teacher_lab = [lab != IGNORE for lab in view["labels"]]
    lines = [
        f"== {view['source']}  {view['type']}  {len(ids)} tokens, "
        f"{sum(teacher_lab)} teacher labels",
        "-- teacher:",
        _render(ids, decode, teacher_lab),
    ]
    if view["student_positions"]:
        pos = view["student_positions"]
        shown = [False] * len(ids)
        student_lab = [False] * len(ids)
        for p, lab in zip(pos, view["student_labels"], strict=True):
            shown[p] = True
            student_lab[p] = lab != IGNORE
        lines += [
            f"-- student ({view['strategy'] or 'no strategy'}, rate {view['rate']:.4g}): "
            f"{len(pos)} of {len(ids)} tokens, {sum(student_lab)} labels, "
            f"{len(view['kl_positions'])} KL rows",
            _render(ids, decode, student_lab, shown),
        ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    strategies = tuple(args.strategy) if args.strategy else ("block_mask",)
    try:
        mask_cfg = MaskConfig(
            strategies=strategies, block_order=args.block_order, distill=not args.no_distill
        )
        data_cfg = DataConfig(files=args.data, max_len=args.max_len, skip_bad=args.skip_bad)
        if args.step < 0:
            raise ValueError(f"--step: expected a step >= 0, got {args.step}")
        if args.seed < 0:  # as train.seed: a run never has one
            raise ValueError(f"--seed: expected a seed >= 0, got {args.seed}")
        if args.total_steps < 1:  # the mask rate is (step + 1) / total_steps
            raise ValueError(f"--total-steps: expected a number >= 1, got {args.total_steps}")
        if args.step >= args.total_steps:  # a mask rate over 1: a step no run of N steps has
            raise ValueError(
                f"--step: step {args.step} is past the run's {args.total_steps} step(s) "
                f"(--total-steps {args.total_steps}: steps 0-{args.total_steps - 1}); "
                "give the run's --total-steps"
            )
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit: expected a number >= 1, got {args.limit}")
    except ValueError as e:
        field, _, reason = str(e).partition(": ")  # the configs' field names, as flags
        flag = {"block_order": "--block-order", "max_len": "--max-len"}.get(field)
        shown = f"{flag}: {reason}" if flag else str(e)
        print(f"reflectioncoder inspect: {printable(shown)}", file=sys.stderr)
        return 2
    refuse_overwriting_input(args.json_out, "--json", {"--data": args.data})
    for path in args.data:  # named with its flag, before the tokenizer loads
        require_file(path, "data file", field="--data")
    if args.json_out:  # found now, not after tokenising
        require_writable_output(args.json_out, "--json")
    require_model_folder(args.tokenizer, "--tokenizer", need="tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    add_special_tokens(tokenizer)  # used as given when it already holds the seven tokens
    try:
        samples, report = load_dataset(data_cfg, tokenizer)
    except (DataError, FileNotFoundError) as e:
        print(f"reflectioncoder inspect: {printable(e)}", file=sys.stderr)  # quotes the data
        return 1
    print(f"# {printable(report.summary(args.max_len))}")  # the lines quote the data's fields
    for line in report.skipped + [f"over-length: {s}" for s in report.over_length]:
        print(f"#   {printable(line)}")
    views = sample_views(samples, args.step, args.total_steps, mask_cfg, args.seed)
    shown = views if args.limit is None else views[: args.limit]
    for view in shown:
        print(printable(format_view(view, tokenizer), lines=True))
        print()
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(views))
        print(f"# wrote {len(views)} samples to {args.json_out}")
    return 0
