"""Train a code LLM with the ReflectionCoder method.

    reflectioncoder train --preset tiny --set data.files=[demo.jsonl] --set checkpoint.out_dir=t
    reflectioncoder train --config configs/paper.yaml --set optim.lr=1e-4 --resume
    reflectioncoder train --config configs/paper.yaml --overwrite   # start the run over
    deepspeed --no_local_rank --num_gpus 8 --module reflectioncoder.cli train \\
        --config configs/paper.yaml
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from reflectioncoder.config import RunConfig
from reflectioncoder.config_loader import Origins, errors_located, load_launch_config
from reflectioncoder.config_presets import PRESETS
from reflectioncoder.errors import UsageError, raised_in_run, terminate_as_interrupt
from reflectioncoder.train.runs import resume_hint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="YAML (or *.toml) run config (may name a preset: `preset: tiny`)"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field (repeatable), e.g. --set optim.lr=1e-4",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from the latest checkpoint in the run folder (or the one given)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a fresh run in a folder that holds one (deletes its checkpoints and metrics)",
    )
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar or lines (same as --set logging.progress=false)",
    )


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.config is None and args.preset is None:
        raise UsageError("give --config FILE or --preset NAME")
    if args.resume and args.overwrite:  # --resume won silently: the wrong one may be meant
        raise UsageError("--resume continues the run, --overwrite deletes it: give one of them")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if args.overwrite and restart != "0":  # the run deleted would be this launch's own
        raise UsageError(
            f"--overwrite: this is torchrun's restart {restart} of the launch (--max-restarts), "
            "which would delete what its first attempt trained; relaunch with --resume (in a "
            "command torchrun may restart, --resume also starts a fresh run)"
        )
    overrides = args.overrides + (["logging.progress=false"] if args.no_progress else [])
    from reflectioncoder.train.distributed import deepspeed_on_cpu_without_gpu

    deepspeed_on_cpu_without_gpu()  # before the config's DeepSpeed JSON is checked
    origins: Origins = {}
    cfg = load_launch_config(args.config, overrides, base=args.preset, origins=origins)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    from reflectioncoder.train.trainer import Trainer

    with terminate_as_interrupt():  # a scheduler's SIGTERM: trackers flushed, as on Ctrl-C
        with errors_located(origins):  # a start's refusal of a field: where the user set it
            trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite)
        try:
            summary = trainer.train()
        except Exception as err:
            raised_in_run(err, trainer.out_dir)  # a bug's traceback kept in OUT/logs
            raise
        except KeyboardInterrupt as stop:  # Ctrl-C: said with where --resume continues
            if type(stop) is KeyboardInterrupt and trainer.info.is_main:
                raise KeyboardInterrupt(resume_hint(trainer.out_dir)) from None
            raise
        finally:
            trainer.close()
    if trainer.info.is_main:
        logging.getLogger("reflectioncoder.train").info("%s", done_line(summary, cfg))
    return 0


def run_folder_of(argv: list[str]) -> Path:
    """The run folder (``checkpoint.out_dir``) a ``train`` command line trains in, as its
    ranks read it (for the launcher, once they have ended)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    cfg = load_launch_config(args.config, args.overrides, base=args.preset)
    return Path(cfg.checkpoint.out_dir)


def done_line(summary: dict, cfg: RunConfig) -> str:
    """The run's last log line: how far it got, its last loss, where the model is."""
    out = Path(summary["out_dir"])
    model = out / "final" if cfg.checkpoint.save_final else out / "checkpoints"
    steps = f"{summary['steps']} of {summary['total_steps']} steps"
    if summary["loss"] is None:  # resumed at its end: nothing was trained
        return f"done: the run was already complete ({steps}); model: {model}"
    loss, skipped = summary["loss"], summary["skipped"]
    held_out = summary.get("val_loss")
    held_out = "" if held_out is None else f", held-out loss {held_out:.4f}"
    return f"done: {steps}, {skipped} skipped, last loss {loss:.4f}{held_out}; model: {model}"
