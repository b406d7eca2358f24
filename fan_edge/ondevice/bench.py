"""Latency and memory of one exported artifact, measured where it will run (torch-free).

::

    python -m fan_edge.ondevice.bench model.onnx --threads 2 --runs 100 --warmup 10 --json

This is what ``fan-bench`` runs in a fresh subprocess for every row, and what
``fan-profile`` runs over ssh on an edge box: it needs numpy and one backend,
never torch, so it works wherever :class:`~fan_edge.runtime.LandmarkSession`
does. Its JSON row has the keys of a ``fan-bench`` row (accuracy and speed-up
are left ``null``: they need data and a baseline that this process does not
have), plus how it was measured.

What is timed: :meth:`LandmarkSession.run_raw` on one (1, 3, S, S) input of
uniform noise in [0, 1], i.e. the network as the app calls it (the NHWC
transpose a TFLite artifact needs included; crop, image decoding and heatmap
decoding excluded, as in PyTorch's row), after ``warmup`` untimed calls,
batch 1, with the backend's intra-op threads fixed at ``threads``.

Memory: ``peak_rss_mb`` is the process's peak resident set size at the end
(:func:`peak_rss_mb`: ``VmHWM`` on Linux, ``ru_maxrss`` elsewhere), i.e. Python,
numpy, the backend library, the loaded model and its working buffers;
``base_rss_mb`` is the resident size just before the backend was imported, so
``peak_rss_mb - base_rss_mb`` is what the backend and model add. Both are only
meaningful in a process that did nothing else, which is why ``fan-bench`` runs
this module in a fresh subprocess per row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import BackendError, FanEdgeError, first_line
from ..limits import MAX_THREADS, non_negative_int, positive_int, threads_arg
from ..rows import ROW_KEYS, BenchRow, Status  # noqa: F401 - ROW_KEYS: re-exported for fan-bench and fan-profile

# Device families a target spec may name, and the backend device names that provide them.
DEVICE_ALIASES: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu",),
    "gpu": ("gpu", "cuda", "tensorrt", "directml", "rocm", "migraphx"),
    "npu": ("npu", "qnn", "nnapi", "vitisai"),
}


def current_rss_mb() -> float | None:
    """Current resident set size (Linux /proc; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """The process's peak RSS so far.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this
    program's own memory. ``ru_maxrss`` is not used there because the kernel
    carries it across ``exec``: a child of a large parent (fan-bench after
    loading torch) would report the parent's size at ``fork``. Elsewhere
    ``resource.getrusage`` (``ru_maxrss``: bytes on macOS, kilobytes on other
    Unixes).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def artifact_files(path: str | Path) -> list[Path]:
    """The files an artifact consists of (an OpenVINO ``.xml`` needs its ``.bin``; ONNX may have external data)."""
    p = Path(path)
    files = [p]
    if p.suffix.lower() == ".xml":
        files.append(p.with_suffix(".bin"))
    files += [q for q in (Path(str(p) + ".data"), p.with_suffix(".onnx.data")) if q != p and q.is_file()]
    return [f for f in dict.fromkeys(files) if f.exists()]


def artifact_size_mb(path: str | Path) -> float:
    """Bytes on disk of the artifact (sidecar excluded; every file of a folder artifact counted)."""
    total = 0
    for f in artifact_files(path):
        total += sum(q.stat().st_size for q in f.rglob("*") if q.is_file()) if f.is_dir() else f.stat().st_size
    return total / 1e6


def device_family(device: str) -> str:
    """``cpu``, ``gpu`` or ``npu`` for a device name (a backend's, e.g. ``cuda``, or a family)."""
    d = device.lower()
    for family, names in DEVICE_ALIASES.items():
        if d in names:
            return family
    return d


def device_present(backend: str, device: str) -> bool:
    """Whether ``backend`` sees a device of ``device``'s family here (a backend that cannot list devices: CPU only)."""
    from ..runtime.backends import backend_class

    if device in ("auto", "cpu"):
        return True
    family = device_family(device)
    try:
        present = backend_class(backend).devices()
    except Exception:  # a driver that fails to enumerate is a device that is not there
        return False
    return any(device_family(p) == family for p in present)


class DeviceAbsent(BackendError):
    """The requested device is not present for this backend here."""


def time_artifact(
    path: str | Path,
    backend: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    runs: int = 100,
    warmup: int = 10,
) -> BenchRow:
    """Time ``runs`` batch-1 inferences of an artifact after ``warmup`` untimed ones; one fan-bench row.

    ``threads`` None leaves the backend's own default. Raises a
    :class:`~fan_edge.errors.BackendError` when the artifact cannot be
    loaded or run (``main`` turns that into a row with status "failed", or
    "device absent" when the device is not here).
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise BackendError(f"runs must be a positive integer, got {runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise BackendError(f"warmup must be a non-negative integer, got {warmup!r}")
    from ..runtime.backends import choose_backend

    base = current_rss_mb()
    p = Path(path)
    if not p.is_file():
        raise BackendError(f"{p}: no such file")
    name = choose_backend(p, backend)
    if not device_present(name, device):
        raise DeviceAbsent(f"no {device} device for the {name} backend here")

    from ..runtime.session import LandmarkSession

    started = time.perf_counter()
    with LandmarkSession(p, backend=name, device=device, threads=threads) as session:
        load_s = time.perf_counter() - started
        c = session.contract
        rng = np.random.default_rng(0)
        x = rng.random((1, 3, c.input_size, c.input_size), dtype=np.float32)
        for _ in range(warmup):
            session.run_raw(x)
        times = np.empty(runs)
        for i in range(runs):
            t0 = time.perf_counter()
            session.run_raw(x)
            times[i] = (time.perf_counter() - t0) * 1000.0
        backend_name = session.backend.name
        used = str(getattr(session.backend, "device", "") or "")  # the device the backend resolved "auto" to
    p50, p90 = float(np.percentile(times, 50)), float(np.percentile(times, 90))
    return BenchRow(
        model=c.model,
        target=backend_name,
        precision=c.precision,
        device=used if used and used != "auto" else ("cpu" if device == "auto" else device),
        status=Status.PASSED,
        size_mb=round(artifact_size_mb(p), 3),
        latency_ms_p50=round(p50, 3),
        latency_ms_p90=round(p90, 3),
        fps=round(1000.0 / p50, 2) if p50 > 0 else None,
        peak_rss_mb=round(peak_rss_mb(), 1),
        base_rss_mb=None if base is None else round(base, 1),
        threads=threads,
        runs=runs,
        warmup=warmup,
        path=str(p),
        more={
            "latency_ms_mean": round(float(times.mean()), 3),
            "latency_ms_min": round(float(times.min()), 3),
            "batch": 1,
            "input_size": c.input_size,
            "load_s": round(load_s, 3),
            "latency_ms_samples": [round(float(t), 4) for t in times],  # fan-bench pools them over its rounds
            "host": platform.node(),
            "machine": platform.machine(),
        },
    )


def failed_row(
    path: str | Path, reason: str, status: Status = Status.FAILED, *, target: str | None = None,
    precision: str | None = None, device: str | None = None,
) -> BenchRow:
    """A row for an artifact that could not be timed: what is known of it, figures null, the reason in ``error``."""
    return BenchRow(target=target, precision=precision, device=device, path=str(path)).fail(reason, status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fan_edge.ondevice.bench",
        description="Batch-1 latency and peak memory of one exported artifact (torch-free; one fan-bench row).",
    )
    parser.add_argument("artifact", help=".onnx, .xml (OpenVINO IR) or .tflite exported by fan-export")
    parser.add_argument("--backend", default="auto", help="auto (by suffix), onnxruntime, openvino or litert")
    parser.add_argument("--device", default="auto", help="auto or cpu (gpu / npu: reported as device absent where not wired up)")
    parser.add_argument("--threads", type=threads_arg, default=None,
                        help=f"intra-op threads (1..{MAX_THREADS}; default: the backend's own)")
    parser.add_argument("--runs", type=positive_int, default=100, help="timed runs (default 100)")
    parser.add_argument("--warmup", type=non_negative_int, default=10, help="untimed runs first (default 10)")
    parser.add_argument("--json", action="store_true", help="print the row as one JSON object")
    return parser


def _format(row: BenchRow) -> str:
    if row.status is not Status.PASSED:
        return f"{row.path}: {row.status}: {row.error or ''}"
    return (
        f"{row.model} {row.target} {row.precision} {row.device}: {row.size_mb:.2f} MB, "
        f"p50 {row.latency_ms_p50:.2f} ms, p90 {row.latency_ms_p90:.2f} ms, {row.fps:.1f} FPS, "
        f"peak RSS {row.peak_rss_mb:.0f} MB ({row.runs} runs after {row.warmup}, threads {row.threads or 'default'})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print one row; exit 0 when timed, 1 when the artifact failed, 3 when the device is absent.

    Failures are still a row (status and one-line ``error``), so a remote
    collector always gets JSON back.
    """
    args = build_parser().parse_args(argv)
    try:
        row = time_artifact(args.artifact, args.backend, args.device, args.threads, args.runs, args.warmup)
        code = 0
    except DeviceAbsent as exc:
        row, code = failed_row(args.artifact, str(exc), Status.DEVICE_ABSENT, device=args.device), 3
    except FanEdgeError as exc:
        row, code = failed_row(args.artifact, str(exc), device=args.device), 1
    except Exception as exc:  # a backend crashing on one artifact is that row's failure, reported in one line
        row, code = failed_row(args.artifact, first_line(exc, with_type=True), device=args.device), 1
    print(json.dumps(row.to_dict()) if args.json else _format(row), file=sys.stdout if code == 0 or args.json else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
