"""bench.bench_host_replay: the measured CLI step's code (de58a14) replayed on the CPU finds the
host syncs that step had: the loss plan's nonzero, the teacher-CE pass's, the tolist after
clipping (slow: one short run of that commit's ``reflectioncoder train``)."""

from __future__ import annotations

import pytest

from bench import bench_host_replay as replay
from bench import host_replay_ops as ops
from bench import host_replay_profile as profile


def _site(kind: str, folder):
    """The measured commit's tree, extracted; skips where the clone lacks that commit
    (``extract`` raises RuntimeError when git archive fails)."""
    try:
        return replay.extract(replay.COMMITS[kind], folder)
    except RuntimeError:
        pytest.skip(f"{replay.COMMITS[kind]} is not in this clone's history")


@pytest.mark.slow
def test_cli_replay_finds_the_steps_syncs(tmp_path):
    site = _site("cli", tmp_path)
    out = replay._run_child("cli", site, 4, count_syncs=True)
    syncs = out["syncs"]
    nonzero = {k: n for k, n in syncs.items() if k.startswith("nonzero")}
    assert sum(nonzero.values()) == 2 and all("fused_loss_torch.py" in k for k in nonzero)
    tolist = {k: n for k, n in syncs.items() if k.startswith("tolist")}
    assert tolist == {"tolist @ reflectioncoder/train/distributed.py:421": 1}
    steps = out["steps"]
    assert [s["tokens"] for s in steps[1:]] == [7920, 7646, 7635]  # CLI_STEPS' tokens
    assert all(len(s["segments_main_cpu_s"]) == 4 for s in steps)
    assert out["ops"] > 1000


def _x(name, cat, ts, dur, tid=1, pid=1, **args):
    return {
        "ph": "X",
        "name": name,
        "cat": cat,
        "ts": ts,
        "dur": dur,
        "tid": tid,
        "pid": pid,
        "args": args,
    }


def _cuda_trace() -> dict:
    """A hand-made CUDA trace of two steps (microseconds)."""
    gpu = dict(tid=7, pid=0)
    events = [
        _x("replay step 1", "user_annotation", 0, 1000),
        _x("replay step 2", "user_annotation", 2000, 500),
        _x("aten::mm", "cpu_op", 10, 20),
        _x("aten::nonzero", "cpu_op", 100, 300),
        _x("aten::add", "cpu_op", 5, 3000, tid=2),  # the packing thread: not the step's host
        _x("cudaLaunchKernel", "cuda_runtime", 15, 5, correlation=1),
        _x("cuLaunchKernel", "cuda_driver", 60, 5, correlation=2),
        _x("cudaMemcpyAsync", "cuda_runtime", 120, 5, correlation=3),
        _x("cudaStreamSynchronize", "cuda_runtime", 150, 240),
        _x("cudaLaunchKernel", "cuda_runtime", 420, 5, correlation=5),
        _x("Optimizer.step#AdamW.step", "user_annotation", 800, 100),
        _x("cudaLaunchKernel", "cuda_runtime", 810, 5, correlation=4),
        _x("sm90_xmma_gemm_bf16bf16_bf16f32", "kernel", 30, 200, correlation=1, **gpu),
        _x("_reflection_rows_kernel", "kernel", 230, 100, correlation=2, **gpu),
        _x("Memcpy DtoH (Device -> Pageable)", "gpu_memcpy", 330, 50, correlation=3, **gpu),
        _x("flash_fwd_kernel", "kernel", 450, 200, correlation=5, **gpu),
        _x(
            "multi_tensor_apply_kernel<TensorListMetadata<4>>",
            "kernel",
            850,
            100,
            correlation=4,
            **gpu,
        ),
        _x("vectorized_elementwise_kernel", "kernel", 2100, 300, **gpu),
        {"ph": "s", "name": "ac2g", "ts": 15, "id": 1},
    ]
    return {"traceEvents": events}


def test_profile_steps_splits_gpu_time_at_syncs_and_by_category():
    """GPU busy is the union of kernels and copies, the idle gap after the nonzero's
    synchronize is the sync's, the rest between kernels; AdamW's generic foreach kernel counts
    as optimizer (launched inside its range)."""
    first, second = profile.profile_steps(_cuda_trace())
    assert first["profiled_wall_s"] == pytest.approx(2000e-6)
    assert first["gpu_busy_s"] == pytest.approx(650e-6)
    assert first["idle_at_syncs_s"] == pytest.approx(70e-6)
    assert first["idle_between_kernels_s"] == pytest.approx(1280e-6)
    assert first["idle_gaps_over_10us"] == 4
    assert (first["kernels"], first["copies"], first["launch_calls"]) == (4, 1, 4)
    assert first["host_ops"] == 2
    assert first["syncs"] == [
        {
            "call": "cudaStreamSynchronize",
            "ops": ["aten::nonzero"],
            "at_s": pytest.approx(150e-6),
            "host_wait_s": pytest.approx(240e-6),
            "gpu_idle_after_s": pytest.approx(70e-6),
        }
    ]
    split = {k: round(v * 1e6) for k, v in first["kernel_split_s"].items()}
    assert split == {
        "gemm": 200,
        "attention": 200,
        "loss": 100,
        "elementwise/other": 0,
        "optimizer": 100,
        "copy": 50,
    }
    assert second["profiled_wall_s"] == pytest.approx(500e-6)  # to the trace's last activity
    assert second["gpu_busy_s"] == pytest.approx(300e-6)
    assert second["kernel_split_s"]["elementwise/other"] == pytest.approx(300e-6)


@pytest.mark.slow
def test_cpu_profile_of_the_1b_step_returns_every_field(tmp_path):
    """--device cpu --profile: 3d82f92's step at width 2 through the profiler (CI's rehearsal of
    the GPU case): per timed call the wall, host CPU, top-level ops, and the table's row."""
    site = _site("step_1b", tmp_path)
    case = replay.profile_case("step_1b", site, "cpu", 2)
    assert len(case["steps"]) == replay.STEP_1B_ROUNDS
    for step in case["steps"]:
        assert step["tokens"] == 8857  # the headline profile's 3 micro-batches (RESULTS)
        assert 0 < step["host_main_cpu_s"] <= step["wall_s"] * 1.5
        assert step["host_ops"] > 1000 and step["host_per_op_us"] > 0
        assert step["gpu_busy_s"] == 0 and step["kernels"] == step["launch_calls"] == 0
    assert set(profile.MEDIAN_KEYS) <= set(case["median"])
    assert case["model"]["measured_h200_s"] == 0.2194 and case["model"]["model_gpu_s"] > 0
    table = profile.profile_table({"step_1b": case})
    assert "| step_1b (3d82f92) | cpu | 2 |" in table and "rehearsal" in table


def test_a_cuda_case_is_summarised_read_and_tabled():
    """The parent's side of --device cuda (a child's rows beside the trace's), which only a
    GPU runs otherwise: per-launch host cost, medians, the reading, the table row."""

    def row(step, start, cpu):
        segments = {"0: start -> end": cpu}
        times = dict(start_wall_s=start, main_thread_cpu_s=cpu, cpu_s=cpu, wall_s=0.0015)
        return dict(step=step, tokens=100, segments_main_cpu_s=segments, **times)

    steps = [row(1, 0.0, 0.003), row(2, 1.0, 0.0008), row(3, 1.002, 0.0004)]
    timed = {"width": replay.REAL, "arch": {}, "steps": steps, "profiled_steps": steps}
    case = profile.summarise_case("step_1b", "cuda", timed, profile.profile_steps(_cuda_trace()))
    first, second = case["steps"]
    assert first["wall_s"] == pytest.approx(0.002)  # to the next step's start
    assert first["host_per_launch_us"] == pytest.approx(800 / 4)
    assert second["host_per_launch_us"] == pytest.approx(400 / 1)  # no launch traced: kernels
    assert case["median"]["gpu_busy_s"] == pytest.approx(475e-6)
    assert case["reading"].startswith("(a) the host is the bound")  # 0.5 ms GPU of a 143 ms model
    table = profile.profile_table({"step_1b": case})
    assert "| step_1b (3d82f92) | cuda | as run | 0.0018 | 0.2194 |" in table
    median = dict(case["median"], gpu_busy_s=0.20, wall_s=0.22)
    assert profile._reading(median, case["model"]).startswith("(b) the GPU is slower")


@pytest.mark.parametrize(
    "argv, field",
    [(["--widths", "2"], "--widths: at least two"), (["--cases", "cli,step1b"], "--cases: step1b")],
)
def test_bad_arguments_stop_in_one_line_naming_the_flag(argv, field, capsys):
    with pytest.raises(SystemExit) as exit_:
        replay.main(argv)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: {field}" in last, last


def test_real_shape_maps_what_grows_with_the_width():
    """A size that stays is kept (tokens), the 1.5B's shrunk vocabulary restored; one that
    doubles with the width becomes the run's share of its hidden size (heads x head size 1
    -> the run's width; the CLI's MLP width, 22 and 43 at 8 and 16, -> 5504); anything else
    is an error, not a guess."""
    widths = ops.OP_WIDTHS
    assert ops._real_shape([[4527, 8], [4527, 16]], widths, "step_1b") == [4527, 2048]
    assert ops._real_shape([[512, 8], [512, 16]], widths, "step_1b") == [128256, 2048]
    assert ops._real_shape([[7646, 2, 1], [7646, 4, 1]], widths, "step_1b") == [7646, 512, 1]
    assert ops._real_shape([[22, 8], [43, 16]], widths, "cli") == [5504, 2048]
    assert ops._real_shape([[407, 8], [407, 16]], widths, "cli") == [407, 2048]
    with pytest.raises(ValueError):
        ops._real_shape([[5, 8], [7, 16]], widths, "cli")


@pytest.mark.slow
def test_op_timeline_records_the_1b_step_aligned_across_widths(tmp_path):
    """The 1.5B step's ops recorded at both widths align op by op, in four segments, and its
    GEMMs at the run's shapes do 6 x body params x tokens (bench/step_model.py's count)."""
    from bench import step_calibration as sc
    from bench import step_model as sm

    out = ops.op_timeline("step_1b", _site("step_1b", tmp_path))
    assert len(out["segments"]) == 4 and all(p > 0 for p in out["recorder_per_op_s"])
    gemm = out["categories"].index("gemm")
    flops = sum(op[2] for s in out["segments"] for op in s["ops"] if op[1] == gemm)
    tokens = sum(sum(lens) for lens, _ in sc.STEP_1B_MICRO)
    assert flops == pytest.approx(6 * sm.LLAMA_1B.shape().body_params * tokens, rel=0.005)
