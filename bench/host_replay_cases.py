"""The replay child's runs (bench/bench_host_replay.py's docstring): the CPU's one-op stand-ins
for the CUDA-only kernels, the measured CLI step (de58a14), the 1.5B suite step (3d82f92) and
the H200 host's speed rows, each run with the replayed commit's own code; ``_child`` runs one.

Like host_replay_record.py, imported by file path in the child (``bench`` there is the
replayed commit's): the standard library at its top, the commit's code inside the runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__:  # the parent's side: bench.bench_host_replay and the tests
    from bench import host_replay_record as record
else:  # the child: this folder on sys.path, ``bench`` the replayed commit's
    import host_replay_record as record  # type: ignore[no-redef]

MARKS, _OpRecorder, _StepProfile, _SyncSites = (
    record.MARKS,
    record._OpRecorder,
    record._StepProfile,
    record._SyncSites,
)
_host_overhead, _recording = record._host_overhead, record._recording
_time_parts, _timed_step = record._time_parts, record._timed_step

STEP_1B_ROUNDS = 5  # the headline profile's rounds (bench/profiles.py at 3d82f92)
STEP_1B_VOCAB = 512
CLI_HEADS, CLI_LAYERS = 16, 24  # bench_engines' 1b shape: num_kv_heads = heads // 4
CLI_HIDDEN, CLI_INTERMEDIATE_PER_HIDDEN = 2048, 5504 / 2048
CLI_TIMED_STEPS = 3  # bench_engines' steps 2-4 of 4: the first is the warm-up
REAL = 0  # a child's width: the measured run's own shape (--device cuda)


def _stand_in_liger() -> None:
    """Liger's RMSNorm, RoPE and SwiGLU as prepare_model applies them on CUDA."""
    from transformers.models.llama import modeling_llama as ml

    overhead = _host_overhead()
    ml.LlamaRMSNorm.forward = overhead._fused_rms_norm
    ml.LlamaMLP.forward = overhead._fused_mlp
    ml.apply_rotary_pos_emb = overhead._fused_rope


def _stand_in_varlen_attention():
    """torch's varlen attention, its Python and custom op as they ran; a CPU kernel of one
    op stands in for CUDA's (a causal SDPA over all T tokens at once would cost T^2 here)."""
    import torch

    _pin_torch_varlen()

    def forward(q, k, v, *args, **kwargs):
        return q.mul(1.0), q.new_zeros(q.shape[1], q.shape[0]), q.new_zeros(2)

    def backward(grad, q, k, v, *args, **kwargs):
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

    lib = torch.library.Library("torch_attn", "IMPL")
    lib.impl("_varlen_attn", forward, "CPU")
    lib.impl("_varlen_attn_backward", backward, "CPU")
    return lib


def _pin_torch_varlen() -> None:
    """The attention both commits picked on the H200 (no flash-attn there): torch's varlen."""
    import reflectioncoder.kernels  # noqa: F401  (its __init__ binds the function's name)

    va = sys.modules["reflectioncoder.kernels.varlen_attention"]
    va.varlen_backend = lambda *args, **kwargs: "torch_varlen"


def _stand_in_loss_kernels() -> None:
    """The fused loss as on CUDA: the GPU's chunk budget, one op for the Triton row kernel
    and one for the slot sum (the CPU path loops over 32-row blocks); its plan marked."""
    import reflectioncoder.kernels.fused_loss as fl
    import torch
    from reflectioncoder.kernels.fused_loss_torch import GPU_BUDGET

    def row_op(z, targets, ce_w, kl_w, ce_out, kl_out, write_dz) -> None:
        ce_out.copy_(ce_w)  # one launch writes CE, KL and d z in place

    def sum_slots(dh_slots, rows, n, g):
        out = torch.zeros(n, dh_slots.shape[1], dtype=dh_slots.dtype)
        return out.index_add_(0, rows, dh_slots)

    plan = fl.build_plan

    def build_plan(*args, **kwargs):
        MARKS.mark("loss plan nonzero")  # its nonzero: a CUDA host waits for the GPU here
        return plan(*args, **kwargs)

    check = fl.check_loss_inputs

    def check_as_on_cuda(*args, check_indices=None, **kwargs):
        return check(*args, check_indices=False, **kwargs)  # CUDA's default: no index check

    fl.check_loss_inputs = check_as_on_cuda
    fl.torch_row_op = row_op
    fl.torch_sum_slots = sum_slots
    fl.default_budget = lambda device: GPU_BUDGET
    fl.build_plan = build_plan


def _stand_ins(device: str):
    """The CPU's one-op stand-ins; on CUDA the run's own kernels, only the attention pinned
    to torch's varlen kernel (what both commits picked on the H200, which had no flash-attn;
    a device with flash-attn installed would otherwise pick it)."""
    if device == "cuda":
        _pin_torch_varlen()
        return None
    _stand_in_liger()
    _stand_in_loss_kernels()
    return _stand_in_varlen_attention()


def _wrap_trainer(
    trainer_cls, counter: _SyncSites | None, prof: _StepProfile | None = None
) -> list[dict]:
    """Time each train_step (its sync marks), the background packing's CPU, and mark the
    step's last sync (the ``tolist`` right after clipping)."""
    import torch

    rows: list[dict] = []
    step_fn, prepare_fn = trainer_cls.train_step, trainer_cls._prepare
    MARKS.timed(torch.nn.utils, "clip_grad_norm_")
    clip = torch.nn.utils.clip_grad_norm_

    def clip_then_mark(*args, **kwargs):
        out = clip(*args, **kwargs)
        MARKS.mark("tolist after clipping")  # the next line's .tolist() drains the GPU
        return out

    def prepare(self, step):
        t0 = time.thread_time()
        out = prepare_fn(self, step)
        MARKS.prepare_cpu.append(time.thread_time() - t0)
        return out

    def train_step(self):
        counting = counter is not None and self.step == 1  # the second step, as timed ones
        with _timed_step(rows) as timed:
            with prof.step(self.step) if prof else contextlib.nullcontext():
                with counter.mode() if counting else _recording():
                    row = step_fn(self)
            timed.update(step=row["step"], tokens=row["tokens"])
        return row

    trainer_cls.train_step = train_step
    trainer_cls._prepare = prepare
    torch.nn.utils.clip_grad_norm_ = clip_then_mark
    return rows


def _cli_arch(width: int) -> dict:
    """bench_engines' 1b shape at hidden size ``width`` (its MLP scaled with it)."""
    return {
        "hidden_size": width,
        "intermediate_size": round(width * CLI_INTERMEDIATE_PER_HIDDEN),
        "num_layers": CLI_LAYERS,
        "num_heads": min(CLI_HEADS, width),
    }


def _cli_argv(folder: Path, data: Path, device: str) -> list[str]:
    """bench_engines' plain case's ``reflectioncoder train`` command at de58a14."""
    argv = ["train", "--preset", "tiny"]
    for o in (
        f"model.name_or_path={folder / 'model'}",
        "model.gradient_checkpointing=true",
        f"data.files=[{data}]",
        "checkpoint.save_every=0",
        "checkpoint.save_final=false",
        "train.samples_per_step=48",
        f"train.max_steps={CLI_TIMED_STEPS + 1}",
        f"train.device={device}",
        *(["train.threads=1"] if device == "cpu" else []),
        "model.dtype=bf16",  # as on CUDA: fp32 weights under bf16 autocast, plain engine
        "optim.lr=1e-4",
        "packing.max_tokens=16384",
        "logging.progress=false",
        "logging.tensorboard=false",
        "logging.plot=false",
        "distributed.backend=none",
    ):
        argv += ["--set", o]
    return argv


def _cli_child(width: int, counter: _SyncSites | None, device: str, trace: str | None) -> dict:
    """bench_engines' plain case at de58a14 (bench/results/gpu/engines_cuda_bf16.json), at
    hidden size ``width`` (``REAL``: bench_engines' 1b shape, as run on CUDA)."""
    import torch

    if device == "cpu":
        torch.set_num_threads(1)
    lib = _stand_ins(device)
    from reflectioncoder.train.toydata import write_toy_jsonl

    from reflectioncoder.cli import main
    from reflectioncoder.model import build_tiny_llama
    from reflectioncoder.tokenizer import train_tokenizer
    from reflectioncoder.train import trainer
    from reflectioncoder.train.metrics import MetricsLogger

    prof = _StepProfile(None, device, 1, CLI_TIMED_STEPS)  # the second run's trace
    rows = _wrap_trainer(trainer.Trainer, counter, prof)
    _time_parts(torch.optim.AdamW, MetricsLogger)
    arch = _cli_arch(width or CLI_HIDDEN)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)  # bench_engines._prepare at de58a14: 48 samples x 4 steps
        data = write_toy_jsonl(folder / "toy.jsonl", 48 * 4, seed=0, generation_fraction=0.0)
        tok = train_tokenizer(data.read_text().splitlines(), vocab_size=400)
        kv_heads = max(1, arch["num_heads"] // 4)  # bench_engines' heads // 4 (1 at width 2)
        model = build_tiny_llama(len(tok), num_kv_heads=kv_heads, seed=0, **arch)
        model.config._attn_implementation = "sdpa"
        model.save_pretrained(str(folder / "model"))
        tok.save_pretrained(str(folder / "model"))
        argv = _cli_argv(folder, data, device)
        if main([*argv, "--set", f"checkpoint.out_dir={folder / 'run-plain'}"]) != 0:
            raise RuntimeError("reflectioncoder train failed")
        out = {"arch": arch, "steps": list(rows), "prepare_cpu_s": list(MARKS.prepare_cpu)}
        if trace:  # the same run again in this process, profiled: its own warm-up step first
            rows.clear()
            prof.trace = trace
            if main([*argv, "--set", f"checkpoint.out_dir={folder / 'run-profiled'}"]) != 0:
                raise RuntimeError("reflectioncoder train (profiled) failed")
            out["profiled_steps"] = rows
    if lib is not None:
        lib._destroy()
    return out


def _step_1b_shape(headline: dict, width: int) -> dict:
    """The headline profile's shape (``REAL``), or at hidden size ``width``: as many heads,
    the KV heads a quarter of them (at least one), the MLP 4x."""
    if width == REAL:
        keys = ("hidden", "heads", "kv_heads", "intermediate", "layers", "vocab")
        return {k: headline[k] for k in keys if k in headline}
    heads = min(32, width)
    return dict(hidden=width, heads=heads, kv_heads=max(1, heads // 4), intermediate=4 * width)


def _ids_modulo(batches: list, vocab: int) -> list:
    """The micro-batches with their token ids and targets modulo ``vocab``."""
    import torch

    return [
        dataclasses.replace(
            b,
            input_ids=b.input_ids % vocab,
            targets=torch.where(b.targets >= 0, b.targets % vocab, b.targets),
        )
        for b in batches
    ]


def _step_1b_calls(call, tokens: int, counter, device: str, trace) -> tuple[list, list]:
    """The suite's calls, timed: one warm-up, then STEP_1B_ROUNDS (the second counted where
    ``counter``); with ``trace`` the timed calls again, profiled."""
    rows, profiled = [], []
    for i in range(1 + STEP_1B_ROUNDS):
        with _timed_step(rows, i + 1, tokens):
            with counter.mode() if counter is not None and i == 1 else _recording():
                call()
    prof = _StepProfile(trace, device, 1, STEP_1B_ROUNDS)
    for i in range(1, 1 + STEP_1B_ROUNDS) if trace else ():
        with _timed_step(profiled, i + 1, tokens), prof.step(i):
            call()
    return rows, profiled


def _step_1b_child(width: int, counter: _SyncSites | None, device: str, trace: str | None) -> dict:
    """bench/test_train_step.py's ``ours`` at 3d82f92 with the headline profile (LLAMA_1B: 16
    layers, 32 / 8 heads, vocabulary 128256; 4 samples in 3 micro-batches; bf16 weights, no
    checkpointing; torch's AdamW, foreach as on CUDA tensors), at hidden size ``width``
    (``REAL``: the profile's own shape and vocabulary, as run on CUDA)."""
    import torch

    if device == "cpu":
        torch.set_num_threads(1)
    lib = _stand_ins(device)
    import reflectioncoder.model as rm
    from bench.profiles import PROFILES
    from bench.providers import train_step as T

    headline = PROFILES["headline"].train_step
    shape = _step_1b_shape(headline, width)
    cfg = T.TrainStepConfig(**{**headline, **shape}, device=device)
    cfg = dataclasses.replace(cfg, dtype="bf16")
    build = rm.build_tiny_llama
    # The samples are drawn with the run's vocabulary (so the lengths and packing are the
    # run's); the model and loss take ids modulo STEP_1B_VOCAB: the (rows, V) logits of a
    # 128K vocabulary would cost the CPU far more than their one GEMM launch; the chunks, one
    # per micro-batch at either size under the GPU's budget, and so the ops, are the same.
    vocab = STEP_1B_VOCAB if device == "cpu" else None
    if vocab:
        rm.build_tiny_llama = lambda _, **kw: build(vocab, **kw)
    _time_parts(torch.optim.AdamW)
    model, opt, data, step = T.setup_provider("ours", cfg)
    rm.build_tiny_llama = build
    for group in opt.param_groups:
        group["foreach"] = True  # torch's default for CUDA tensors (on the CPU a loop)
    batches = _ids_modulo(data[0], vocab) if vocab else data[0]
    call = lambda: step(model, opt, batches, cfg)  # ends in the suite's synchronize on CUDA
    tokens = sum(b.num_tokens for b in batches)
    rows, profiled = _step_1b_calls(call, tokens, counter, device, trace)
    if lib is not None:
        lib._destroy()
    micro = [[list(b.seq_lens), int(b.loss_rows.shape[0])] for b in batches]
    out = {"arch": shape, "steps": rows, "prepare_cpu_s": [], "micro_batches": micro}
    return out | ({"profiled_steps": [rows[0], *profiled]} if trace else {})


# bench/results/gpu/pytest_benchmark_test_{mask,packing}.json: host-only rows the suite timed on
# the H200 machine of the 1.5B step (3d82f92, CPU ms, median of 5 after a warm-up, torch's
# default threads there), timed here again with the same code: their ratio is how fast that
# machine's host ran this kind of Python-heavy work against this one's.
H200_HOST_ROWS_MS = {
    "mask host 512 samples": 13.957,
    "pack_step block_mask/tce rate 0.5": 141.786,
    "pack_step block_mask/tce rate 1": 137.323,
    "pack_step random_token_mask rate 0.5": 150.62,
    "pack_step random_token_mask rate 1": 132.591,
}


def _host_speed_child(width: int, counter: _SyncSites | None, device: str, trace) -> dict:
    """The H200 suite's host-only rows at 3d82f92 (H200_HOST_ROWS_MS), timed as it timed them."""
    from bench.providers import mask as M
    from bench.providers import packing as P

    x = M.setup_mask(512, 0.5, device="cpu")
    samples = P.setup_packing(512, 3407)
    fns = {"mask host 512 samples": M.make_mask_fn("host", x)}
    for strategy in ("block_mask/tce", "random_token_mask"):
        for rate in (0.5, 1.0):
            fns[f"pack_step {strategy} rate {rate:g}"] = lambda s=strategy, r=rate: P.pack_step(
                samples, s, r, 16384, 3407
            )
    rows = {}
    for name, fn in fns.items():
        fn()
        cpu = []
        for _ in range(5):
            c0 = time.process_time()
            fn()
            cpu.append(time.process_time() - c0)
        rows[name] = 1e3 * statistics.median(cpu)
    return {"arch": {}, "steps": [], "prepare_cpu_s": [], "cpu_ms": rows}


def _child(
    kind: str,
    site: Path,
    width: int,
    count_syncs: bool,
    device: str = "cpu",
    trace=None,
    record_ops: bool = False,
) -> dict:
    sys.path.insert(0, str(site))
    counter = _SyncSites(site) if count_syncs else None
    MARKS.recorder = _OpRecorder() if record_ops else None
    run = {"cli": _cli_child, "step_1b": _step_1b_child, "host_speed": _host_speed_child}[kind]
    out = {"width": width, "device": device, **run(width, counter, device, trace)}
    if counter is not None:
        out["syncs"], out["ops"] = counter.sites, counter.ops
    if MARKS.recorder is not None:
        out["op_steps"], out["recorder_per_op_s"] = MARKS.recorder.steps, MARKS.recorder.per_op_s
    return out
