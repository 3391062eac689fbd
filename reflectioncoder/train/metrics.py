"""Training metrics: OUT/metrics.jsonl, the trackers of ``logging.report_to`` (TensorBoard,
W&B, MLflow, trackio: ``reporters``), a progress bar, and a loss plot at the end.

One row per logged optimizer step (rank 0 writes), e.g.::

    {"step": 12, "loss": 3.91, "ce": 3.55, "teacher_ce": 1.92, "student_ce": 1.63, "kl": 0.36,
     "mask_rate": 0.12, "lr": 0.0019, "grad_norm": 1.7, "samples": 8, "tokens": 5120,
     "tokens_per_s": 10240.0, "samples_per_s": 16.0, "skipped": false, "time": 0.5}

``loss = ce + kl`` and ``ce = teacher_ce + student_ce``: each is that part's contribution to the
step's loss under the configured normalisation (the weights of SPEC §2's sample or token mode).
A mixture of experts training with its router's balancing loss has ``aux_loss`` too, and
``loss = ce + kl + coef x aux_loss`` (reflectioncoder/router_loss.py).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from reflectioncoder.config import LoggingConfig
from reflectioncoder.errors import atomic_write_text
from reflectioncoder.progress import Progress
from reflectioncoder.train.reporters import Reporter, make_reporters, scalars_of

log = logging.getLogger("reflectioncoder.train")

# Dense bf16 peak TFLOP/s per GPU, for MFU when logging.peak_tflops is not given.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}

# Metrics the plot draws, in this order.
PLOTTED = ("loss", "teacher_ce", "student_ce", "kl", "val_loss")


def guess_peak_tflops(device_name: str) -> float | None:
    """Peak bf16 TFLOP/s of a GPU from its name (None when unknown)."""
    for key, value in PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file (a torn last line, from a kill, is dropped)."""
    rows = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


REPLACED = "metrics.replaced.jsonl"  # OUT/: the rows a --resume logs again, kept


def rows_after(path: str | Path, step: int) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl logged after ``step``: those a resume from ``step`` logs
    again (all of them when it starts from step 0, having no checkpoint)."""
    return [r for r in read_metrics(path) if r.get("step", 0) > step]


def _steps(rows: list[dict[str, Any]]) -> str:
    """``the rows of 4 steps (11-14)``: which steps ``rows`` log."""
    steps = sorted({r.get("step", 0) for r in rows})
    span = f"{steps[0]}-{steps[-1]}" if len(steps) > 1 else f"{steps[0]}"
    return f"the rows of {len(steps)} step{'s' if len(steps) > 1 else ''} ({span})"


def restart_note(out_dir: str | Path, trackers: list[str]) -> str:
    """What a ``--resume`` that finds no checkpoint in ``out_dir`` does, in one line: it trains
    from step 0 again, keeping the rows logged so far beside the new ones (``REPLACED``)."""
    out_dir = Path(out_dir)
    said = f"no checkpoint in {out_dir}; starting from step 0"
    rows = rows_after(out_dir / "metrics.jsonl", 0)
    if not rows:
        return said
    said += f"; {_steps(rows)} logged so far move to {out_dir / REPLACED}"
    if any(t != "tensorboard" for t in trackers):
        said += " and the trackers start new runs"
    return said


def _keep_replaced(out_dir: Path, rows: list[dict[str, Any]], start_step: int) -> Path:
    """Append the rows a resume from ``start_step`` logs again to OUT/``REPLACED``, each
    marked with when and from which step: earlier attempts' rows are never lost."""
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    marks = {"replaced_at": when, "resumed_from_step": start_step}
    path = out_dir / REPLACED
    with path.open("a") as file:  # before metrics.jsonl is rewritten: a kill loses none
        file.write("".join(json.dumps({**row, **marks}) + "\n" for row in rows))
        file.flush()
        os.fsync(file.fileno())
    return path


def step_rows(path: str | Path) -> list[dict[str, Any]]:
    """The applied optimizer steps' rows of a metrics.jsonl: not the skipped (non-finite) steps,
    not the held-out loss's rows (``val_loss``, no ``loss``)."""
    return [r for r in read_metrics(path) if "loss" in r and not r.get("skipped")]


def plot_losses(rows: list[dict[str, Any]], out_png: str | Path) -> Path | None:
    """Draw the loss curves (loss, teacher CE, student CE, KL per step; the held-out loss
    where measured) to a PNG."""
    if not rows:
        return None
    quiet = logging.getLogger("matplotlib")  # its INFO lines ("generated new fontManager", on a
    if quiet.level == logging.NOTSET:  # fresh machine) would pass the CLI's INFO logging
        quiet.setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key in PLOTTED:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
        pts = [(s, v) for s, v in pts if math.isfinite(v)]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=key, linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats)")
    ax.set_title("ReflectionCoder training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    tmp = out_png.with_name(f".{out_png.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, out_png)  # a kill or a full disk never leaves half a PNG
    except OSError as err:  # the run's work is saved: a plot the disk refuses does not fail it
        log.warning("%s not drawn: %s", out_png, err.strerror or err)
        return None
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out_png


def progress_text(row: dict[str, Any]) -> str:
    """The step's figures on the progress line; MFU where the row has it (a GPU, or
    ``logging.peak_tflops``)."""
    text = (
        f"loss {row['loss']:.4f}  kl {row['kl']:.2e}  mask {row['mask_rate']:.2f}  "
        f"lr {row['lr']:.2e}  {row['tokens_per_s']:.0f} tok/s"
    )
    if isinstance(row.get("mfu"), int | float):
        text += f"  MFU {100 * row['mfu']:.1f}%"
    return text


class MetricsLogger:
    """Writes metrics rows (rank 0 only; other ranks get a silent logger)."""

    def __init__(
        self,
        out_dir: str | Path,
        cfg: LoggingConfig,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        run_config: dict[str, Any] | None = None,
        start_totals: dict[str, float] | None = None,
        new_tracker_runs: bool = False,
        resumed: bool = False,
    ) -> None:
        self.cfg = cfg
        # What the run has trained on so far (applied steps; seconds: all steps), and the last
        # row written: the model card's figures. A resume continues the checkpoint's totals.
        self.totals = dict(start_totals or {"samples": 0, "tokens": 0, "seconds": 0.0})
        self.last_row: dict[str, Any] | None = None
        self.last_validation: dict[str, Any] | None = None  # the last held-out loss row
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "metrics.jsonl"
        self._bar = None
        self._reporters: list[Reporter] = []
        self._file = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # On resume, the rows the killed run wrote after its last checkpoint (all of them with
        # no checkpoint) are logged again: they move to OUT/metrics.replaced.jsonl
        rows = read_metrics(self.path)
        kept = [r for r in rows if r.get("step", 0) <= start_step]
        replaced = [r for r in rows if r.get("step", 0) > start_step]
        if replaced:
            aside = _keep_replaced(self.out_dir, replaced, start_step)
            if start_step > 0:  # from step 0, the trainer's restart_note said so
                log.info("--resume: %s logged after step %d move to %s; this run logs them again",
                         _steps(replaced), start_step, aside)  # fmt: skip
        trained = [r for r in kept if "loss" in r]  # not a validation row
        self.last_row = trained[-1] if trained else None
        held_out = [r for r in kept if "val_loss" in r]
        self.last_validation = held_out[-1] if held_out else None
        # through a rename: a kill while it is rewritten keeps the old history
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = self.path.open("a", buffering=1)  # line-buffered: a kill loses no row
        self._reporters = make_reporters(
            cfg.trackers,
            self.out_dir,
            run_config or {},
            cfg.project,
            cfg.run_name,
            start_step,
            history=kept,
            new_runs=new_tracker_runs,
            resumed=resumed,
        )
        if cfg.progress:
            # A plain line every print_every steps when stderr is not a terminal.
            every = cfg.print_every or max(1, total_steps // 20)
            self._bar = Progress(total_steps, "train", unit="step", every=every, initial=start_step)

    def log(self, row: dict[str, Any]) -> None:
        """Write one row (``row["step"]`` is the 1-based optimizer step just finished)."""
        if not self.enabled:
            return
        step = row["step"]
        self.totals["seconds"] += row.get("time", 0.0)
        if not row.get("skipped"):
            self.totals["samples"] += row["samples"]
            self.totals["tokens"] += row["tokens"]
        if step % self.cfg.log_every == 0 or row.get("skipped"):
            self._write(row)
            self.last_row = row
            scalars = scalars_of(row)
            for reporter in self._reporters:
                reporter.log(scalars, step)
        if self._bar is not None:
            # The text first: the bar then shows the step just finished, not the one before.
            self._bar.note(progress_text(row))
            self._bar.update(1)

    def log_validation(self, row: dict[str, Any]) -> None:
        """Write a held-out loss row (``val_loss``, ``val_ce``, ``val_kl``, ``val_samples``,
        ``val_tokens``, ``val_time`` at ``step``), report it as ``val/...`` and log one line."""
        if not self.enabled:
            return
        self._write(row)
        self.last_validation = row
        for reporter in self._reporters:
            reporter.log(scalars_of(row, "val"), row["step"])
        log.info(
            "step %d: validation loss %.4f (ce %.4f, kl %.2e) on %d held-out samples, "
            "%d tokens (%.1f s)",
            row["step"],
            row["val_loss"],
            row["val_ce"],
            row["val_kl"],
            row["val_samples"],
            row["val_tokens"],
            row["val_time"],
        )

    def _write(self, row: dict[str, Any]) -> None:
        """One row into metrics.jsonl; a write the disk refuses names the file (the bare
        ``[Errno 28] No space left on device`` named none)."""
        try:
            self._file.write(json.dumps(row) + "\n")
        except OSError as err:
            if err.filename is not None or err.strerror is None:
                raise
            raise OSError(err.errno, err.strerror, str(self.path)) from err

    def close(self, plot: bool | None = None) -> Path | None:
        """Flush and close; draw OUT/loss.png when asked (default: ``cfg.plot``)."""
        if not self.enabled:
            return None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for reporter in self._reporters:
            try:
                reporter.close()
            except Exception as err:  # a full disk, a server gone: not the run's own error
                log.warning("%s not closed: %s", type(reporter).__name__, err)
        self._reporters = []
        if self._file is not None:
            try:
                self._file.close()
            except OSError as err:  # its buffered rows: a full disk's error was said already
                log.warning("%s: its last row not written: %s", self.path, err.strerror or err)
            self._file = None
        if plot if plot is not None else self.cfg.plot:
            return plot_losses(read_metrics(self.path), self.out_dir / "loss.png")
        return None
