"""Reading ``bench_host_replay --profile``'s steps: the Chrome trace of each timed step cut into
its figures (GPU busy and idle at host syncs and between kernels, launches, host CPU per launch,
kernel time by category), their medians against the step model's calibration row, the reading
of the calibration miss, and the markdown table. The parent's side only: the children
(bench_host_replay.py run as a script beside a replayed commit) never import it."""

from __future__ import annotations

import re
import statistics

from bench.bench_host_replay import COMMITS
from bench.host_replay_cases import REAL

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
# Host calls that wait for the GPU to drain (a D2H copy to pageable memory is a cudaMemcpyAsync
# followed by one of the synchronizes).
SYNC_CALLS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
    "cuStreamSynchronize",
    "cuCtxSynchronize",
    "cuEventSynchronize",
)
SPLIT = ("gemm", "attention", "loss", "elementwise/other", "optimizer", "copy")
CALIBRATION_ROWS = {"cli": "H200 1.06B CLI step", "step_1b": "H200 1.5B train step"}


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _top_level(ops: list[dict]) -> int:
    """How many of ``ops`` (one thread's, as Chrome trace events) no other op encloses."""
    count, end = 0, float("-inf")
    for op in sorted(ops, key=lambda e: (e["ts"], -e["dur"])):
        if op["ts"] >= end:
            count, end = count + 1, op["ts"] + op["dur"]
    return count


def _launched_in(host: list[dict], prefix: str) -> set[int]:
    """Correlation ids of the launches the host made inside a range named ``prefix...``
    (torch names each optimizer step ``Optimizer.step#AdamW.step``)."""
    ranges = [e for e in host if e.get("cat") == "user_annotation"]
    ranges = [(e["ts"], e["ts"] + e["dur"]) for e in ranges if e["name"].startswith(prefix)]
    calls = [e for e in host if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    return {
        c["args"]["correlation"]
        for c in calls
        if "correlation" in c.get("args", {}) and any(a <= c["ts"] <= b for a, b in ranges)
    }


def _profile_step(
    mark: dict, t1: float, device: list[dict], host: list[dict], optimizer: set[int]
) -> dict:
    """One step's figures: its period [mark start, t1) (the next step's start; the trace's
    last activity for the last step), microseconds in, seconds out; ``optimizer``: the
    correlation ids AdamW's steps launched (``_launched_in``)."""
    from bench.gpu_step_call import category

    t0 = mark["ts"]
    spans = [(max(e["ts"], t0), min(e["ts"] + e["dur"], t1)) for e in device]
    busy = _union([(a, b) for a, b in spans if a < b])
    gaps, last = [], t0
    for a, b in busy:
        if a > last:
            gaps.append((last, a))
        last = max(last, b)
    if last < t1:
        gaps.append((last, t1))
    calls = [e for e in host if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    calls = [e for e in calls if t0 <= e["ts"] < t1]
    ops = sorted((e for e in host if e.get("cat") == "cpu_op"), key=lambda o: (o["ts"], -o["dur"]))
    syncs, sync_gaps = [], set()
    for call in (c for c in calls if c["name"] in SYNC_CALLS):
        end = call["ts"] + call["dur"]  # the GPU drained: idle from then to the next kernel
        gap = next((g for g in gaps if g[0] <= end <= g[1]), None)
        if gap:
            sync_gaps.add(gap)
        chain = [o["name"] for o in ops if o["ts"] <= call["ts"] and o["ts"] + o["dur"] >= end]
        syncs.append(
            {
                "call": call["name"],
                "ops": chain[:2] + chain[-1:] if len(chain) > 3 else chain,
                "at_s": (call["ts"] - t0) * 1e-6,
                "host_wait_s": call["dur"] * 1e-6,
                "gpu_idle_after_s": (gap[1] - gap[0]) * 1e-6 if gap else 0.0,
            }
        )
    inside = [e for e in device if t0 <= e["ts"] < t1]
    split = dict.fromkeys(SPLIT, 0.0)
    for e in inside:
        what = category(e["name"]) if e["cat"] == "kernel" else "copy"
        if what != "copy" and e.get("args", {}).get("correlation") in optimizer:
            what = "optimizer"
        split[what] += e["dur"] * 1e-6
    idle = sum(b - a for a, b in gaps) * 1e-6
    at_syncs = sum(b - a for a, b in sync_gaps) * 1e-6
    step_ops = [o for o in ops if mark["ts"] <= o["ts"] < mark["ts"] + mark["dur"]]
    return {
        "profiled_wall_s": (t1 - t0) * 1e-6,
        "host_span_s": mark["dur"] * 1e-6,  # the host inside the step's call
        "gpu_busy_s": sum(b - a for a, b in busy) * 1e-6,
        "gpu_idle_s": idle,
        "idle_at_syncs_s": at_syncs,
        "idle_between_kernels_s": idle - at_syncs,
        "idle_gaps_over_10us": sum(b - a > 10 for a, b in gaps),
        "kernels": sum(e["cat"] == "kernel" for e in inside),
        "copies": sum(e["cat"] != "kernel" for e in inside),
        "launch_calls": sum("LaunchKernel" in c["name"] for c in calls),
        "host_ops": _top_level(step_ops),
        "syncs": syncs,
        "kernel_split_s": split,
    }


def profile_steps(trace: dict) -> list[dict]:
    """Per ``replay step N`` range of a Chrome trace (torch.profiler's export): the step's
    GPU busy time (the union of its kernels' and copies' intervals), the GPU's idle gaps (the
    one after each host sync apart from those between kernels), the host's kernel launches
    and top-level ops (the main thread's), and its kernels' time by category."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    marks = [e for e in events if e.get("cat") == "user_annotation"]
    marks = sorted(
        (e for e in marks if e["name"].startswith("replay step ")), key=lambda e: e["ts"]
    )
    if not marks:
        raise ValueError("trace: no 'replay step N' range")
    device = [e for e in events if e.get("cat") in DEVICE_CATS]
    host = [
        e for e in events if e.get("tid") == marks[0]["tid"] and e.get("pid") == marks[0]["pid"]
    ]
    end = max(e["ts"] + e["dur"] for e in marks + device)
    optimizer = _launched_in(host, "Optimizer.step")  # foreach AdamW's kernels are generic
    rows = []
    for i, mark in enumerate(marks):
        t1 = marks[i + 1]["ts"] if i + 1 < len(marks) else end
        rows.append(
            {
                "step": int(mark["name"].split()[-1]) + 1,
                **_profile_step(mark, t1, device, host, optimizer),
            }
        )
    return rows


def _model_figures(kind: str) -> dict:
    """The calibration row of this measured step (bench/step_calibration.py): measured and
    modelled step seconds, and the model's GPU seconds (its note's)."""
    from bench import step_calibration

    row = next(
        r
        for r in step_calibration.calibration_rows()
        if r["what"].startswith(CALIBRATION_ROWS[kind])
    )
    gpu = re.search(r"GPU ([\d.]+) s; overlapped", row["note"])
    host = re.search(r"host ([\d.]+) s \(at the smallest", row["note"])
    return {
        "measured_h200_s": row["measured"],
        "model_step_s": row["predicted"],
        "model_gpu_s": float(gpu.group(1)) if gpu else None,
        "replayed_host_s": float(host.group(1)) if host else None,  # the CPU replay's
    }


def _reading(median: dict, model: dict) -> str:
    """Which explanation of the miss the profile supports. (b) the GPU is slower than
    modelled: busy for most of the step and well over the model's GPU time; (a) a launch costs
    the host more: the GPU busy for about the model's time, the rest of the step idle while
    the host issues; else both, with the figures."""
    busy, wall, gpu = median["gpu_busy_s"], median["wall_s"], model.get("model_gpu_s")
    if not busy or not gpu:
        return (
            f"no GPU in this run (or no model figure), a rehearsal of the path: host "
            f"{median['host_main_cpu_s']:.3f} s main-thread CPU for {median['host_ops']:.0f} "
            f"top-level ops ({median['host_per_op_us']:.1f} us each)"
        )
    figures = (
        f"GPU busy {busy:.3f} s ({busy / gpu:.2f}x the model's {gpu:.3f} s, "
        f"{busy / wall:.0%} of the {wall:.3f} s step; measured then {model['measured_h200_s']} s), "
        f"idle {median['idle_at_syncs_s']:.3f} s at syncs and "
        f"{median['idle_between_kernels_s']:.3f} s between kernels; "
        f"host {median['host_main_cpu_s']:.3f} s main-thread CPU (the CPU replay: "
        f"{model['replayed_host_s']} s) for "
        f"{median['launch_calls']:.0f} launches ({median['host_per_launch_us']:.1f} us each)"
    )
    if busy >= 0.8 * wall and busy > 1.2 * gpu:
        return f"(b) the GPU is slower than modelled: {figures}"
    if busy <= 1.2 * gpu:
        return f"(a) the host is the bound, the GPU as modelled: {figures}"
    return f"both (a) and (b): {figures}"


MEDIAN_KEYS = (
    "wall_s",
    "host_main_cpu_s",
    "host_cpu_s",
    "profiled_wall_s",
    "profiled_host_main_cpu_s",
    "gpu_busy_s",
    "gpu_idle_s",
    "idle_at_syncs_s",
    "idle_between_kernels_s",
    "kernels",
    "launch_calls",
    "host_ops",
    "host_per_launch_us",
    "host_per_op_us",
)


def summarise_case(kind: str, device: str, timed: dict, prof_rows: list[dict]) -> dict:
    """A child's timed steps (its output: ``steps`` unprofiled, ``profiled_steps``) beside
    the profile of the same steps (``profile_steps``): per step, medians, the model's figures
    and the reading."""
    steps, again = timed["steps"][1:], timed["profiled_steps"][1:]
    rows = []
    for i, (t, p, q) in enumerate(zip(steps, prof_rows, again, strict=True)):
        nxt = steps[i + 1]["start_wall_s"] if i + 1 < len(steps) else None
        cpu = t["main_thread_cpu_s"]
        row = {"step": t["step"], "tokens": t["tokens"]}
        row["wall_s"] = nxt - t["start_wall_s"] if nxt else t["wall_s"]
        row |= {"host_main_cpu_s": cpu, "host_cpu_s": t["cpu_s"]}
        row |= {k: v for k, v in p.items() if k != "step"}
        row["profiled_host_main_cpu_s"] = q["main_thread_cpu_s"]
        launches = p["launch_calls"] or p["kernels"]  # kernels: if the driver's went untraced
        row["host_per_launch_us"] = 1e6 * cpu / launches if launches else 0.0
        row["host_per_op_us"] = 1e6 * cpu / p["host_ops"] if p["host_ops"] else 0.0
        row["segments_main_cpu_s"] = t["segments_main_cpu_s"]
        rows.append(row)
    median = {k: statistics.median(r[k] for r in rows) for k in MEDIAN_KEYS}
    median["kernel_split_s"] = {
        c: statistics.median(r["kernel_split_s"][c] for r in rows) for c in SPLIT
    }
    model = _model_figures(kind)
    out = {"commit": COMMITS[kind], "device": device, "width": timed["width"]}
    out |= {"arch": timed["arch"], "steps": rows, "median": median, "model": model}
    out["reading"] = _reading(median if device == "cuda" else {**median, "gpu_busy_s": 0}, model)
    return out


def profile_table(result: dict) -> str:
    """The markdown table of ``--profile``'s result (medians over the timed steps)."""
    head = (
        "| step (commit) | device | width | wall s | measured H200 s | model step / GPU s "
        "| GPU busy s | idle at syncs s (syncs) | idle between kernels s | host main CPU s "
        "| kernels | launches | host us / launch | host us / op | " + " | ".join(SPLIT) + " |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for kind in ("cli", "step_1b"):
        if kind not in result:
            continue
        case = result[kind]
        m, model = case["median"], case["model"]
        syncs = statistics.median(len(r["syncs"]) for r in case["steps"])
        gpu = f"{model['model_gpu_s']:.3f}" if model["model_gpu_s"] else "-"
        on_gpu = case["device"] == "cuda"  # a CPU run has no kernels: its GPU cells are "-"
        cells = [
            f"{kind} ({case['commit']})",
            case["device"],
            "as run" if case["width"] == REAL else str(case["width"]),
            f"{m['wall_s']:.4f}",
            f"{model['measured_h200_s']}",
            f"{model['model_step_s']:.3f} / {gpu}",
            f"{m['gpu_busy_s']:.4f}" if on_gpu else "-",
            f"{m['idle_at_syncs_s']:.4f} ({syncs:g})" if on_gpu else "-",
            f"{m['idle_between_kernels_s']:.4f}" if on_gpu else "-",
            f"{m['host_main_cpu_s']:.4f}",
            f"{m['kernels']:.0f}" if on_gpu else "-",
            f"{m['launch_calls']:.0f}" if on_gpu else "-",
            f"{m['host_per_launch_us']:.1f}" if on_gpu else "-",
            f"{m['host_per_op_us']:.1f}",
            *(f"{m['kernel_split_s'][c]:.4f}" if on_gpu else "-" for c in SPLIT),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for kind in ("cli", "step_1b"):
        if kind in result:
            lines.append(f"\n{kind}: {result[kind]['reading']}")
    return "\n".join(lines) + "\n"
