"""bench.step_model: the calibrated step model's rows, its calibration and its monotonic sense."""

import json

import pytest

from bench import step_calibration as sc
from bench import step_model as sm
from bench import step_stream as ss

KEYS = {
    "model",
    "card",
    "gpus",
    "engine",
    "micro_batch_tokens",
    "checkpointing",
    "default",
    "predicted_step_s",
    "mfu",
    "hfu",
    "memory_per_gpu_bytes",
    "samples_per_s_vs_recipe",
}


def _rows(capsys, *argv):
    assert sm.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def _pick(rows, **want):
    found = [r for r in rows if all(r[k] == v for k, v in want.items())]
    assert len(found) == 1, (want, len(found))
    return found[0]


def test_json_rows_have_the_keys_and_cover_the_grid(capsys):
    rows = _rows(capsys, "--json")
    assert all(KEYS <= r.keys() for r in rows)
    grid = {(r["model"], r["card"], r["gpus"], r["engine"]) for r in rows}
    for model in sm.ARCHS:
        for card in ("H100", "H200"):
            for gpus in (1, 8):
                for engine in ("zero1", "zero2", "zero3"):
                    assert (model, card, gpus, engine) in grid
    assert {r["micro_batch_tokens"] for r in rows if r["lever"] != "recipe"} == {16384}
    defaults = [r for r in rows if r["default"]]
    assert len(defaults) == 3 * 2 * 2  # one per model, card and GPU count
    # paper_preset's backend auto: the one-process engine on one GPU, ZeRO-1 on 8
    assert {(r["gpus"], r["engine"]) for r in defaults} == {(1, "local"), (8, "zero1")}
    levers = {r["lever"] for r in rows}
    for lever in ("compiled=off", "attention=fa4", "loss=full_logits", "precision=autocast"):
        assert lever in levers
    assert {"overlap=off", "checkpointing=save_gemms", "checkpointing=full", "recipe"} <= levers
    assert {"offload=on", "offload=off", "best"} <= levers
    # the default plans its checkpointing to fit, and offloads only where it must
    seven = [r for r in defaults if r["model"] == "CodeLlama-7B"]
    assert all(r["fits"] for r in seven)
    # one process keeps fp32 masters + m + v (12P) and 6P of gradients: a 7B's optimizer goes
    # to the host on one H200 too (where ZeRO-1 in one process keeps 4P of gradients and fits)
    assert [r["offload"] for r in seven if r["gpus"] == 1] == [True, True]  # H100, H200
    h200 = dict(model="CodeLlama-7B", card="H200", gpus=1, engine="zero1", lever="default")
    assert not _pick(rows, **h200)["offload"]
    assert not any(r["offload"] for r in seven if r["gpus"] == 8)


def test_calibration_reports_every_error_and_marks_the_fitted_rows(capsys):
    rows = _rows(capsys, "--calibrate", "--json")
    assert len(rows) >= 8
    for r in rows:
        assert r["error_pct"] == round(100 * (r["predicted"] / r["measured"] - 1), 1)
        assert r["within_20pct"] == (abs(r["error_pct"]) <= 20.0 + 0.05)
    fitted = [r for r in rows if r["fitted"]]
    assert len(fitted) == 2 and all(abs(r["error_pct"]) < 1 for r in fitted)
    assert any("torchtitan" in r["what"] for r in rows)
    assert any("llm-foundry" in r["what"] for r in rows)


def test_zero3_memory_falls_with_more_gpus_and_checkpointing_costs_flops():
    arch, work = sm.ARCHS["CodeLlama-13B"], sm.reflection_workload()
    full_ckpt = sm.Levers(checkpointing="full")
    mem = [sm.predict(arch, "H100", n, "zero3", full_ckpt, work).memory_bytes for n in (2, 4, 8)]
    assert mem[0] > mem[1] > mem[2]
    full = sm.predict(arch, "H100", 8, "zero1", sm.Levers(checkpointing="full"), work)
    none = sm.predict(arch, "H100", 8, "zero1", sm.Levers(checkpointing="none"), work)
    assert full.hardware_flops > full.model_flops and none.hardware_flops == none.model_flops
    assert none.memory_bytes > full.memory_bytes and none.step_s < full.step_s


def test_each_lever_moves_the_step_the_right_way(capsys):
    rows = _rows(capsys, "--json", "--model", "CodeLlama-7B")
    where = dict(model="CodeLlama-7B", card="H100", gpus=8)
    base = _pick(rows, **where, engine="zero3", lever="default")
    for lever in ("attention=fa4",):
        assert (
            _pick(rows, **where, engine="zero3", lever=lever)["predicted_step_s"]
            < (base["predicted_step_s"])
        )
    for lever in ("loss=full_logits", "overlap=off", "compiled=off", "checkpointing=full"):
        assert (
            _pick(rows, **where, engine="zero3", lever=lever)["predicted_step_s"]
            > (base["predicted_step_s"])
        )
    local = dict(model="CodeLlama-7B", card="H100", gpus=1, engine="local")
    autocast = _pick(rows, **local, lever="precision=autocast")
    assert autocast["predicted_step_s"] > _pick(rows, **local, lever="default")["predicted_step_s"]
    recipe = _pick(rows, **where, lever="recipe")
    assert recipe["samples_per_s_vs_recipe"] == 1.0 and base["samples_per_s_vs_recipe"] > 1.0
    assert 0 < base["mfu"] <= base["hfu"] < 1


def test_auto_checkpointing_uses_the_memory_full_leaves():
    """More memory (H200 over H100, ZeRO-3 over ZeRO-1) never recomputes more."""
    arch, work = sm.ARCHS["CodeLlama-7B"], sm.reflection_workload()
    fulls = []
    for card, engine in (("H100", "zero1"), ("H200", "zero1"), ("H200", "zero3")):
        levers = sm.default_levers(arch, card, 8, engine, work)
        fulls.append(sm.layer_plan(arch, card, 8, engine, levers, work).count("full"))
    assert fulls[0] > 0 and fulls == sorted(fulls, reverse=True)


def test_the_host_bound_holds_only_where_the_kernels_are_small():
    """The measured host time of eager layers binds a 1.5B model's 256-token micro-batch, not
    any model's default 16K-token one."""
    work = sm.reflection_workload()
    for arch in sm.ARCHS.values():
        levers = sm.default_levers(arch, "H100", 8, "zero1", work)
        assert sm.predict(arch, "H100", 8, "zero1", levers, work).split_s["host_bound"] == 0
    small = sm.Workload((256,), 128, 0.25, samples_per_step=0.25)
    levers = sm.Levers("none", compiled=False)
    pred = sm.predict(sm.LLAMA_1B, "H200", 1, "local", levers, small)
    assert pred.split_s["host_bound"] > 0
    assert pred.micro_s == pytest.approx(sm.LLAMA_1B.layers * sm.HOST_LAYER_S)
    # a recomputed forward (checkpoint's hooks and the forward again) costs the host about
    # what a plain forward + backward does
    assert 0.5 * sm.HOST_LAYER_S < sm.HOST_RERUN_S < 2 * sm.HOST_LAYER_S


def test_host_overhead_counts_more_ops_unfused_and_recomputed():
    """bench_host_overhead, the host term's measurement: fused kernels issue fewer ops than
    transformers' eager ones, and a recomputed forward issues its ops again."""
    from bench import bench_host_overhead as bho

    ops = {
        (kernels, ckpt): bho.measure(2, kernels, "bf16", ckpt, rounds=1)["ops"]
        for kernels in ("liger", "hf")
        for ckpt in (False, True)
    }
    assert ops["liger", False] < ops["hf", False]
    assert ops["liger", False] < ops["liger", True]
    assert ops["hf", False] < ops["hf", True]


def test_synced_step_overlaps_only_between_syncs():
    """Between two host syncs host and GPU overlap (the segment takes the longer); across a
    sync they add: one segment is max(host, GPU), more syncs never make a step faster, and no
    split is slower than host + GPU."""
    host, gpu = [0.03, 0.01, 0.02], [0.01, 0.04, 0.02]
    assert ss.synced_step_s([sum(host)], [sum(gpu)]) == pytest.approx(max(sum(host), sum(gpu)))
    assert ss.synced_step_s(host, gpu) == pytest.approx(0.03 + 0.04 + 0.02)
    assert max(sum(host), sum(gpu)) <= ss.synced_step_s(host, gpu) <= sum(host) + sum(gpu)


def test_measured_steps_use_the_replayed_host_split_at_their_syncs(capsys):
    """The 1.5B and CLI rows take their host time from bench_host_replay's JSON, one figure per
    sync-separated segment (4: three loss-plan nonzeros + the end; 3 periods of the CLI), and
    that host time is above the per-layer constants' figure, within 4x."""
    replay = json.loads(sm.HOST_REPLAY.read_text())
    assert replay["cli"]["commit"] == "de58a14" and replay["step_1b"]["commit"] == "3d82f92"
    for case, layers, per_layer in (
        ("step_1b", 3 * sm.LLAMA_1B.layers, sm.HOST_LAYER_S),
        ("cli", sm.CLI_1B.layers, sm.HOST_LAYER_S + sm.HOST_RERUN_S),
    ):
        host, bound = sc._replayed_host(case)
        assert len(host) == 4 and all(h > 0 for h in host) and sum(host) < bound
        # the replayed layers issue more than one bench_host_overhead layer (their attention
        # path's Python, the step around them): the constants are the table's lower bound
        assert 1 < sum(host) / (layers * per_layer) < 4
    rows = {r["what"]: r for r in _rows(capsys, "--calibrate", "--json")}
    for what, r in rows.items():
        if "1.5B train step" in what or "CLI step" in what:
            assert "host replayed" in r["note"], what


def test_the_one_process_offloaded_boundary_is_a_pipeline():
    """``local`` with its optimizer on the host: the slowest of sums out, host AdamW and weights
    back, plus one bucket through the other two; one bucket holding every sum is their sum."""
    params = 6_738_415_616  # CodeLlama-7B
    stages = (4 * params / sm.PCIE, params / sm.CPU_ADAM_PARAMS_S, 2 * params / sm.PCIE)
    bucket = sm.HOST_BUCKET_BYTES / (4 * params)
    got = sm.pipelined_boundary_s(params)
    assert got == pytest.approx(max(stages) + bucket * (sum(stages) - max(stages)))
    assert max(stages) < got < 0.75 * sum(stages)
    small = sm.HOST_BUCKET_BYTES // 8  # fp32 sums of one bucket
    assert sm.pipelined_boundary_s(small) == pytest.approx(
        6 * small / sm.PCIE + small / sm.CPU_ADAM_PARAMS_S
    )


def test_simulated_stream_on_a_hand_made_op_list():
    """One stream fed by one host, worked by hand: segment A (host 10) issues kernels of 3, 5
    and 1 at 0, 1 and 9: the second waits for the first (3 -> 8), the third runs 9 -> 10, the
    segment ends at 10; segment B (host 2) starts at 10 and issues 4 and 1 at 0 and 1: the
    host reaches its sync at 12, the stream drains at 15. A kernel issued after the stream is
    idle starts at its issue time; no segment is shorter than max(host, GPU busy) nor longer
    than host + GPU busy."""
    segments = [(10.0, [(0.0, 3.0), (1.0, 5.0), (9.0, 1.0)]), (2.0, [(0.0, 4.0), (1.0, 1.0)])]
    out = ss.simulate_stream(segments)
    assert out == [(10.0, 9.0, 10.0), (2.0, 5.0, 5.0)]
    assert ss.simulate_stream([(1.0, [(5.0, 2.0)])]) == [(1.0, 2.0, 7.0)]  # issued late: 5 -> 7
    for host, busy, elapsed in out:
        assert max(host, busy) <= elapsed <= host + busy


def test_op_timeline_maps_the_replayed_ops_onto_the_runs_shapes():
    """results/host_replay.json's op timelines: four sync-separated segments a step, the ops in
    issue order inside their segment's host time, and the replay's GEMMs at the run's shapes
    doing the model's FLOPs (6 x body params a token, + 2 x the recomputed ones for the CLI's
    full checkpointing) within 0.5%; each row's simulation costs at least its modelled GPU."""
    timelines = json.loads(sm.HOST_REPLAY.read_text())["op_timeline"]
    for case, arch, rec, tokens in (
        ("step_1b", sm.LLAMA_1B, 0, sum(sum(lens) for lens, _ in sc.STEP_1B_MICRO)),
        ("cli", sm.CLI_1B, 1, sc.CLI_STEPS[1][0]),
    ):
        segments = timelines[case]["segments"]
        assert len(segments) == 4
        for seg in segments:
            issues = [op[0] for op in seg["ops"]]
            assert issues == sorted(issues) and 0 <= issues[0] and issues[-1] <= seg["host_s"]
        gemm = timelines[case]["categories"].index("gemm")
        flops = sum(op[2] for seg in segments for op in seg["ops"] if op[1] == gemm)
        shape = arch.shape()
        model = (6 * shape.body_params + 2 * rec * shape.recomputed_params) * tokens
        assert flops == pytest.approx(model, rel=0.005), case
    for step, note in (sc._step_1b(), sc._cli_step()):
        busy = float(note.split(" s, GPU busy ")[1].split(" s")[0])
        assert busy <= step + 1e-4 and "simulated" in note


def test_gemm_share_reads_the_published_h100_sweep():
    """GEMM_SWEEP_H100 (triton-lang/triton#2339's cuBLAS column): each point's share is its
    rate over the largest point's, 1 from 275 GFLOP up, log-linear and rising in between; a
    decoder's factor is 1 for the headline models at 16K tokens and MPT-7B's fitted row, below
    1 for the 1.5B step's micro-batches, and divides the GEMM time of ``predict``."""
    top = sm.GEMM_SWEEP_H100[-1][1]
    for (m, n, k), rate in sm.GEMM_SWEEP_H100:
        assert sm.gemm_share(2 * m * n * k) == pytest.approx(rate / top)
    assert sm.gemm_share(1e15) == 1.0
    flops = [2 ** (30 + i / 4) for i in range(40)]
    shares = [sm.gemm_share(f) for f in flops]
    assert shares == sorted(shares) and 0 < shares[0] < shares[-1] == 1.0
    for arch in sm.ARCHS.values():
        assert sm.gemm_shape_factor(arch, 16384) == 1.0
    assert sm.gemm_shape_factor(sm.MPT_7B, 6 * 2048) == 1.0
    small = [sm.gemm_shape_factor(sm.LLAMA_1B, sum(lens)) for lens, _ in sc.STEP_1B_MICRO]
    assert all(0.75 < f < 0.9 for f in small)
    work = sm.Workload((2452,), 1095, 1, samples_per_step=1)
    levers = sm.Levers("none", compiled=False)
    gemm = sm.predict(sm.LLAMA_1B, "H200", 1, "local", levers, work).split_s["gemm"]
    plain = 6 * sm.LLAMA_1B.shape().body_params * 2452 / (989e12 * sm.GEMM_EFF)
    assert gemm == pytest.approx(plain / sm.gemm_shape_factor(sm.LLAMA_1B, 2452))


def test_each_replayed_op_pays_the_drivers_launch_before_it_is_issued():
    """HOST_LAUNCH_S (the published cuLaunchKernel cost): the i-th kernel of a segment is issued
    after i + 1 launches on top of its replayed share, and the segment's host grows by one
    launch a kernel, so no simulated step gets faster."""
    launch = ss.HOST_LAUNCH_S
    assert 1e-6 <= launch <= 5e-6
    kernels = [(0.0, 3.0), (0.5, 1.0)]
    assert ss._issued(10.0, kernels) == [(launch, 3.0), (5.0 + 2 * launch, 1.0)]
    assert ss._launched(10.0, kernels) == 10.0 + 2 * launch
    with_launch = ss._simulated([10.0], [kernels])
    assert with_launch[0][0] == 10.0 + 2 * launch and with_launch[0][2] >= 10.0


def test_each_simulated_kernel_adds_the_streams_fixed_time():
    """KERNEL_FIXED_S: the replayed kernels share each category's modelled total and each adds
    the published fixed time on top, so a step's kernels sum to the totals plus n x that."""
    assert 0.5e-6 <= ss.KERNEL_FIXED_S <= 2e-6 and ss.KERNEL_FLOOR_S == 0
    totals = dict.fromkeys(("gemm", "attention", "loss", "elementwise", "optimizer"), 1.0)
    kernels, _ = sc._op_kernels("step_1b", totals)
    n = sum(len(seg) for seg in kernels)
    got = sum(seconds for seg in kernels for _, seconds in seg)
    assert got == pytest.approx(len(totals) + n * ss.KERNEL_FIXED_S)
