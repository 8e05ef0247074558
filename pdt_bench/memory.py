"""The memory a process holds, now and at its peak: RSS on CPU, the CUDA allocator on a GPU.

The peak can be restarted (:func:`reset_peak`), so that a measurement covers one phase: on CPU
through Linux's ``clear_refs``; elsewhere the CPU peak counts from process start, and differences
of peaks are then lower bounds.
"""

from __future__ import annotations

import resource
import sys

import torch

__all__ = ["current", "kind", "peak", "reset_peak"]


def kind(device: torch.device) -> str:
    """What :func:`current` and :func:`peak` measure on ``device``, in words."""
    return "CUDA allocator" if device.type == "cuda" else "process RSS"


def current(device: torch.device) -> int:
    """Bytes held now."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:  # no /proc: the peak is the best figure there is
        return peak(device)


def reset_peak(device: torch.device) -> None:
    """Restart the peak count at the bytes held now."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak(device: torch.device) -> int:
    """Most bytes held since the last :func:`reset_peak` (on CPU outside Linux: since process start)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
