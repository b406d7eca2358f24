"""Latency of a PyTorch model as users run it today: eager fp32, batch 1, fixed threads."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import BenchError
from ..limits import MAX_THREADS, check_int


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p90_ms: float
    runs: int
    threads: int
    samples_ms: tuple[float, ...] = ()  # every timed run, in order


def measure(fn, runs: int, warmup: int) -> np.ndarray:
    """Wall-clock milliseconds of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        times[i] = (time.perf_counter() - t0) * 1000.0
    return times


@torch.no_grad()
def torch_latency(model: nn.Module, input_size: int, threads: int = 2, runs: int = 50, warmup: int = 5) -> Latency:
    """Median and 90th-percentile latency of one eval-mode forward pass on the CPU (``threads`` within
    :data:`~fan_edge.limits.MAX_THREADS`: torch starts that many)."""
    check_int("threads", threads, 1, MAX_THREADS, BenchError)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    try:
        x = torch.rand(1, 3, input_size, input_size)
        times = measure(lambda: model(x), runs, warmup)
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)
    return Latency(
        float(np.percentile(times, 50)), float(np.percentile(times, 90)), runs, threads, tuple(float(t) for t in times)
    )
