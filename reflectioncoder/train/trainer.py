"""The ReflectionCoder trainer: ``Trainer(cfg)``, ``.train_step()``, ``.train()``, ``.close()``.

One optimizer step, as a straight line (docs/ARCHITECTURE.md):

    plan[step] (sample indices, fixed by the seed)  ->  StepPlan (data room, host, built once:
    global denominators, mask draws, every rank's micro-batches balanced by tokens)
    -> this rank's share packed with the plan's draws
    -> forward_hidden -> reflection_loss (fused)  ->  backward  ... for each micro-batch
    -> one sync: loss parts and grad norm  ->  skip if non-finite, else clip + AdamW step

Every rank knows the whole step's samples (the plan is deterministic), so the loss weights carry
the step's global normalisation without any communication; gradients are then SUMMED over ranks.

The start's concerns live beside it: preflight.py (what is refused before any work),
run_folder.py (OUT: checked, locked, written), resume.py (--resume's checkpoint and checks),
load.py (samples, tokenizer, model), placement.py (weights and the memory plan), schedule.py
(the plan and the learning rate), step_ahead.py (the host work one step ahead),
skipped_steps.py (non-finite steps), loss_module.py (what the engine wraps).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reflectioncoder import progress
from reflectioncoder.config import RunConfig
from reflectioncoder.data.dataset import tokenizer_fingerprint
from reflectioncoder.data.masking import mask_rate
from reflectioncoder.data.packing import PackedBatch, StepPlan, pack_rank, plan_step
from reflectioncoder.train import (
    checkpoint,
    deepspeed_config,
    distributed,
    model_card,
    placement,
    preflight,
    reporters,
    validation,
)
from reflectioncoder.train.engine import make_engine
from reflectioncoder.train.flops import ModelShape, StepFlops, recomputed_share, utilisation
from reflectioncoder.train.load import build_model, load_run_data, load_tokenizer
from reflectioncoder.train.loss_module import ReflectionLossModule
from reflectioncoder.train.metrics import MetricsLogger, guess_peak_tflops
from reflectioncoder.train.preemption import save_and_stop, sigterm_at_step_end
from reflectioncoder.train.restore import load_checkpoint
from reflectioncoder.train.resume import check_same_run, checkpoint_to_resume, record_resumed_config
from reflectioncoder.train.run_folder import RunFolder
from reflectioncoder.train.schedule import EpochReport, lr_at, no_step_learns
from reflectioncoder.train.skipped_steps import SkippedSteps
from reflectioncoder.train.step_ahead import PreparedStep, StepAhead, prepare_step

log = logging.getLogger("reflectioncoder.train")


class Trainer:
    """Trains one run. ``Trainer(cfg)`` sets everything up (resuming if asked)."""

    @distributed.shut_down_if_failed
    def __init__(self, cfg: RunConfig, resume: bool | str = False, overwrite: bool = False) -> None:
        # The DeepSpeed JSON's optimizer section, honoured (or refused) before anything starts.
        optim = deepspeed_config.optim_with_deepspeed_section(cfg)
        if optim is not cfg.optim:
            cfg = dataclasses.replace(cfg, optim=optim)
        self.cfg = cfg
        self.out_dir = Path(cfg.checkpoint.out_dir)
        # Before anything is written: a fresh launch never replaces a run by mistake.
        self.run_folder = RunFolder(self.out_dir, bool(resume), overwrite)
        reporters.check_installed(cfg.logging.trackers)  # at start-up, not after a step
        self.info = distributed.setup(cfg.distributed, cfg.train.device)
        self.run_folder.open(self.info.is_main)
        preflight.check_runnable(cfg, self.info)
        if not cfg.logging.progress or not self.info.is_main:
            progress.quiet()
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)

        self.dtype = distributed.resolve_dtype(cfg.model.dtype, self.info.device)
        # Everything is loaded before anything is written: a start that fails on the data, the
        # tokenizer or the model leaves the run folder as it was.
        self.resume_from = checkpoint_to_resume(
            resume, self.out_dir, self.info.is_main, cfg.logging.trackers
        )
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        threads, threads_line = distributed.thread_setting(
            cfg.train.threads, local_ranks, checkpoint.run_threads(self.resume_from)
        )
        self.threads = distributed.set_threads(threads, local_ranks, say=False)
        preflight.check_paths(cfg)
        self.manifests = model_card.read_manifests(cfg.data.files)  # the card's, checked now
        self.tokenizer = load_tokenizer(cfg, self.info, self.resume_from)
        original_tokenizer = copy.deepcopy(self.tokenizer)  # build_model adds the special tokens
        # Alive as long as the model: transformers' ZeRO-3 integration (None without ZeRO-3).
        self._zero3_hf = deepspeed_config.zero3_transformers_config(cfg, self.info)
        model = build_model(cfg, self.tokenizer, self.dtype, self.info)
        from reflectioncoder.model_support import check_supported

        # before the run folder is written (prepare_model checks again, without the lengths)
        check_supported(model, max(cfg.data.max_len, 1), cfg.model.fused_projections)
        if self.resume_from is not None:
            checkpoint.check_same_model(self.resume_from, model.config)
        self.run_data = load_run_data(cfg, self.tokenizer, self.info)
        self.samples, self.validation = self.run_data.samples, self.run_data.validation
        self.plan, self.total_steps = self.run_data.plan, len(self.run_data.plan)
        if self.resume_from is not None:  # it must plan the steps its checkpoint planned
            check_same_run(self.resume_from, cfg, self.out_dir, self.run_data.planned())
        self.tokenizer_sha256 = tokenizer_fingerprint(original_tokenizer)
        if self.info.is_main and threads_line:  # said once the start can no longer fail on
            log.info(threads_line)  # a user's file: a bad input's error stays one line
        if self.info.is_main:
            self.run_folder.write(cfg, original_tokenizer, self.resume_from is not None)
        try:
            self._start(cfg, model)
        except BaseException:  # a failed start leaves the folder as it was: no lock file made
            self.run_folder.undo_start()
            raise

    def _start(self, cfg: RunConfig, model: nn.Module) -> None:
        """The model placed and wrapped in its engine, ``--resume``'s checkpoint loaded, the
        metrics opened: the start, once the run folder is written (or, resuming, locked)."""
        distributed.barrier()

        from reflectioncoder.model import count_parameters, lm_head_bias, lm_head_weight

        partitioned = self._zero3_hf is not None
        cfg, autocast = placement.make_ready(model, cfg, self.info, self.dtype, partitioned)
        self.model = model
        self.n_params = count_parameters(model)
        self.flop_shape = ModelShape.from_model(model)
        self.module = ReflectionLossModule(model, autocast)
        bias = lm_head_bias(model)  # the fused loss reads the head outside lm_head's forward
        head = [lm_head_weight(model), *([] if bias is None else [bias])]
        self.engine = make_engine(self.module, cfg, self.info, external_params=head)

        # The next step's host work runs on a background thread while the current step computes.
        self.ahead = StepAhead(self._prepare, self.total_steps)
        self.step = 0
        self.stop_asked = False  # a rank got SIGTERM (train_step)
        self.skips = SkippedSteps(cfg.train.max_skipped_steps, warn=self.info.is_main)
        self._changed_on_resume: list[str] = []  # config fields a --resume changed (rank 0)
        self._earlier_launches: list[dict[str, Any]] = []  # the layouts of a resumed run's steps
        resumed_totals = self._resume_state()
        self._launch_first_step = self.step + 1
        peak = cfg.logging.peak_tflops
        if peak is None and self.info.device.type == "cuda":
            peak = guess_peak_tflops(torch.cuda.get_device_name(self.info.device))
        self.peak_flops = peak * 1e12 if peak else None
        self.metrics = MetricsLogger(
            self.out_dir,
            cfg.logging,
            self.total_steps,
            self.step,
            enabled=self.info.is_main,
            run_config=cfg.to_dict(),
            start_totals=resumed_totals,
            new_tracker_runs=reporters.changes_values(self._changed_on_resume),
            resumed=self.run_folder.resumed,
        )
        if self.info.is_main:
            self._log_start(cfg)

    def _resume_state(self) -> dict[str, Any] | None:
        """Load ``--resume``'s checkpoint into the engine and set the step and skip counts;
        the metrics' running totals it saved (None on a fresh start)."""
        if self.resume_from is None:
            return None
        state = load_checkpoint(self.resume_from, self.engine, self.info)
        self.step, self.skips.total = int(state["step"]), int(state.get("skipped", 0))
        earlier = state.get("launches") or []
        self._earlier_launches = [x for x in earlier if x.get("first_step", 0) <= self.step]
        if self.info.is_main:  # a resume refused in its checks left the lock file as it was
            self.run_folder.announce()
            self._changed_on_resume = record_resumed_config(
                self.cfg, self.out_dir, self.resume_from, self.step
            )
        return state.get("totals")

    def _log_start(self, cfg: RunConfig) -> None:
        """What the run is about to do (rank 0), and a warning for ZeRO-3 in one process."""
        log.info(
            "%d samples, %d optimizer steps, %d parameters, %d rank(s), %s, %s, "
            "%d CPU thread(s) per rank",
            len(self.samples),
            self.total_steps,
            self.n_params,
            self.info.world_size,
            self.engine.describe(),
            self.dtype,
            self.threads,
        )
        if still := no_step_learns(self.total_steps, cfg):
            log.warning("%s", still)
        one_zero3 = self.info.world_size == 1 and deepspeed_config.uses_zero3(cfg, self.info)
        if one_zero3 and not self.engine.offloads_optimizer:
            # Measured on an H200 (bench/RESULTS.md): 2.4x the step time, nothing saved.
            log.warning(
                "ZeRO-3 in one process partitions nothing and gathers every layer for "
                "nothing: on one GPU use distributed.zero_stage=0-2 or "
                "distributed.backend=none, or offload_optimizer=true to fit a larger model"
            )

    # -- one optimizer step -------------------------------------------------------------------

    def step_plan(self, step: int) -> StepPlan:
        """Step ``step``'s plan: its samples, global denominators, mask draws and every rank's
        micro-batches (built once; every rank builds the same, so no communication)."""
        cfg = self.cfg
        return plan_step(
            [self.samples[i] for i in self.plan[step]],
            step,
            self.total_steps,
            cfg.mask,
            cfg.packing,
            cfg.train.seed,
            self.info.world_size,
        )

    def step_batches(self, step: int) -> list[PackedBatch]:
        """This rank's micro-batches of ``step`` (mask applied at ``step``). Every rank runs
        the same number of micro-batches."""
        return pack_rank(self.step_plan(step), self.info.rank, self.cfg.mask, self.cfg.packing)

    def _splits_ce(self, step: int) -> bool:
        """Whether step ``step`` logs the teacher's and the student's CE apart (an extra
        no-grad loss pass over the teacher's CE rows)."""
        return self.cfg.logging.split_ce and (step + 1) % self.cfg.logging.log_every == 0

    def _prepare(self, step: int) -> PreparedStep:
        """Step ``step``'s host work: plan, mask, pack, the host totals (on the background
        thread, ``StepAhead``)."""
        recompute = recomputed_share(self.model.rc_checkpointing_plan)
        return prepare_step(
            step,
            self.step_batches(step),
            self.flop_shape,
            recompute,
            self._splits_ce(step),
            self.info.device,
        )

    def train_step(self, sigterm_noted: Callable[[], bool] = bool) -> dict[str, Any]:
        """Run optimizer step ``self.step``; returns its metrics row (host values).
        ``sigterm_noted``: whether this rank was asked to stop (train.preemption), summed over
        the ranks with the step's stats: ``self.stop_asked`` is then the same on every rank."""
        if self.step >= self.total_steps:
            raise ValueError(f"train_step: the run's {self.total_steps} steps are done")
        t0 = time.perf_counter()
        step = self.step
        lr = lr_at(step, self.total_steps, self.cfg.optim)
        self.engine.set_lr(lr)
        prepared, host_wait = self.ahead.take(step)
        batches = prepared.batches
        split = self._splits_ce(step)
        device = self.info.device
        # loss, ce, kl, teacher_ce, a mixture of experts' balancing loss (summed over
        # micro-batches), then this rank's host totals (tokens, samples, model and hardware
        # FLOPs, the reference's tokens), then the ranks that got SIGTERM; summed over ranks.
        stats = torch.zeros(11, dtype=torch.float64, device=device)
        stats[5:10].copy_(prepared.totals, non_blocking=True)
        router_loss = self.module.router_loss
        for j, batch in enumerate(batches):
            batch = batch.to(device, non_blocking=True)
            self.engine.start_micro_batch(last=j == len(batches) - 1)
            loss, ce, kl, teacher_ce = self.engine(batch, split)
            self.engine.backward(loss)
            stats[:4] += torch.stack([loss.detach(), ce, kl, teacher_ce]).double()
            if router_loss is not None:  # its weighted sum, kept by the module's forward
                stats[4] += self.module.aux_loss.double()
        stats[10] = float(sigterm_noted())  # as late as can be: read with the sums below
        result = self.engine.finish_step(stats)  # the step's one host sync (inside)
        loss, ce, kl, teacher_ce, aux, tokens, n_samples, model_flops, hardware_flops, reference = (
            result.stats[:10]
        )
        self.stop_asked = result.stats[10] > 0
        elapsed = time.perf_counter() - t0
        self.step += 1
        row = {
            "step": self.step,
            "loss": loss,
            "ce": ce,
            "teacher_ce": teacher_ce if split else None,
            "student_ce": ce - teacher_ce if split else None,
            "kl": kl,
            # a mixture of experts' balancing loss (unweighted by its coef: loss has coef x it)
            **({"aux_loss": aux} if router_loss is not None else {}),
            "mask_rate": mask_rate(step, self.total_steps),
            "lr": lr,
            "grad_norm": result.grad_norm,
            "samples": int(n_samples),
            "tokens": int(tokens),
            "reference_tokens": int(reference),
            "tokens_per_s": tokens / elapsed,
            "samples_per_s": n_samples / elapsed,
            "model_flops": model_flops,
            "hardware_flops": hardware_flops,
            "skipped": not result.applied,
            "time": elapsed,
            "host_wait": host_wait,
        }
        if self.peak_flops:
            # All ranks' FLOPs (train.flops: the one count) over all ranks' peak, same seconds.
            flops = StepFlops(model_flops, hardware_flops)
            row.update(utilisation(flops, elapsed, self.info.world_size, self.peak_flops))
        self.skips.record(self.step, result.applied, loss, result.grad_norm)
        row["skipped_total"] = self.skips.total
        self.metrics.log(row)
        self.skips.stop_if_too_many(self.step)
        return row

    # -- the held-out loss ----------------------------------------------------------------------

    def validation_batches(self) -> Iterator[PackedBatch]:
        """This rank's micro-batches of the held-out samples, masked as the step just trained
        was (its mask rate), packed one at a time."""
        info = self.info
        step = max(self.step - 1, 0)
        return validation.validation_batches(
            self.validation, self.cfg, step, self.total_steps, info.rank, info.world_size
        )

    def validate(self) -> dict[str, Any]:
        """The held-out loss at the current step (every rank calls this): a metrics row
        (``val_loss``, ``val_ce``, ``val_kl``, ...), written and logged by rank 0."""
        if not self.validation:
            raise ValueError("validate: no held-out data (data.validation_files or _fraction)")
        row = {"step": self.step}
        row |= validation.validation_loss(self.engine, self.validation_batches(), self.info.device)
        self.metrics.log_validation(row)
        return row

    def _validation_due(self) -> bool:
        every = self.cfg.train.eval_every
        due = self.step == self.total_steps or (every and self.step % every == 0)
        return bool(self.validation) and bool(due)

    # -- the loop -----------------------------------------------------------------------------

    def save(self) -> Path:
        """A resumable checkpoint of the current step (every rank calls this)."""
        return checkpoint.save_checkpoint(
            self.out_dir,
            self.step,
            self.engine,
            self.model,
            self.tokenizer,
            self.info,
            {
                "total_steps": self.total_steps,
                "skipped": self.skips.total,
                "tokenizer_sha256": self.tokenizer_sha256,
                "held_out_sha256": self.run_data.held_out_sha256,
                "plan_sha256": self.run_data.plan_sha256,
                "totals": self.metrics.totals,
                "threads": self.threads,  # a resume computes with as many
                "launches": self.launches(),
            },
            self.cfg.checkpoint.keep_last,
            self.cfg.checkpoint.model_only,
            card=self.model_card(),
        )

    def launches(self) -> list[dict[str, Any]]:
        """Each launch's first step, hardware and engine: a run resumed on another layout was
        trained on each in turn, and its card says so."""
        this = {
            "first_step": self._launch_first_step,
            "hardware": model_card.hardware(self.info.device, self.info.world_size),
            "engine": f"{self.engine.describe()}, {self.dtype}",
        }
        return [*self._earlier_launches, this]

    def model_card(self) -> str | None:
        """The run's model card at this step (rank 0; None on the others)."""
        if not self.info.is_main:
            return None
        progress = {
            "step": self.step,
            "total_steps": self.total_steps,
            "skipped": self.skips.total,
            "totals": self.metrics.totals,
            "last_row": self.metrics.last_row,
            "last_validation": self.metrics.last_validation,
            "launches": self.launches(),
        }
        return model_card.run_card(self.cfg, self.run_data.counts, progress, self.manifests)

    def train(self) -> dict[str, Any]:
        """Train to the end of the plan, saving every ``checkpoint.save_every`` steps and the
        final model to OUT/final. Returns a summary (steps, skipped, last loss)."""
        every = self.cfg.checkpoint.save_every
        row: dict[str, Any] = {}
        held_out: dict[str, Any] = {}
        start = self.step
        epochs = EpochReport(self.plan, len(self.samples), start)
        with sigterm_at_step_end(self.info.is_main) as sigterm_noted:
            while self.step < self.total_steps:
                row = self.train_step(sigterm_noted)
                line = epochs.add(row)
                if line and self.info.is_main:
                    log.info(line)
                if self.stop_asked and self.step < self.total_steps:
                    save_and_stop(self.save if every else None, self.step, self.info.is_main)
                if self._validation_due():
                    held_out = self.validate()
                if every and self.step % every == 0 and self.step < self.total_steps:
                    self.save()
        if every and self.step > start:  # a finished run resumed has its last checkpoint
            self.save()
        final_saved = (self.out_dir / "final" / "config.json").is_file()
        if self.cfg.checkpoint.save_final and (
            self.step > start or not distributed.broadcast_object(final_saved)
        ):
            full = self.engine.full_state_dict()
            if self.info.is_main:
                checkpoint.save_final_model(
                    self.model, self.tokenizer, full, self.out_dir, self.model_card()
                )
            distributed.barrier()
        return {
            "steps": self.step,
            "total_steps": self.total_steps,
            "skipped": self.skips.total,
            "loss": row.get("loss"),
            "val_loss": held_out.get("val_loss"),
            "out_dir": str(self.out_dir),
        }

    def close(self) -> None:
        """Flush metrics, draw the loss plot, end the process group: each even when one
        before it fails (a full disk), so the lock and the process group are let go."""
        try:
            self.ahead.close()
            self.metrics.close()
        finally:
            self.run_folder.release()
            distributed.shutdown()
