"""List a run folder's checkpoints: step, loss, whether each is complete and resumable.

    reflectioncoder runs runs/tiny

A checkpoint is complete once its COMPLETE file is written (a save killed midway leaves a
``.tmp-step-N`` folder, listed as incomplete); model-only checkpoints are complete but cannot
be resumed from; a complete one whose files are not whole (a copy cut short) is listed as
damaged, by the look ``--resume`` takes before it loads one. The loss is the metrics row of
that step, when one was logged; the scores ``evaluate`` wrote into the run
(``eval/result-*.json``, of its final model or a checkpoint's) follow, one line each; the name
the run's tracker runs (W&B, MLflow, trackio) go under is said with their ids.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import yaml

from reflectioncoder.errors import UsageError
from reflectioncoder.printable import printable
from reflectioncoder.train.checkpoint_files import damage, trainer_state
from reflectioncoder.train.run_folder import held_by, is_run_config

COMPLETE = "COMPLETE"  # checkpoint.COMPLETE (not imported: it would import torch)
TMP_PREFIX = ".tmp-"
RUN_IDS = "tracker_runs.json"  # reporters.RUN_IDS (not imported: it would import the trackers)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="a run folder (checkpoint.out_dir)")


def _losses(folder: Path) -> dict[int, float]:
    path = folder / "metrics.jsonl"
    rows: dict[int, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a torn last line (a kill)
            if isinstance(row, dict) and _is_number(row.get("loss")) and "step" in row:
                rows[row["step"]] = row["loss"]  # a training row
    return rows


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def checkpoint_rows(folder: Path) -> list[dict[str, Any]]:
    """One dict per checkpoint folder (complete or not), oldest step first."""
    root = folder / "checkpoints"
    found = sorted(root.glob("step-*")) + sorted(root.glob(TMP_PREFIX + "step-*"))
    losses = _losses(folder)
    rows = []
    for path in found:
        named = re.fullmatch(r"(?:\.tmp-)?step-(\d+)", path.name)  # not a copy, step-N.bak
        if not named or not path.is_dir():
            continue
        step = int(named.group(1))
        state, _ = trainer_state(path)
        complete = (path / COMPLETE).is_file() and not path.name.startswith(TMP_PREFIX)
        damaged = damage(path) if complete else None
        if not complete:
            status = "incomplete (its save was interrupted)"
        elif damaged:
            status = f"damaged: {damaged}"
        elif state.get("model_only"):
            status = "complete, model only (not resumable)"
        else:
            status = "complete"
        rows.append(
            {
                "path": path,
                "step": step,
                "total_steps": state.get("total_steps"),
                "loss": losses.get(step),
                "complete": complete,
                "resumable": complete and not damaged and not state.get("model_only"),
                "damaged": complete and damaged is not None,
                "status": status,
            }
        )
    return sorted(rows, key=lambda r: (r["step"], r["complete"]))


def _run_folder_above(folder: Path) -> Path | None:
    """The run folder that ``folder`` (its ``final/``, ``checkpoints/``, a step) lies in."""
    for parent in list(folder.parents)[:3]:
        if (parent / "config.yaml").is_file() and (parent / "checkpoints").is_dir():
            return parent
    return None


def main(args: argparse.Namespace) -> int:
    folder: Path = args.folder
    if not folder.is_dir():
        state = "a file, not a run folder" if folder.exists() else "not found"
        raise UsageError(state, file=folder, field="FOLDER")
    rows = checkpoint_rows(folder)
    config = folder / "config.yaml"
    if not rows and not (folder / "final").is_dir() and config.is_file() and is_run_config(config):
        _say(_unsaved_run(folder))  # a run stopped (Ctrl-C, a kill) before its first save
        _print_tracker_runs(folder)
        _print_training(folder)
        _say(_resume_line([]))
        return 0
    if not rows and not (folder / "final").is_dir():
        run = _run_folder_above(folder)
        if run:
            raise UsageError(
                f"a folder inside the run {run}: give that", file=folder, field="FOLDER"
            )
        raise UsageError(
            f"holds no checkpoints and no final model{_runs_inside(folder)}",
            file=folder,
            field="FOLDER",
        )
    _say(f"{'checkpoint':<34}{'step':>8}{'loss':>10}  state")
    for r in rows:
        step = f"{r['step']}" if r["total_steps"] is None else f"{r['step']}/{r['total_steps']}"
        loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
        name = str(r["path"].relative_to(folder))
        _say(f"{name:<34}{step:>8}{loss:>10}  {r['status']}")
    if (folder / "final").is_dir():
        _say(f"{'final':<34}{'':>8}{'':>10}  the trained model")
    _print_evaluations(folder)
    _print_tracker_runs(folder)
    _print_training(folder)
    _say(_resume_line([r for r in rows if r["resumable"] or r["damaged"]]))
    return 0


def _say(line: str) -> None:
    """One line of the listing, escaped: it quotes the run's files (a tracker's run name, the
    lock's holder, a checkpoint's state), which a terminal must not take as its codes."""
    print(printable(line))


def _print_evaluations(folder: Path) -> None:
    """``evaluated eval/result-TASK.json: HumanEval pass@1 12.2, ... (164 tasks)``: a line for
    each result ``evaluate`` wrote into the run (RUN/eval/: its final model's, a checkpoint's)."""
    for path in sorted((folder / "eval").glob("result-*.json")):
        name = path.relative_to(folder)
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            scores = [f"{bench} {k} {100 * v:.1f}" for bench, at in result["scores"].items()
                      for k, v in at.items()]  # fmt: skip
            tasks = f" ({len(result['details'])} tasks)" if "details" in result else ""
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            _say(f"evaluated {name}: not a whole result file")
            continue
        _say(f"evaluated {name}: {', '.join(scores)}{tasks}")


def _print_tracker_runs(folder: Path) -> None:
    """``tracker runs: NAME (mlflow ID, wandb ID)`` from OUT/tracker_runs.json, if it names one."""
    try:
        recorded = json.loads((folder / RUN_IDS).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no trackers, or a file from before names were recorded
        return
    if not isinstance(recorded, dict) or not isinstance(recorded.get("run_name"), str):
        return
    ids = ", ".join(f"{k} {v}" for k, v in recorded.items() if k != "run_name")
    _say(f"tracker runs: {recorded['run_name']}{f' ({ids})' if ids else ''}")


def _print_training(folder: Path) -> None:
    """``training now: pid N on HOST`` while a launch holds the folder (its lock)."""
    holder = held_by(folder)
    if holder:
        _say(f"training now: {holder} (--resume once it has ended)")


def _unsaved_run(folder: Path) -> str:
    """What a run folder with no checkpoint and no final model holds: the steps it logged."""
    losses = _losses(folder)
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        every = f" (checkpoint.save_every: {config['checkpoint']['save_every']})"
    except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError, KeyError):
        every = ""
    if not losses:
        return f"{folder}: a run that stopped before its first step; no checkpoint{every}"
    last = max(losses)
    return (
        f"{folder}: a run that logged {last} step(s) (last loss {losses[last]:.4f}) and saved "
        f"no checkpoint{every}"
    )


def _runs_inside(folder: Path) -> str:
    """``; the runs in it: a, b: give one`` when ``folder`` holds run folders (``runs/``)."""
    found = [*folder.glob("*/config.yaml"), *folder.glob("*/*/config.yaml")]  # runs/demo/train too
    runs = sorted(str(p.parent.relative_to(folder)) for p in found if p.is_file())
    return f"; the runs in it: {', '.join(runs)}: give one" if runs else ""


def newest_resumable(folder: Path) -> Path | None:
    """The checkpoint ``--resume`` would continue from, if one is whole (None: none)."""
    rows = [r for r in checkpoint_rows(folder) if r["resumable"]]
    return rows[-1]["path"] if rows else None


def resume_hint(folder: Path) -> str:
    """What ``--resume`` does in ``folder`` now, as ``runs`` ends its listing: the line a run
    stopped by Ctrl-C ends with, so the user need not run ``runs`` to learn it."""
    return _resume_line([r for r in checkpoint_rows(folder) if r["resumable"] or r["damaged"]])


def _resume_line(candidates: list[dict[str, Any]]) -> str:
    """What ``--resume`` does: the newest candidate, unless it is damaged (then it stops)."""
    if not candidates:
        return "--resume: no resumable checkpoint (a resumed run starts from step 0)"
    if not candidates[-1]["damaged"]:
        return f"--resume continues from {candidates[-1]['path']}"
    earlier = [r for r in candidates if r["resumable"]]
    then = f"--resume {earlier[-1]['path']} continues from" if earlier else "no checkpoint"
    return f"--resume stops at {candidates[-1]['path']} (damaged); {then} the one before it"
