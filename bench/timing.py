"""Wall-clock timing of GPU work for the benchmark scripts: synchronise before and after each run, so a run's time is
its kernels' time and not just the time to queue them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Seconds each of `repeats` calls of `fn` took."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times
