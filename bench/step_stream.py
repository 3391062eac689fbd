"""One CUDA stream simulated, for the step model's calibration (bench/step_calibration.py): the
host issues each op (a driver call to launch it, ``HOST_LAUNCH_S``), the GPU runs the kernels
in order, each at least ``KERNEL_FLOOR_S`` and ``KERNEL_FIXED_S`` more, and the host waits for
the stream to drain at each sync."""

from __future__ import annotations

# The least GPU time a kernel takes on the stream, whatever its size (FLOOR_NOTE says whose).
KERNEL_FLOOR_S = 0.0
FLOOR_NOTE = "no published floor of a kernel's own time on H100 / H200: 0"
# What each kernel adds to the stream whatever its size (the GPU's launch, ramp and drain),
# PUBLISHED, two ways: pytorch/pytorch#161104, a 1,024-element add 2,000 times back to back
# in one CUDA graph, 1.1-1.3 us each (card not stated); Liger's H100 benchmark
# (linkedin/Liger-Kernel benchmark/data/all_benchmark_data.csv, relu_squared, M = 4096, bf16,
# N = 128-512: torch's two kernels against Liger's one), 0.7-1.3 us for the second kernel
# once its bytes at the sweep's 3.04 TB/s are taken off. 1.2 us, added to every kernel of the
# simulated stream (not to ``predict``: about 1,000 kernels a 7B micro-batch, 0.03%). A lone
# kernel timed with CUDA events costs more (the same sweep's 6.1 us intercept, 7.3 us at
# 2 MB), which is the events' and a cold launch's, not the stream's.
KERNEL_FIXED_S = 1.2e-6
# The host's driver call to launch a kernel (cuLaunchKernel), which a CPU op of the replay never
# makes: PUBLISHED, 3.0 us (0 arguments) to 3.3 us (19), meta-pytorch/tritonbench PR 1017's
# nop_triton_direct_culaunch (GB200's host, 2026-04, called through ctypes, so an upper end;
# a walk-through of the eager path, jiahuanglin.xyz "From PyTorch op to kernel launch", puts
# the driver at 1-3 us). Added once per replayed op, before the op is issued.
HOST_LAUNCH_S = 3.0e-6


def simulate_stream(segments: list[tuple[float, list[tuple[float, float]]]]) -> list[tuple]:
    """One CUDA stream fed by one host thread, per sync-separated segment (host seconds, its
    kernels as (issue time since the segment's start, GPU seconds) in issue order): a kernel
    starts when issued or when the one before it ends, whichever is later; at the segment's
    end the host waits for the stream to drain (its sync), and the next segment starts then.
    The stream starts idle. Returns per segment (host s, GPU busy s, elapsed s); the step is
    the sum of the elapsed."""
    out, clock, free = [], 0.0, 0.0
    for host, kernels in segments:
        busy = 0.0
        for issue, seconds in kernels:
            free = max(clock + issue, free) + seconds
            busy += seconds
        end = max(clock + host, free)
        out.append((host, busy, end - clock))
        clock = end
    return out


def _issued(host: float, kernels: list[tuple], start: float = 0.0) -> list[tuple]:
    """``kernels`` (issue share, GPU s) issued over ``host`` seconds from ``start``, each after
    its own launch and the launches before it (HOST_LAUNCH_S each)."""
    return [
        (start + share * host + (i + 1) * HOST_LAUNCH_S, seconds)
        for i, (share, seconds) in enumerate(kernels)
    ]


def _launched(host: float, kernels: list[tuple]) -> float:
    """A segment's replayed host time plus its kernels' launches."""
    return host + len(kernels) * HOST_LAUNCH_S


def _simulated(host: list[float], kernels: list[list[tuple]]) -> list[tuple]:
    """``simulate_stream`` with each kernel issued at its share of its segment's host time."""
    pairs = zip(host, kernels, strict=True)
    return simulate_stream([(_launched(h, ks), _issued(h, ks)) for h, ks in pairs])


def synced_step_s(host: list[float], gpu: list[float]) -> float:
    """A step whose host waits for the GPU at each sync: per sync-separated segment the host
    issues while the GPU runs what was issued, and the segment ends when both are done, so it
    takes max(host, GPU) (the GPU cannot run ahead of the host, the host cannot pass the sync);
    the step is the sum over its segments."""
    return sum(max(h, g) for h, g in zip(host, gpu, strict=True))
