"""Reading the timing and memory lines of LiteRT / TensorFlow Lite's ``benchmark_model``.

The formats, from the tool's source (tensorflow/lite/tools/benchmark/benchmark_model.cc,
``BenchmarkModel::Run`` and ``BenchmarkLoggingListener::OnBenchmarkEnd``; the same file
lives on as tflite/tools/benchmark/benchmark_model.cc in google-ai-edge/LiteRT):

- after the warm-up runs and again after the timed runs, one statistics line in
  microseconds (``Stat::OutputToStream`` in tensorflow/core/util/stats_calculator.h)::

      count=50 first=33228 curr=33130 min=32687 max=33239 avg=33071.8 std=129

  newer builds (LiteRT, where the runs are a ``StatWithPercentiles``) append
  ``p5=... median=... p95=...``; a run whose times were all equal prints
  ``count=N curr=X(all same)``;
- ``Inference timings in us: Init: ..., First inference: ..., Warmup (avg): ..., Inference (avg): ...``
  (TensorFlow <= 1.15 printed ``Average inference timings in us: Warmup: ..., Init: ..., Inference: ...``);
- ``Memory footprint delta from the start of the tool (MB): init=... overall=...`` (growth of the
  process's peak RSS, ``ru_maxrss``, during initialisation and over the whole run);
- with ``--report_peak_memory_footprint=true``:
  ``Overall peak memory footprint (MB) via periodic monitoring: ...`` (the peak RSS itself).

LiteRT's CompiledModel tool (litert/tools/benchmark_litert_model.h) prints the
same figures as ``Inference (avg):      12.34 ms (50 runs)``, ``Peak memory: ... MB``
and so on, in milliseconds; both forms are read. Lines may carry a log prefix
(``INFO: ``, or logcat's ``... I tflite  : ``): markers are searched anywhere in a line.

"MB" in the tool is KiB / 1024 (MiB); rows report decimal megabytes like
``fan_edge.ondevice.bench`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ...errors import ProfileError

MIB_TO_MB = 1.048576
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_STAT_PAIR = re.compile(rf"\b(count|first|curr|min|max|avg|std|p5|median|p95)=({_NUMBER})")
_SUMMARY = re.compile(
    rf"Inference timings in us: Init: ({_NUMBER}), First inference: ({_NUMBER}), "
    rf"Warmup \(avg\): ({_NUMBER}), Inference \(avg\): ({_NUMBER})"
)
_SUMMARY_OLD = re.compile(rf"Average inference timings in us: Warmup: ({_NUMBER}), Init: ({_NUMBER}), Inference: ({_NUMBER})")
_MEM_DELTA = re.compile(rf"Memory footprint delta from the start of the tool \(MB\): init=({_NUMBER}) overall=({_NUMBER})")
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUMBER})")
# LiteRT CompiledModel benchmark (milliseconds, MB).
_LRT = {
    "init_ms": re.compile(rf"Model initialization: ({_NUMBER}) ms"),
    "first_ms": re.compile(rf"Warmup \(first\):\s+({_NUMBER}) ms"),
    "warmup_ms": re.compile(rf"Warmup \(avg\):\s+({_NUMBER}) ms"),
    "mean_ms": re.compile(rf"Inference \(avg\):\s+({_NUMBER}) ms \((\d+) runs\)"),
    "min_ms": re.compile(rf"Inference \(min\):\s+({_NUMBER}) ms"),
    "max_ms": re.compile(rf"Inference \(max\):\s+({_NUMBER}) ms"),
    "std_ms": re.compile(rf"Inference \(std\):\s+({_NUMBER})\s*$"),
    "mem_init": re.compile(rf"Init footprint:\s+({_NUMBER}) MB"),
    "mem_overall": re.compile(rf"Overall footprint:\s+({_NUMBER}) MB"),
    "peak": re.compile(rf"Peak memory:\s+({_NUMBER}) MB"),
}
_FAILURE = re.compile(r"\bERROR\b|Benchmarking failed|Failed to|Unconsumed cmdline flags|Aborted|Segmentation fault", re.I)


@dataclass(frozen=True)
class BenchmarkModelTimings:
    """The timed runs of one ``benchmark_model`` invocation (milliseconds; memory in decimal MB)."""

    runs: int | None
    mean_ms: float
    median_ms: float | None  # only from builds that print percentiles
    p5_ms: float | None
    p95_ms: float | None
    min_ms: float | None
    max_ms: float | None
    std_ms: float | None
    init_ms: float | None
    first_inference_ms: float | None
    warmup_mean_ms: float | None
    warmup_runs: int | None
    peak_memory_mb: float | None  # peak RSS by periodic monitoring
    memory_init_mb: float | None  # peak-RSS growth during initialisation
    memory_overall_mb: float | None  # peak-RSS growth over the whole run

    @property
    def latency_statistic(self) -> str:
        """Which statistic ``latency_ms_p50`` holds: the median when the tool printed one, else the mean."""
        return "median" if self.median_ms is not None else "mean"

    def row_fields(self) -> dict[str, Any]:
        """The latency and memory keys of a fan-bench row.

        benchmark_model reports no 90th percentile, so ``latency_ms_p90`` stays
        null (``latency_ms_p95`` is given when the build prints it); when it
        reports no median either, ``latency_ms_p50`` is the mean of the timed
        runs and ``latency_stat`` says so.
        """
        p50 = self.median_ms if self.median_ms is not None else self.mean_ms
        return {
            "latency_ms_p50": _r(p50, 3),
            "latency_ms_p90": None,
            "fps": round(1000.0 / p50, 2) if p50 > 0 else None,
            "latency_stat": self.latency_statistic,
            "latency_ms_mean": _r(self.mean_ms, 3),
            "latency_ms_p95": _r(self.p95_ms, 3),
            "latency_ms_min": _r(self.min_ms, 3),
            "latency_ms_max": _r(self.max_ms, 3),
            "latency_ms_std": _r(self.std_ms, 3),
            "peak_rss_mb": _r(self.peak_memory_mb, 1),
            "memory_init_mb": _r(self.memory_init_mb, 1),
            "memory_overall_mb": _r(self.memory_overall_mb, 1),
            "init_ms": _r(self.init_ms, 3),
            "first_inference_ms": _r(self.first_inference_ms, 3),
            "runs": self.runs,
            "warmup": self.warmup_runs,
        }


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _stats(line: str) -> dict[str, float] | None:
    """The key=value pairs of a statistics line, or None for any other line (op-profiling totals excluded)."""
    if "count=" not in line or "Timings (microseconds)" in line or "Memory (bytes)" in line:
        return None
    pairs = dict((k, float(v)) for k, v in _STAT_PAIR.findall(line))
    return pairs if "count" in pairs else None


def failure_reason(text: str) -> str:
    """The tool's own words for why it failed: its last error-like line, else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if _FAILURE.search(line)]
    return (errors[-1] if errors else lines[-1] if lines else "no output")[:300]


def parse_benchmark_output(text: str) -> BenchmarkModelTimings:
    """The timed runs' figures from ``benchmark_model``'s output; a ProfileError when it holds none.

    The tool prints a statistics line after the warm-up and another after the
    timed runs, so the last one is the timed runs' and the one before it the warm-up's.
    """
    lines = text.splitlines()
    blocks = [stats for stats in map(_stats, lines) if stats is not None]
    timed = blocks[-1] if blocks else None
    warm = blocks[-2] if len(blocks) >= 2 else None

    def find(pattern: re.Pattern[str]) -> re.Match[str] | None:
        """The last line matching ``pattern`` (a log may hold several runs; the last one is this run's)."""
        hit = None
        for line in lines:
            hit = pattern.search(line) or hit
        return hit

    def number(pattern: re.Pattern[str], scale: float = 1.0) -> float | None:
        hit = find(pattern)
        return None if hit is None else float(hit.group(1)) * scale

    def us(stats: dict[str, float] | None, key: str) -> float | None:
        """A statistic in milliseconds; "count=N curr=X(all same)" means every run took X."""
        if stats is None:
            return None
        if key in stats:
            return stats[key] / 1000.0
        all_same = set(stats) == {"count", "curr"}
        if all_same and key in ("min", "max", "avg", "median", "p5", "p95"):
            return stats["curr"] / 1000.0
        return 0.0 if all_same and key == "std" else None

    init_ms = first_ms = warm_mean_ms = mean_ms = None
    runs: int | None = None
    summary, old, litert_mean = find(_SUMMARY), find(_SUMMARY_OLD), find(_LRT["mean_ms"])
    if summary:
        init_ms, first_ms, warm_mean_ms, mean_ms = (float(summary.group(i)) / 1000.0 for i in range(1, 5))
    elif old:
        warm_mean_ms, init_ms, mean_ms = (float(old.group(i)) / 1000.0 for i in range(1, 4))
    elif litert_mean:
        mean_ms, runs = float(litert_mean.group(1)), int(litert_mean.group(2))
        init_ms, first_ms, warm_mean_ms = number(_LRT["init_ms"]), number(_LRT["first_ms"]), number(_LRT["warmup_ms"])
    if timed is not None:
        mean_ms, runs = us(timed, "avg"), int(timed["count"])
    if mean_ms is None:
        raise ProfileError(f"no inference timings in benchmark_model's output ({failure_reason(text)})")

    mem = find(_MEM_DELTA)
    return BenchmarkModelTimings(
        runs=runs,
        mean_ms=mean_ms,
        median_ms=us(timed, "median"),
        p5_ms=us(timed, "p5"),
        p95_ms=us(timed, "p95"),
        min_ms=us(timed, "min") if timed is not None else number(_LRT["min_ms"]),
        max_ms=us(timed, "max") if timed is not None else number(_LRT["max_ms"]),
        std_ms=us(timed, "std") if timed is not None else number(_LRT["std_ms"]),
        init_ms=init_ms,
        first_inference_ms=first_ms if first_ms is not None else us(warm, "first"),
        warmup_mean_ms=warm_mean_ms if warm_mean_ms is not None else us(warm, "avg"),
        warmup_runs=int(warm["count"]) if warm is not None else None,
        peak_memory_mb=number(_PEAK, MIB_TO_MB) if find(_PEAK) else number(_LRT["peak"], MIB_TO_MB),
        memory_init_mb=float(mem.group(1)) * MIB_TO_MB if mem else number(_LRT["mem_init"], MIB_TO_MB),
        memory_overall_mb=float(mem.group(2)) * MIB_TO_MB if mem else number(_LRT["mem_overall"], MIB_TO_MB),
    )
