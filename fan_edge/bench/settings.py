"""What a fan-bench run was: its options and the machine it ran on, recorded beside the rows (``settings`` in
``--json``) and summed up under the table."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import BenchOptions


def load_average() -> float:
    """The 1-minute load average (0.0 where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def measured_run(run: Callable[[], Any]) -> tuple[Any, tuple[float, float]]:
    """``run()``'s result and the load average before and after it: a busy machine explains slow rows."""
    before = load_average()
    result = run()
    return result, (before, load_average())


def bench_settings(options: BenchOptions, load: tuple[float, float]) -> dict[str, Any]:
    """The run's settings and machine: data, faces, calibration, threads, runs, CPU, load before and after."""
    from ..runtime.cpu import cpu_label, cpu_record
    from .runner import round_runs

    return {
        "data": str(options.data) if options.data else None, "faces": options.faces,
        "calib": str(options.calib) if options.calib else None, "threads": options.threads, "runs": options.runs,
        "warmup": options.warmup, "rounds": len(round_runs(options.runs, options.rounds)), "batch": 1, "cpu": cpu_label(), "cpus": os.cpu_count(), "cpu_record": cpu_record(),
        "loadavg_1min_before_after": [round(load[0], 2), round(load[1], 2)],
    }


def format_settings(settings: dict[str, Any]) -> str:
    """The line under fan-bench's table."""
    before, after = settings["loadavg_1min_before_after"]
    return (f"{settings['cpu']}, threads {settings['threads']}, batch 1, {settings['runs']} runs "
            f"in {settings.get('rounds', 1)} interleaved rounds, {settings['warmup']} warm-up runs each; "
            f"load average {before} -> {after}")
