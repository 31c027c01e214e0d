"""Timing helpers the decoding benchmarks share (decode_speed.py, prefill_speed.py): wall and CPU seconds, and
the machine's load, printed with every figure."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def clock(device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds now, after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float], device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds since t0. On a shared CPU the CPU time is the steadier figure: it leaves out the
    time other processes held the cores (memory-bandwidth contention still shows in both)."""
    t1 = clock(device)
    return t1[0] - t0[0], t1[1] - t0[1]


def loadavg() -> str:
    """/proc/loadavg's 1, 5 and 15 minute figures (on a shared machine they qualify every timing)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
