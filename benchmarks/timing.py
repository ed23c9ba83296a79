"""What the benchmarks share: the device each names, syncs around each timed run, the median of
several.

Imported by the benchmark scripts as ``timing`` (they run as ``python benchmarks/NAME.py``, which
puts this folder on the path).
"""

from __future__ import annotations

import statistics
import time

import torch


def device_name(device: torch.device) -> str:
    """The device as a benchmark prints it: CUDA with the GPU's name, or the CPU's threads."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 0) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, each between device syncs, after
    ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
