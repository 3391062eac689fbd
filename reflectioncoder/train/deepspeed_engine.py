"""``DeepSpeedEngine``: DeepSpeed ZeRO 0-3 around our loss module (its config from
``deepspeed_config.py``), the fixes its offloaded optimizer needs after a skipped step
(``drop_skipped_sums``), and DeepSpeed's conversion of its checkpoints to the universal layout
(``convert_to_universal``)."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from reflectioncoder.config import RunConfig
from reflectioncoder.train.deepspeed_config import (
    deepspeed_config,
    offloads_optimizer,
    overridden_batch_keys,
    zero3_local_piece,
    zero_stage_of,
)
from reflectioncoder.train.distributed import (
    DistInfo,
    all_reduce_sum,
    deepspeed_prints_quieted,
    is_zero3_param,
)
from reflectioncoder.train.engine import (
    StateReader,
    StepResult,
    hf_state_dict,
    load_whole_states,
    make_adamw,
    optimizer_param_names,
    read_step,
)

log = logging.getLogger("reflectioncoder.train")

# ZeRO-0's parameter names in its optimizer's order, beside DeepSpeed's files of a checkpoint
ZERO0_NAMES = "zero0_param_names.json"


def convert_to_universal(deepspeed_dir: Path, out: Path) -> None:
    """DeepSpeed's own conversion of a ZeRO 1-3 checkpoint (any number of ranks) into its
    universal layout: OUT/zero/NAME/{fp32,exp_avg,exp_avg_sq}.pt, one full tensor per file."""
    import argparse
    import contextlib
    import io

    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=str(deepspeed_dir),
        output_folder=str(out),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # our checkpoints carry no universal-checkpoint info
    )
    with contextlib.redirect_stdout(io.StringIO()):
        ds_to_universal.main(args)
    (out.parent / "latest_universal").unlink(missing_ok=True)  # a pointer we do not use


class DeepSpeedEngine:
    """DeepSpeed ZeRO 0-3 around our loss module; we set the accumulation boundary ourselves."""

    def __init__(
        self,
        module: torch.nn.Module,
        run: RunConfig,
        info: DistInfo,
        external_params: list[torch.nn.Parameter] = (),
    ) -> None:
        import deepspeed

        self.info = info
        hidden = module.model.config.get_text_config().hidden_size
        self.config = deepspeed_config(run, info, hidden_size=hidden)
        if info.is_main and (unused := overridden_batch_keys(run, info)):
            log.warning(
                "distributed.deepspeed_config: %s not used: the trainer packs each step from "
                "train.samples_per_step and packing.max_tokens (DeepSpeed sees micro-batch 1, "
                "one accumulation step)",
                ", ".join(unused),
            )
        self.asked_stage = zero_stage_of(run)
        if self.config["zero_optimization"].get("stage", 0) == 3:
            # The LM head is used by the fused loss outside its own module's forward.
            for p in external_params:
                deepspeed.zero.register_external_parameter(module, p)
        params = [p for p in module.parameters() if p.requires_grad]
        # ZeRO-0 in fp32: DeepSpeed steps our AdamW bare, with no norm and no non-finite skip;
        # the fused one takes ``found_inf`` (finish_step)
        self._bare = _steps_client_bare(self.config)
        self._params, self.skip_nonfinite = params, run.train.skip_nonfinite
        optimizer = make_adamw(
            params, run.optim, on_cpu=offloads_optimizer(self.config), fused=self._bare
        )
        with _starting_step_undone(optimizer, self.config), deepspeed_prints_quieted():
            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                model=module, optimizer=optimizer, config=self.config
            )
        if self._bare and self.optimizer is not optimizer:
            raise RuntimeError(f"deepspeed wrapped ZeRO-0's fp32 optimizer in {self.optimizer}")
        check_skipped_sums(self.optimizer, self.config)
        self.optimizer_name = type(optimizer).__name__
        self.module = self.engine.module
        # DeepSpeed averages gradients over ranks; our weights already normalise globally.
        self.loss_factor = float(info.world_size)
        # fp16: DeepSpeed's loss scale also goes into the fused loss's weights (it writes its
        # d z in fp16 in the forward, before DeepSpeed scales the loss: they flushed to zero)
        self._fp16_scale: tuple[float, torch.Tensor] | None = None
        self.scales_loss_weights = bool(self.engine.fp16_enabled())
        self.scales_loss = self.scales_loss_weights and not _deepspeed_scales_loss(self.engine)
        # that optimizer reports the norm of the scaled gradients (its fused sibling divides)
        from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

        self._scaled_norm = self.scales_loss and isinstance(self.optimizer, FP16_UnfusedOptimizer)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.engine(*args, **kwargs)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def describe(self) -> str:
        weights, accum = self.engine.get_data_types()
        offload = " offloaded" if self.offloads_optimizer else ""
        stage = self.config["zero_optimization"]["stage"]
        if stage != self.asked_stage:  # offloaded_stage
            stage = f"{stage} (ZeRO-{self.asked_stage} asked: offloaded, it runs as {stage})"
        return (
            f"deepspeed ZeRO-{stage}, "
            f"{self.optimizer_name}{offload}, weights {weights}, grad accumulation {accum}"
        )

    def start_micro_batch(self, last: bool) -> None:
        """Reduce gradients only after the step's last micro-batch; in fp16, DeepSpeed's current
        loss scale (a host float: it changes only in ``step``) into the loss module."""
        self.engine.set_gradient_accumulation_boundary(last)
        if self.scales_loss_weights:
            scale = float(self.optimizer.loss_scale)
            if self._fp16_scale is None or self._fp16_scale[0] != scale:
                device = next(self.module.parameters()).device
                self._fp16_scale = (scale, torch.full((), scale, device=device))
            self.module.loss_scale = self._fp16_scale[1]

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss * self.loss_factor
        if self.scales_loss:  # fp16 at ZeRO-0: DeepSpeed's step unscales what it never scaled
            loss = loss * self._fp16_scale[1]
        self.engine.backward(loss, scale_wrt_gas=False)

    def finish_step(self, stats: torch.Tensor) -> StepResult:
        """Step (DeepSpeed clips, and skips on a non-finite gradient norm), then one sync."""
        all_reduce_sum(stats)
        if self._bare:
            return self._finish_bare(stats)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        if self._scaled_norm:
            norm /= self._fp16_scale[0]  # the scale this step's backward used
        # The one host sync per optimizer step (logging).
        host = stats.tolist()
        applied = bool(self.engine.was_step_applied())
        if not applied:
            drop_skipped_sums(self.optimizer)
        return StepResult(host, norm, applied)

    def _finish_bare(self, stats: torch.Tensor) -> StepResult:
        """ZeRO-0 in fp32: the norm of the (reduced) gradients, and a non-finite loss or norm
        skipping the step on the device (fused AdamW's ``found_inf``), as the one-process
        engine does; DeepSpeed clips and steps. Before, such a step was applied (NaN weights)
        and every step's norm logged as NaN."""
        grads = [p.grad for p in self._params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if self.skip_nonfinite:
            finite = torch.isfinite(stats[0]) & torch.isfinite(norm)
            self.optimizer.found_inf = (~finite).float()
        self.engine.step()
        return read_step(stats, norm)

    @property
    def offloads_optimizer(self) -> bool:
        return offloads_optimizer(self.config)

    def layout(self) -> dict[str, Any]:
        stage = int(self.config["zero_optimization"].get("stage", 0))
        layout = {"engine": "deepspeed", "zero_stage": stage, "world_size": self.info.world_size}
        if self.offloads_optimizer:  # CPU Adam's state: AdamW's does not load into it
            layout["offload_optimizer"] = True
        if stage >= 1 and self.engine.bfloat16_enabled():  # its files: bf16_zero_pp_rank_*
            layout["bf16"] = True
        return layout

    def save_state(self, folder: Path) -> None:
        """Every rank writes its partition of the optimizer state (DeepSpeed's own layout). At
        ZeRO-0, whose whole state DeepSpeed writes unnamed (rank 0's), also the parameters' names
        in its optimizer's order: another layout resumes from it by name (``ZERO0_NAMES``)."""
        self.engine.save_checkpoint(str(folder), tag="deepspeed", save_latest=False)
        if self.layout()["zero_stage"] == 0 and self.info.is_main:
            names = optimizer_param_names(self.module, *self._zero0_optimizer())
            (folder / "deepspeed" / ZERO0_NAMES).write_text(json.dumps(names))

    def _zero0_optimizer(self) -> tuple[torch.optim.Optimizer, dict[int, torch.Tensor]]:
        """ZeRO-0's AdamW and what it steps: the weights themselves (fp32, stepped bare), or
        in 16 bits the fp32 master of each weight (id(weight) -> master) that DeepSpeed's
        ``FP16_UnfusedOptimizer`` keeps and steps with our AdamW."""
        weights = getattr(self.optimizer, "fp16_groups", None)
        if weights is None:
            return self.optimizer, {}
        masters = zip(weights, self.optimizer.fp32_groups, strict=True)
        pairs = (pair for ws, ms in masters for pair in zip(ws, ms, strict=True))
        return self.optimizer.optimizer, {id(w): m for w, m in pairs}

    def load_state(self, folder: Path) -> None:
        """Module weights and optimizer partitions, from DeepSpeed's own files."""
        load_path, _ = self.engine.load_checkpoint(
            str(folder), tag="deepspeed", load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if load_path is None:
            raise ValueError(f"--resume: no DeepSpeed state under {folder}/deepspeed")

    def load_param_states(self, read: StateReader) -> None:
        """Weights, fp32 masters and AdamW state from a checkpoint of another layout (another
        number of ranks or ZeRO stage, or one process): each rank writes its own partition."""
        from deepspeed.utils import (
            safe_set_full_fp32_param,
            safe_set_full_optimizer_state,
            safe_set_local_fp32_param,
            safe_set_local_optimizer_state,
        )

        if self.layout()["zero_stage"] == 0:  # every parameter whole on every rank
            load_whole_states(self.module, *self._zero0_optimizer(), read)
            return
        _create_adam_state(self.optimizer)
        steps = set()
        for name, p in self.module.named_parameters():
            if not p.requires_grad:
                continue
            zero3 = is_zero3_param(p)
            state = read(name, p.ds_shape if zero3 else p.shape)
            steps.add(state.step)
            if zero3:
                # This rank's share, padded as its partition: DeepSpeed 0.19.8's full setters
                # read past the end of a parameter the ranks do not divide (3 ranks, 1024)
                with torch.no_grad():
                    p.ds_tensor.copy_(_zero3_share(p, state.weight))
                safe_set_local_fp32_param(p, _zero3_share(p, state.weight))
                for key in ("exp_avg", "exp_avg_sq"):
                    safe_set_local_optimizer_state(p, _zero3_share(p, getattr(state, key)), key)
                continue
            with torch.no_grad():
                p.copy_(state.weight.reshape(p.shape))
            safe_set_full_fp32_param(p, state.weight.reshape(p.shape))
            for key in ("exp_avg", "exp_avg_sq"):
                safe_set_full_optimizer_state(p, getattr(state, key).reshape(p.shape), key)
        base = getattr(self.optimizer, "optimizer", self.optimizer)  # ZeRO wraps the client's
        for group_state in base.state.values():
            if "step" in group_state:
                group_state["step"] = torch.full_like(
                    torch.as_tensor(group_state["step"]), max(steps)
                )

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full weights on rank 0 (ZeRO-3 gathers: a collective, every rank calls it)."""
        if self.config["zero_optimization"].get("stage", 0) == 3:
            return hf_state_dict(self.engine._zero3_consolidated_16bit_state_dict())
        return hf_state_dict(self.engine.module.state_dict())


def _zero3_share(param: torch.nn.Parameter, full: torch.Tensor) -> torch.Tensor:
    """This rank's share of a ZeRO-3 parameter's ``full`` tensor, zero-padded to its partition's
    size (the last ranks' pieces run past the end)."""
    piece, start = zero3_local_piece(param)
    share = torch.zeros(piece.numel(), dtype=full.dtype)
    flat = full.flatten()
    n = max(0, min(piece.numel(), flat.numel() - start))
    share[:n] = flat[start : start + n]
    return share


def _steps_client_bare(config: dict[str, Any]) -> bool:
    """Whether DeepSpeed 0.19.8 steps the client optimizer itself, unwrapped: ZeRO-0 without
    fp16 or bf16 (its ``_take_model_step``: clipping, then ``optimizer.step()``)."""
    sixteen = config["fp16"].get("enabled") or config["bf16"].get("enabled")
    return config["zero_optimization"].get("stage", 0) == 0 and not sixteen


def _deepspeed_scales_loss(engine: Any) -> bool:
    """Whether DeepSpeed's ``engine.backward`` multiplies an fp16 loss by the loss scale. In
    0.19.8 it does for its ZeRO optimizers (and torch autocast's GradScaler) only: at ZeRO-0 its
    fp16 optimizer (``FP16_UnfusedOptimizer``) still divides the gradients by the scale in
    ``step`` (65536 times too small: AdamW's eps then dominates, and clipping never triggers),
    so the engine multiplies the loss itself (``DeepSpeedEngine.backward``)."""
    from deepspeed.runtime.base_optimizer import ZeROOptimizer

    scaler = getattr(engine, "torch_autocast_z0_gradscaler", None)
    return isinstance(engine.optimizer, ZeROOptimizer) or scaler is not None


@contextlib.contextmanager
def _starting_step_undone(optimizer: torch.optim.Optimizer, config: dict[str, Any]):
    """Around ``deepspeed.initialize``: undo the step DeepSpeed 0.19.8's 16-bit optimizer at
    ZeRO-0 (``FP16_UnfusedOptimizer``, bf16's too) takes on zero gradients to create AdamW's
    state. The zero moments move nothing, but (1) AdamW's decoupled decay shrank every fp32
    master by lr x weight_decay (the peak lr, whatever the warmup) before any gradient, so the
    first real step carried the decay twice (tests/test_leftovers_zero0_decay.py): no decay
    inside; (2) the step count is 1, so every bias correction after was a step ahead (the first
    update 0.744 of AdamW's, tests/test_review13_fp16_loss_scale.py): back to 0 after."""
    starts_with_a_step = config["zero_optimization"].get("stage", 0) == 0 and not (
        _steps_client_bare(config)
    )
    decays = [group["weight_decay"] for group in optimizer.param_groups]
    if starts_with_a_step:
        for group in optimizer.param_groups:
            group["weight_decay"] = 0.0
    try:
        yield
        if starts_with_a_step:
            for state in optimizer.state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"].zero_()
                elif "step" in state:
                    state["step"] = 0
    finally:
        for group, decay in zip(optimizer.param_groups, decays, strict=True):
            group["weight_decay"] = decay


def drop_skipped_sums(zero_optimizer: Any) -> None:
    """After a skipped (non-finite) step: DeepSpeed 0.19.8's ZeRO-1/2 with an offloaded
    optimizer keeps that step's fp32 gradient partition (stage_1_and_2.py ``step`` resets only
    its host buffers on overflow), so the NaN would be summed into every later step and skip
    it too (tests/test_zero_fp32_sums.py). Drop it, as DeepSpeed does without offload and after
    an applied step. ``check_skipped_sums`` vouches for the attributes at start-up."""
    if getattr(zero_optimizer, "cpu_offload", False) is True:
        sums = zero_optimizer.averaged_gradients
        for key in sums:
            sums[key] = None


def check_skipped_sums(zero_optimizer: Any, config: dict[str, Any]) -> None:
    """An offloaded ZeRO-1/2 optimizer has the private attributes ``drop_skipped_sums`` clears
    (DeepSpeed 0.19.8's ``DeepSpeedZeroOptimizer``); another DeepSpeed without them stops here
    in one line rather than skipping every step after a non-finite one."""
    stage = config["zero_optimization"].get("stage", 0)
    if not offloads_optimizer(config) or stage not in (1, 2):
        return
    sums = getattr(zero_optimizer, "averaged_gradients", None)
    if getattr(zero_optimizer, "cpu_offload", None) is not True or not isinstance(sums, dict):
        import deepspeed

        raise RuntimeError(
            f"deepspeed {deepspeed.__version__}: its offloaded ZeRO-{stage} optimizer "
            f"({type(zero_optimizer).__name__}) has no cpu_offload / averaged_gradients dict, "
            "which reflectioncoder clears after a skipped step (train.deepspeed_engine."
            "drop_skipped_sums, written against deepspeed 0.19.8): install deepspeed==0.19.8, or "
            "turn the offload off (distributed.offload_optimizer=false, none in the JSON)"
        )


# Where DeepSpeed's ZeRO 1-2, ZeRO-3 and BF16 optimizers keep their flat fp32 partitions.
_FLAT_FP32 = (
    "single_partition_of_fp32_groups",
    "fp32_partitioned_groups_flat",
    "fp32_groups_flat_partition",
)


def _create_adam_state(zero_optimizer: Any) -> None:
    """DeepSpeed's optimizers create AdamW's state at their first step and only then link each
    parameter's fragment of it; a resume writes the state before any step, so it creates the
    (zero) state of every flat partition, as AdamW's first step would, and links it."""
    name = next(a for a in _FLAT_FP32 if hasattr(zero_optimizer, a))
    base = zero_optimizer.optimizer
    for flat in getattr(zero_optimizer, name):
        if not base.state.get(flat):
            zeros = torch.zeros_like(flat)
            base.state[flat] = {
                "step": torch.tensor(0.0),
                "exp_avg": zeros,
                "exp_avg_sq": zeros.clone(),
            }
    link = getattr(zero_optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()
