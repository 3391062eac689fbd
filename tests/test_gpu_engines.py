"""The trainer's engines on a real device (marker ``gpu``): the offloaded optimizer's pipelined
copies, the FSDP engine on NCCL against the one-process engine, kept outputs under
checkpointing plans, on the tiny Llama as the trainer builds it on CUDA.

``bench/gpu_suite.py`` runs these on a lent GPU after tests/test_gpu_kernels.py. The offloaded
optimizer's case also runs with RC_TEST_DEVICE=cpu (the dry run); the FSDP and kept-outputs
cases skip without CUDA (tests/test_gpu_names.py runs their helpers on the CPU).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_pipelined_host_optimizer_equals_blocking_copies(device, seed, monkeypatch) -> None:
    """The offloaded one-process engine's boundary (``HostPipeline.step``: sums out on a
    side stream, the host's AdamW on each bucket as its event says it landed, bf16 weights back
    on another) gives the same 3 steps as plain blocking copies, bitwise: weights, masters, m,
    v and step counts. Buckets of 8 MiB, so a host that read a bucket before its copy landed
    would see the previous step's sums."""
    import copy

    from reflectioncoder.config_loader import load_config
    from reflectioncoder.train import distributed, host_optimizer, local_engine

    # On the CPU (the dry run, tests/test_gpu_names.py) both runs copy plainly: the same body
    # runs, so a rename fails there rather than on a lent GPU.
    monkeypatch.setattr(host_optimizer, "HOST_BUCKET_BYTES", 8 * 2**20)
    run = load_config(
        base="tiny",
        overrides=["distributed.offload_optimizer=true", "optim.lr=1e-3", "optim.grad_clip=0.5"],
    )
    info = distributed.DistInfo(0, 1, 0, device, deepspeed=False)
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(8)])
    inputs = [torch.randn(256, 1024, generator=gen) for _ in range(6)]  # 3 steps of 2
    states = []
    for pipelined in (True, False):
        module = copy.deepcopy(model).to(device, torch.bfloat16)
        engine = local_engine.LocalEngine(module, run, info)
        on_cuda = device.type == "cuda"
        assert (engine.host.copy_streams is not None) == on_cuda and len(engine.host.buckets) >= 4
        if not pipelined:
            engine.host.copy_streams = None  # blocking copies on the compute stream
        for step in range(3):
            for j in (0, 1):
                engine.start_micro_batch(last=j == 1)
                x = inputs[2 * step + j].to(device, torch.bfloat16)
                loss = engine(x).float().square().mean()
                engine.backward(loss)
            assert engine.finish_step(loss.detach().reshape(1)).applied
        moments = [engine.optimizer.state[m] for m in engine.params]
        states.append(
            [w.detach().cpu() for w in engine.weights]
            + [m.detach().clone() for m in engine.params]
            + [s[k].cpu() for s in moments for k in ("exp_avg", "exp_avg_sq", "step")]
        )
    pipelined, blocking = states
    assert all(torch.equal(a, b) for a, b in zip(pipelined, blocking, strict=True))


# A tiny Llama on the device as the trainer builds it there: bf16, prepare_model's CUDA
# defaults (Liger's RMSNorm / SwiGLU / RoPE kernels, the varlen attention ``auto`` picks), head
# size 64. The FSDP and kept-outputs cases share it, so a compiled layer's kernels are
# compiled once (inductor's caches).
LLAMA = {"hidden_size": 128, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1}


def _cuda_llama(seed: int, plan: str | None = None, compiled: bool = False, device="cuda"):
    from test_packed_rows import VOCAB

    from reflectioncoder.activation_checkpointing import apply_plan
    from reflectioncoder.model import build_tiny_llama, cast_weights, compile_layers, prepare_model

    model = build_tiny_llama(VOCAB, seed=seed, **LLAMA)
    cast_weights(model, device, torch.bfloat16)  # as the trainer: RoPE's inv_freq stays fp32
    prepare_model(model)  # liger None: on, on CUDA
    mlp = model.model.layers[0].mlp._get_name()
    assert mlp == ("LigerSwiGLUMLP" if device == "cuda" else "LlamaMLP"), mlp
    if plan is not None:
        apply_plan(model, (plan,) * LLAMA["num_layers"])
    if compiled:
        compile_layers(model)  # inductor, as model.compile auto does on CUDA
    return model


def _fsdp_steps(seed: int, device: str = "cuda") -> list[list]:
    """3 steps of 2 packed micro-batches each (the first seeds from ``seed`` that pack >= 2)."""
    from test_packed_rows import _batches

    steps, s = [], seed
    while len(steps) < 3:
        batches = _batches(s)[1]
        s += 1
        if len(batches) >= 2:
            steps.append([b.to(device) for b in batches[:2]])
    return steps


def _run_step(engine, micro_batches, poison: bool = False):
    """One optimizer step through the engine API, as ``Trainer.train_step`` drives it."""
    losses = []
    for j, batch in enumerate(micro_batches):
        engine.start_micro_batch(j == len(micro_batches) - 1)
        loss = engine(batch)[0]
        loss = loss * float("nan") if poison else loss
        engine.backward(loss)
        losses.append(loss.detach())
    return engine.finish_step(torch.stack(losses).sum().double().reshape(1))


def _fsdp_state(engine) -> list[torch.Tensor]:
    """The engine's fp32 masters and AdamW's m, v and step counts, whole, on the host."""
    from torch.distributed.tensor import DTensor

    out = []
    for p in engine.params:
        state = engine.optimizer.state[p]
        out += [p.detach(), state["exp_avg"], state["exp_avg_sq"], state["step"]]
    return [(t.full_tensor() if isinstance(t, DTensor) else t).cpu().clone() for t in out]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_fsdp_engine_on_nccl_gives_the_local_engines_steps(
    device, seed, compiled, tmp_path, monkeypatch
):
    """``distributed.backend: fsdp`` on CUDA in one process: a group of one over NCCL started as
    the trainer starts it (``distributed.setup``), FSDP2's bf16 gathers of the fp32 shards,
    fused AdamW on CUDA DTensors, Liger's kernels and (compiled) inductor-compiled layers beside
    FSDP's hooks. 3 steps of 2 micro-batches give the one-process engine's losses and gradient
    norms and final weights within the bf16 rule (tests/test_local_engine_ranks.py's); a NaN
    step changes no master; the sharded checkpoint (DCP) saved and read into a fresh engine
    gives the masters, m, v and step counts bitwise, and the next step as the engine that
    saved it. On the CPU (the dry run) the same body runs eager over gloo, without Liger."""
    import torch._dynamo
    from test_local_engine_ranks import BF16_TOLERANCE, same_final_weights

    from reflectioncoder.config_loader import load_config
    from reflectioncoder.train import distributed
    from reflectioncoder.train.fsdp_engine import FSDPEngine, check_fsdp_run
    from reflectioncoder.train.local_engine import LocalEngine
    from reflectioncoder.train.loss_module import ReflectionLossModule

    if device.type != "cuda" and compiled:  # the eager case runs this body over gloo there
        pytest.skip(
            "inductor's CPU build takes minutes (compiled FSDP on the CPU: test_fsdp_engine)"
        )
    on = device.type
    torch._dynamo.reset()
    port = str(distributed._free_port())
    group_of_one = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}  # fmt: skip
    for key, value in group_of_one.items():  # what setup sets without a launcher, undone after
        monkeypatch.setenv(key, value)
    arch = "model.arch={hidden_size: 128, num_layers: 2, num_heads: 2, num_kv_heads: 1}"
    overrides = [arch, "model.dtype=bf16", "distributed.backend=fsdp", f"train.device={on}"]
    run = load_config(base="tiny", overrides=overrides)
    info = distributed.setup(run.distributed, on)
    try:
        backend = "nccl" if on == "cuda" else "gloo"
        assert torch.distributed.get_backend() == backend and info.world_size == 1
        check_fsdp_run(run, info.device)

        def module() -> ReflectionLossModule:
            return ReflectionLossModule(_cuda_llama(seed, compiled=compiled, device=on))

        local = LocalEngine(module(), run, info)
        fsdp = FSDPEngine(module(), run, info)
        steps = _fsdp_steps(seed, on)
        rows = {"local": [], "fsdp": []}
        for name, engine in (("local", local), ("fsdp", fsdp)):
            for micro_batches in steps:
                result = _run_step(engine, micro_batches)
                assert result.applied
                rows[name].append({"loss": result.stats[0], "grad_norm": result.grad_norm})
        if os.environ.get("RC_GPU_FIGURES"):
            with open(os.environ["RC_GPU_FIGURES"], "a") as f:
                f.write(json.dumps({"test": "fsdp_engine", "compiled": compiled, **rows}) + "\n")
        for want, got in zip(rows["local"], rows["fsdp"], strict=True):
            for key, rel, _ in BF16_TOLERANCE:
                if key in got:
                    assert got[key] == pytest.approx(want[key], rel=rel), (key, rows)
        want = {k: v.cpu() for k, v in local.full_state_dict().items()}
        got = fsdp.full_state_dict()
        same_final_weights(want, got, "bf16", len(steps))
        initial = _cuda_llama(seed, device=on).state_dict()  # every weight moved: it trained
        assert not [k for k, v in initial.items() if torch.equal(got[k], v.cpu())]

        before = _fsdp_state(fsdp)
        assert not _run_step(fsdp, steps[0], poison=True).applied
        assert all(torch.equal(a, b) for a, b in zip(before, _fsdp_state(fsdp), strict=True))

        fsdp.save_state(tmp_path)
        loaded = FSDPEngine(module(), run, info)
        loaded.load_state(tmp_path)
        assert all(torch.equal(a, b) for a, b in zip(before, _fsdp_state(loaded), strict=True))
        # fused AdamW on what DCP loaded (its step counts on the device), as the saving engine
        results = [_run_step(e, steps[1]) for e in (fsdp, loaded)]
        assert all(r.applied for r in results)
        assert results[1].grad_norm == pytest.approx(results[0].grad_norm, rel=1e-3)
        same_final_weights(fsdp.full_state_dict(), loaded.full_state_dict(), "bf16", 1)
    finally:
        distributed.shutdown()


def _packed_inputs(seed: int, tokens: int = 4096, sequences: int = 4, device: str = "cuda"):
    """A packed batch of ``sequences`` equal sequences (forward_hidden's inputs)."""
    from types import SimpleNamespace

    from test_packed_rows import VOCAB

    gen = torch.Generator().manual_seed(seed)
    n = tokens // sequences
    return SimpleNamespace(
        input_ids=torch.randint(0, VOCAB, (tokens,), generator=gen).to(device),
        position_ids=torch.arange(n).repeat(sequences).to(device),
        cu_seqlens=torch.arange(0, tokens + 1, n, dtype=torch.int32).to(device),
        max_seqlen=n,
        seq_lens=[n] * sequences,
    )


def _kept_run(model, batch, probe) -> dict:
    """One forward + backward of ``model`` (a first one warms it: cuBLAS's workspace, compiled
    graphs): the bytes the forward leaves held, the peak over both, the backward's GEMM and
    attention calls, the gradients."""
    from test_kept_outputs import _CountGemms

    from reflectioncoder.model import forward_hidden

    for _ in range(2):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = (forward_hidden(model, batch).float() * probe).sum()
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - base
        with _CountGemms() as count:
            loss.backward()
        torch.cuda.synchronize()
        del loss
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    peak = torch.cuda.max_memory_allocated() - base
    return {"held": held, "peak": peak, "gemms": count.gemms, "grads": grads}


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_kept_outputs_on_cuda(device, seed, compiled, monkeypatch):
    """save_gemms and offload keep only the GEMM / attention outputs a backward reads
    (activation_checkpointing.KeptOutputs, activation_offload.LayerStore) with Liger's real
    Triton kernels, the varlen attention (compiled: our attention op), bf16, 4096 packed tokens:
    the gradients of no checkpointing within the bf16 rule, no GEMM rerun in the backward (a
    TorchDispatchMode's count, as tests/test_kept_outputs.py), and save_gemms holding less than
    none. Eager: the forward holds one down_proj output a layer (T x D bf16) less than the kept
    set before the change (every GEMM output: torch's pack hook hidden, as
    test_without_the_pack_hook_every_output_is_kept does), and its peak is lower by about one.
    Compiled layers keep torch's selective checkpoint (offloaded layers stay eager). The
    figures go to RC_GPU_FIGURES when set."""
    import torch._dynamo
    from test_kept_outputs import GEMMS

    if device.type != "cuda":
        pytest.skip("Liger's Triton kernels and the CUDA attention (stand-ins on the CPU)")
    torch._dynamo.reset()
    batch = _packed_inputs(seed)
    tokens, hidden = batch.input_ids.numel(), LLAMA["hidden_size"]
    probe = torch.randn(tokens, hidden, device="cuda")
    runs = {}
    for policy in ("none", "save_gemms", "offload"):
        runs[policy] = _kept_run(_cuda_llama(seed, policy, compiled), batch, probe)
    if not compiled:  # the kept set before the change: every GEMM and attention output
        with monkeypatch.context() as m:
            m.delattr(torch._C._autograd, "_top_saved_tensors_default_hooks")
            runs["every_output"] = _kept_run(_cuda_llama(seed, "save_gemms"), batch, probe)
    down_proj = tokens * hidden * 2  # one layer's bf16 down_proj output
    figures = {p: {k: r[k] for k in ("held", "peak")} for p, r in runs.items()}
    if os.environ.get("RC_GPU_FIGURES"):
        row = {"test": "kept_outputs", "compiled": compiled, "tokens": tokens, "D": hidden,
               "down_proj_bytes": down_proj, "bytes": figures}  # fmt: skip
        with open(os.environ["RC_GPU_FIGURES"], "a") as f:
            f.write(json.dumps(row) + "\n")

    want = runs["none"]
    assert want["gemms"]["mm"] > 0, want["gemms"]  # the count sees the backward's GEMMs
    for policy, run in runs.items():
        got, expected = run["gemms"], want["gemms"]
        if compiled and policy == "offload":  # eager: its attention not the compiled layer's op
            got, expected = ({k: c[k] for k in GEMMS} for c in (got, expected))
        assert got == expected, (policy, run["gemms"], want["gemms"])
        assert run["grads"].keys() == want["grads"].keys(), policy
        for name, g in run["grads"].items():
            ref = want["grads"][name].double()
            err = (g.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-30)
            assert err <= 2e-2, f"{policy} {name}: relative error {err:.2e} > 2e-2"
    assert runs["save_gemms"]["held"] < want["held"], figures
    assert runs["save_gemms"]["peak"] < want["peak"], figures
    if not compiled:
        layers = LLAMA["num_layers"]
        dropped = runs["every_output"]["held"] - runs["save_gemms"]["held"]
        assert abs(dropped - layers * down_proj) <= 0.1 * down_proj, (dropped, figures)
        lower = runs["every_output"]["peak"] - runs["save_gemms"]["peak"]
        assert 0.9 * down_proj <= lower <= (layers + 0.1) * down_proj, (lower, figures)
