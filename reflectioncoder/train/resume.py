"""``--resume``: which checkpoint a run continues from, that it continues the same run (the
steps its checkpoint planned, on the same samples, holding out the same ones), and what the
config changed from the run's (logged, saved, and told to the trackers)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from reflectioncoder.config import RunConfig
from reflectioncoder.errors import UserError
from reflectioncoder.train import checkpoint, metrics, reporters

log = logging.getLogger("reflectioncoder.train")


def checkpoint_to_resume(
    resume: bool | str, out_dir: Path, is_main: bool, trackers: list[str] = ()
) -> Path | None:
    """The checkpoint ``--resume`` continues from (None: a fresh start): the one named, or the
    newest complete one in ``out_dir``. ``trackers``: the run's, for the restart's one line."""
    if not resume:
        return None
    if isinstance(resume, str):
        path = Path(resume)
        if not (path / checkpoint.COMPLETE).is_file():
            raise UserError(_not_a_checkpoint(path), file=path, field="--resume")
        run = path.parent.parent  # OUT/checkpoints/step-N: its tokenizer and metrics are there
        if run.resolve() != out_dir.resolve():
            raise UserError(
                f"a checkpoint of the run {run}, not of checkpoint.out_dir {out_dir}: "
                f"set checkpoint.out_dir={run} (a copy of that folder resumes too)",
                file=path,
                field="--resume",
            )
        return path
    path = checkpoint.latest_checkpoint(out_dir)
    if path is None and checkpoint.list_checkpoints(out_dir):
        raise UserError(
            "holds model-only checkpoints (checkpoint.model_only): none has the optimizer "
            "state to continue from",
            file=out_dir,
            field="--resume",
        )
    if path is None and (out_dir / "final" / "config.json").is_file():
        raise UserError(
            "holds a finished run's final model and no checkpoint to resume from "
            "(checkpoint.save_every: 0): nothing to continue; --overwrite trains it again",
            file=out_dir,
            field="--resume",
        )
    if path is None and is_main:
        log.warning("--resume: %s", metrics.restart_note(out_dir, list(trackers)))
    elif is_main:
        log.info("--resume: the newest complete checkpoint is %s", path)
    return path


def _not_a_checkpoint(path: Path) -> str:
    """Why ``--resume PATH`` cannot continue from ``path``, and what would."""
    if not path.exists():  # a mistyped step: the run's own are named
        steps = [p.name for p in checkpoint.list_checkpoints(path.parent.parent)]
        return f"not found; the run's checkpoints: {', '.join(steps)}" if steps else "not found"
    if (path.parent / checkpoint.COMPLETE).is_file():
        return f"a folder inside the checkpoint {path.parent}: give that"
    newest = checkpoint.latest_checkpoint(path)
    if newest is not None:
        return f"this is a run folder; its newest complete checkpoint is {newest}"
    if path.name.startswith(checkpoint.TMP_PREFIX):
        return "its save was interrupted: not a complete checkpoint"
    if (path / "config.json").is_file():
        return (
            "a model, not a checkpoint (no optimizer state); to train it further, start a run "
            f"with model.name_or_path={path}"
        )
    return "not a complete checkpoint folder (reflectioncoder runs RUN_FOLDER lists them)"


def config_changes(saved: Path, cfg: RunConfig) -> list[str]:
    """``section.field old -> new`` for each value ``cfg`` changes from the run's saved config."""
    import yaml

    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(tree, dict):
            return {prefix: tree}
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    try:
        old = flat(yaml.safe_load(saved.read_text()))
    except (OSError, yaml.YAMLError):
        return []
    new = flat(cfg.to_dict())
    changed = [f"{k[:-1]} {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k, v) != v]
    # a model.config_overrides entry added or dropped changes the model (a field absent from
    # the run's config.yaml elsewhere is one this version added: not a change)
    added_or_dropped = sorted(k for k in old.keys() ^ new.keys() if k.startswith(_OVERRIDES))
    return changed + [f"{k[:-1]} {old.get(k)!r} -> {new.get(k)!r}" for k in added_or_dropped]


_OVERRIDES = "model.config_overrides."


def check_same_run(path: Path, cfg: RunConfig, out_dir: Path, planned: dict[str, Any]) -> None:
    """The checkpoint at ``path`` continues this config's run: ``planned`` (``total_steps``,
    ``plan_sha256``, ``held_out_sha256``, as the trainer's state records them) as it recorded
    (checkpoints from before a record: not checked on it)."""
    state = checkpoint.read_trainer_state(path)
    if state.get("total_steps") != planned["total_steps"]:
        raise UserError(
            f"{path} planned {state.get('total_steps')} steps, this config plans "
            f"{planned['total_steps']} (data, batch size, epochs or max_steps changed"
            f"{_plan_changes(cfg, out_dir)})",
            field="--resume",
        )
    held_out = planned["held_out_sha256"]
    recorded = state.get("held_out_sha256", held_out)
    if held_out is not None and recorded != held_out:
        # other samples held out may have been trained on by the steps done
        before = "held out other samples" if recorded else "held out none"
        raise UserError(
            f"{path} {before}: its steps may have trained on samples this "
            "config holds out (data.validation_fraction, train.seed or data.files changed)",
            field="data.validation_fraction",
        )
    if state.get("plan_sha256", planned["plan_sha256"]) != planned["plan_sha256"]:
        raise UserError(
            f"{path} planned its steps on other samples or in another order "
            f"(data.files or their contents, train.seed or the data options changed"
            f"{_plan_changes(cfg, out_dir)}): resume with the run's own config and data, or "
            "start a new run",
            field="data.files",
        )


def _plan_changes(cfg: RunConfig, out_dir: Path) -> str:
    """What ``cfg`` changes from the run's in the sections that plan its steps."""
    changed = config_changes(out_dir / "config.yaml", cfg)
    planning = [c for c in changed if c.startswith(("data.", "train.", "packing."))]
    return f"; changed from the run's: {'; '.join(planning)}" if planning else ""


def record_resumed_config(cfg: RunConfig, out_dir: Path, path: Path, step: int) -> list[str]:
    """Rank 0, once the checkpoint at ``path`` has loaded: OUT/config.yaml says ``cfg`` (the log
    keeps the values it changed); the fields changed, for the trackers' runs."""
    changed = config_changes(out_dir / "config.yaml", cfg)
    fields = [c.split(" ", 1)[0] for c in changed]
    cfg.save(out_dir / "config.yaml")
    log.info("resumed from %s at step %d", path, step)
    if changed:
        log.info("--resume: config changed from the run's: %s", "; ".join(changed))
    others = [t for t in cfg.logging.trackers if t != "tensorboard"]
    if others and reporters.changes_values(fields):
        log.info(
            "--resume: new %s run(s), as the change gives other values than those "
            "already sent after step %d (steps 1-%d copied from metrics.jsonl)",
            ", ".join(others), step, step,
        )  # fmt: skip
    return fields
