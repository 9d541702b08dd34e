"""What the benchmarks say about the machine they ran on: the device's name and its float32 matmul peak."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device) -> None:
    """Wait for queued GPU work, so that wall-clock timings cover it."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def matmul_peak(device: str = "cpu", seconds: float = 1.0) -> float:
    """GFLOP/s of repeated square float32 matmuls on `device` (4096 on a GPU, 2048 on a CPU), under the
    process's float32 matmul precision (TF32 only if it was enabled)."""
    size = 4096 if device.startswith("cuda") else 2048
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(10 if device.startswith("cuda") else 1):
            a @ b
            k += 1
        sync(device)
    return 2 * size ** 3 * k / (time.perf_counter() - t0) / 1e9
