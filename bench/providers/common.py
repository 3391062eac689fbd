"""Measurement shared by every benchmark: device description, the commit, card peaks, extra peak
memory, and the one writer of a report's rows.

Extra peak memory is the high-water mark of one call above what was allocated before it:
- CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus ``memory_allocated`` before.
- CPU: the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs)
  minus the resident set before. torch's CPU allocator keeps no statistics, so pages are what
  can be measured; ``release_freed_memory`` makes glibc return every freed block of 64 KiB or
  more to the system at once, so memory freed by an earlier benchmark in the same process
  neither hides nor inflates the next one's peak. Linux only (elsewhere: not measured).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import torch

from reflectioncoder.train.model_card import cpu_model

REPO = Path(__file__).resolve().parents[2]
# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s and HBM bandwidth in TB/s, vendor
# figures for the SXM parts; matched against torch.cuda.get_device_name().
CARD_PEAKS = {"H200": (989.0, 4.8), "H100": (989.0, 3.35), "A100": (312.0, 2.04)}
_M_MMAP_THRESHOLD = -3


def release_freed_memory(threshold: int = 64 * 1024) -> bool:
    """Serve allocations >= ``threshold`` bytes by mmap (glibc's mallopt), so that freeing them
    returns the pages at once; True when set. Call before measuring RSS in-process."""
    name = ctypes.util.find_library("c")
    if not name or not Path("/proc/self/status").exists():
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def device_name(device: torch.device | str) -> str:
    """The card's name on CUDA; 'CPU, <cores> cores, <model>' otherwise."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {os.cpu_count()} cores, {cpu_model()}"


def commit() -> str:
    """Short hash of the checked-out commit (RC_COMMIT where the copy has no .git, as on a lent
    GPU), or 'unknown'."""
    if os.environ.get("RC_COMMIT"):
        return os.environ["RC_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def versions(*dists: str) -> dict[str, str | None]:
    """Installed versions of ``dists`` (None: not installed): what a row was measured with."""
    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def write_rows(rows: list[dict], out: str | Path, append: bool = False) -> Path:
    """Write a report's rows to ``out`` as the JSON list the reports read (its folder made if
    missing; ``append``: after the rows already there). The reports that keep partial results
    call it after each case. Returns ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if append and out.is_file() else []
    out.write_text(json.dumps(old + rows, indent=1) + "\n")
    return out


def card_peaks(device: torch.device | str) -> tuple[float, float] | None:
    """(bf16 TFLOP/s, TB/s) of the card, or None (CPU, unknown card)."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((p for card, p in CARD_PEAKS.items() if card in name), None)


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes(field: str = "VmRSS") -> int:
    """A /proc/self/status field (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def extra_peak_bytes(fn: Callable[[], object], device: torch.device | str) -> int | None:
    """Run ``fn`` once; its peak memory above what was allocated before (None: not measurable)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if not Path("/proc/self/clear_refs").exists():
        fn()
        return None
    base = rss_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux)
    fn()
    return max(rss_bytes("VmHWM") - base, 0)


def rates(
    seconds: float,
    device: torch.device | str,
    flops: float | None = None,
    bytes_moved: float | None = None,
) -> dict[str, float]:
    """TF/s and GB/s at ``seconds`` per call, with % of the card's peak on a known GPU."""
    out: dict[str, float] = {}
    peaks = card_peaks(device)
    if flops:
        out["tflops"] = round(flops / seconds / 1e12, 4)
        if peaks:
            out["pct_of_peak_flops"] = round(100 * out["tflops"] / peaks[0], 1)
    if bytes_moved:
        out["gbps"] = round(bytes_moved / seconds / 1e9, 3)
        if peaks:
            out["pct_of_peak_bandwidth"] = round(100 * out["gbps"] / (peaks[1] * 1e3), 1)
    return out
