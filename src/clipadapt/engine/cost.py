"""Peak memory and timing helpers shared by evaluation, training and benchmarks."""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def _status_mb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MB) since it started or since ``reset_peak_memory``.

    On Linux this is VmHWM, which belongs to the running program; ``getrusage``'s ru_maxrss would carry the
    parent's peak over a fork and exec, so a child started by a big process would report at least its size.
    """
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def current_rss_mb() -> float:
    current = _status_mb("VmRSS")
    return current if current is not None else peak_rss_mb()


def peak_memory_mb(device: torch.device | str) -> float:
    """CUDA peak allocated memory on GPU, peak RSS on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak: CUDA's counter, or on Linux the process's VmHWM (``/proc/self/clear_refs``)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # not Linux, or not permitted: the peak is then the process's lifetime
        Path("/proc/self/clear_refs").write_text("5")
