"""Soak: one session under many threads and many calls, checked against a sequential run (torch-free).

::

    python -m fan_edge.ondevice.soak model.onnx --threads 8 --calls 10000 --faces ../shared/data/300w/afw --json
    fan-edge soak model.tflite --threads 8 --calls 10000 --faces ../shared/data/300w/afw

The reliability target "8 threads and 10,000 predictions: identical results
to a sequential run, no errors, resident memory growth under 5% after
warm-up" is a load figure, so it lives here, next to the latency bench
(:mod:`fan_edge.ondevice.bench`), and never in a timed unit test.

How it runs:

1. **Inputs**: ``inputs`` real faces spread over ``--faces DIR`` (images with
   ``.pts``; boxes from the ground-truth landmarks, the evaluation
   convention, read with :mod:`fan_edge.data`, which needs no torch), kept as
   uint8 RGB like a decoded photo. Without ``--faces``: seeded noise images
   with one or two boxes each (no data needed on an edge box; two boxes
   exercise batching).
2. **Reference**: one sequential :meth:`LandmarkSession.predict` per distinct
   input, on the same session.
3. **Load**: ``calls`` predictions on ``threads`` threads sharing that
   session; call ``i`` uses input ``i % inputs`` (round-robin) and threads
   take the next call number as they free up, as an app's worker pool would.
   Every result is compared with its reference **bit for bit** (dtype, shape
   and bytes of points and scores): the runtime promises the results of a
   sequential run, and every backend here gives them (docs/runtime.md), so
   there is no tolerance to state. Errors are counted, never fatal; results
   are not kept (keeping 10,000 of them would itself grow memory).
4. **Memory**: the first ``warmup`` calls (default 10%) grow what a threaded
   session needs (OpenVINO infer requests and LiteRT interpreters are pooled,
   one per call in flight; allocator arenas per thread). Then every thread
   pauses, the resident set is read (``/proc/self/statm``, as the bench
   does), the rest run, and it is read again after the last call, the
   threads again alive and idle (a thread's exit frees its own memory, which
   would hide growth). Growth between the two readings is the leak figure;
   ``--max-growth`` (5%) is the bound. ``peak_rss_mb`` is the process's
   high-water mark (calls in flight included), for scale.

Exit status: 0 when every call matched, none failed and growth stayed under
the bound; 1 when any of those did not hold (the report says which); 2 when
the soak could not run (a bad artifact, folder or argument: one line).
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, FanEdgeError, first_line
from ..limits import MAX_THREADS, check_int, non_negative_int, positive_int, threads_arg
from .bench import artifact_size_mb, current_rss_mb, peak_rss_mb

DEFAULT_THREADS = 8
DEFAULT_CALLS = 10_000
DEFAULT_INPUTS = 64
MAX_GROWTH_PCT = 5.0
MAX_EXAMPLES = 5  # mismatch and error descriptions kept in the report (the counts are complete)

Prediction = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SoakInput:
    """One distinct call: a name (for reports), an RGB image and its face boxes (N, 4)."""

    name: str
    image: np.ndarray
    boxes: np.ndarray


# ---- inputs ---------------------------------------------------------------------------------------


def load_faces(folder: str | os.PathLike[str], count: int | None = DEFAULT_INPUTS, seed: int = 0) -> list[SoakInput]:
    """``count`` faces spread over a folder of images with .pts (all when None), boxed by their landmarks.

    Uses the data readers the evaluation uses (one box convention), and keeps
    each image as uint8: lossless for 8-bit files, a quarter of float32's
    memory, and the array a camera or decoder hands an app.
    """
    from ..files.folders import landmark_boxes, scan_folder, spread_indices
    from ..files.images import load_image
    from ..files.pts import read_pts
    from ..runtime.image import to_uint8

    items = scan_folder(folder)
    faces = []
    for index in spread_indices(len(items), count, seed):
        item = items[int(index)]
        assert item.pts is not None  # scan_folder(require_points=True) pairs every image with its .pts
        boxes = landmark_boxes(read_pts(item.pts)[None])
        faces.append(SoakInput(item.image.name, to_uint8(load_image(item.image)), boxes))
    return faces


def synthetic_inputs(count: int = DEFAULT_INPUTS, seed: int = 0) -> list[SoakInput]:
    """Seeded noise images of varied sizes with one or two boxes each: a soak without any data folder.

    Every input differs (size, boxes, pixels), so a call that received
    another call's tensors would show as a mismatch.
    """
    rng = np.random.default_rng(seed)
    inputs = []
    for i in range(count):
        h, w = 120 + 8 * (i % 9), 160 + 8 * (i % 5)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        x, y = rng.uniform(0, 40, 2)
        boxes = np.array([[x, y, x + 60 + i % 13, y + 64], [20.0, 30.0, 110.0, 115.0]])[: 1 + i % 2]
        inputs.append(SoakInput(f"noise{i}", image, boxes))
    return inputs


# ---- checking -------------------------------------------------------------------------------------


def identical(a: Prediction, b: Prediction) -> bool:
    """Bit-identical points and scores: same dtypes, shapes and bytes (NaN-safe, unlike ==)."""
    return all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b))


def _difference(got: Prediction, want: Prediction) -> str:
    """A short description of how a result differs from its reference (for the report's examples)."""
    parts = []
    for label, x, y in (("points", got[0], want[0]), ("scores", got[1], want[1])):
        if x.shape != y.shape or x.dtype != y.dtype:
            parts.append(f"{label} {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
        elif x.tobytes() != y.tobytes():
            parts.append(f"{label} max |diff| {float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))):.3g}")
    return ", ".join(parts)


class _Tally:
    """Counters shared by the worker threads: the next call number, calls done, mismatches, errors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next_call = 0
        self.done = 0
        self.mismatches = 0
        self.errors = 0
        self.examples: list[str] = []

    def take(self, end: int) -> int | None:
        """The next call number below ``end``, or None when the phase has none left."""
        with self.lock:
            if self.next_call >= end:
                return None
            self.next_call += 1
            return self.next_call - 1

    def record(self, mismatch: str | None = None, error: str | None = None) -> None:
        with self.lock:
            self.done += 1
            self.mismatches += mismatch is not None
            self.errors += error is not None
            note = mismatch or error
            if note is not None and len(self.examples) < MAX_EXAMPLES:
                self.examples.append(note)


class _Load:
    """``calls`` predictions on ``threads`` threads, with a pause after ``warmup`` calls to read memory."""

    def __init__(
        self,
        predict: Callable[[np.ndarray, np.ndarray], Prediction],
        inputs: list[SoakInput],
        expected: list[Prediction],
        calls: int,
        warmup: int,
    ) -> None:
        self.predict, self.inputs, self.expected = predict, inputs, expected
        self.calls, self.warmup = calls, warmup
        self.tally = _Tally()
        self.go = threading.Event()  # set by the main thread once it has read memory after warm-up
        self.release = threading.Event()  # set once it has read memory at the end

    def _call(self, i: int) -> None:
        item, want = self.inputs[i % len(self.inputs)], self.expected[i % len(self.inputs)]
        try:
            got = self.predict(item.image, item.boxes)
            got = (np.asarray(got[0]), np.asarray(got[1]))
        except Exception as exc:  # counted, and the soak goes on: one failure must not hide the next
            self.tally.record(error=f"call {i} ({item.name}): {first_line(exc, with_type=True)}")
            return
        if identical(got, want):
            self.tally.record()
        else:
            self.tally.record(mismatch=f"call {i} ({item.name}): {_difference(got, want)}")

    def worker(self) -> None:
        while (i := self.tally.take(self.warmup)) is not None:
            self._call(i)
        self.go.wait()
        while (i := self.tally.take(self.calls)) is not None:
            self._call(i)
        # Stay alive until the end reading: a thread's exit frees its own memory (stack, allocator and runtime
        # caches), which would hide that much growth; both readings are taken with every thread alive and idle.
        self.release.wait()


# ---- the soak -------------------------------------------------------------------------------------


def _rss_mb() -> float | None:
    """Resident set size now, after collecting garbage so that only live memory counts."""
    gc.collect()
    return current_rss_mb()


def _wait(load: _Load, until: Callable[[], bool], log: Callable[[str], None] | None, every_s: float, started: float) -> None:
    """Poll until ``until()`` holds, logging progress every ``every_s`` seconds."""
    last = time.perf_counter()
    while not until():
        time.sleep(0.05)
        now = time.perf_counter()
        if log is not None and now - last >= every_s:
            last = now
            t = load.tally
            rate = t.done / max(now - started, 1e-9)
            rss = current_rss_mb()
            log(
                f"soak: {t.done}/{load.calls} calls, {rate:.1f} calls/s, RSS {rss or 0:.0f} MB, "
                f"{t.mismatches} mismatches, {t.errors} errors"
            )


def soak_session(
    session: Any,
    inputs: list[SoakInput],
    threads: int = DEFAULT_THREADS,
    calls: int = DEFAULT_CALLS,
    warmup: int | None = None,
    max_growth_pct: float = MAX_GROWTH_PCT,
    log: Callable[[str], None] | None = None,
    progress_s: float = 10.0,
) -> dict[str, Any]:
    """Soak an open :class:`~fan_edge.runtime.LandmarkSession` and return the report (see the module doc).

    ``warmup`` defaults to a tenth of ``calls``; it must leave at least one
    call after it. The session's ``predict`` is looked up once per call, so a
    wrapper put on the instance is what the threads run.
    """
    if not inputs:
        raise DataError("the soak needs at least one input")
    check_int("threads", threads, 1, MAX_THREADS, DataError)  # each is a real thread: 100,000 of them never finish
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 2:
        raise DataError(f"calls must be an integer >= 2, got {calls!r}")
    warmup = calls // 10 if warmup is None else warmup
    if not 0 <= warmup < calls:
        raise DataError(f"warm-up must be between 0 and calls - 1 ({calls - 1}), got {warmup}")

    t0 = time.perf_counter()
    expected = [session.predict(item.image, item.boxes) for item in inputs]
    expected = [(np.asarray(p), np.asarray(s)) for p, s in expected]
    sequential_s = time.perf_counter() - t0

    load = _Load(lambda image, boxes: session.predict(image, boxes), inputs, expected, calls, warmup)
    workers = [threading.Thread(target=load.worker, name=f"soak-{k}", daemon=True) for k in range(threads)]
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    for w in workers:
        w.start()
    # A worker can only stop early by dying outside a call (the calls themselves catch everything): then stop waiting.
    _wait(load, lambda: load.tally.done >= warmup or not any(w.is_alive() for w in workers), log, progress_s, started)
    rss_warm = _rss_mb()  # every thread is paused between the phases: no call in flight
    warm_s = time.perf_counter() - started
    if log is not None:
        log(f"soak: warm-up done ({warmup} calls on {threads} threads), RSS {rss_warm or 0:.1f} MB")
    load.go.set()
    _wait(load, lambda: load.tally.done >= calls or not any(w.is_alive() for w in workers), log, progress_s, started)
    wall_s = time.perf_counter() - started
    rss_end = _rss_mb()
    load.release.set()
    for w in workers:
        w.join()
    return _report(session, load, threads, sequential_s, warm_s, wall_s, rss_warm, rss_end, max_growth_pct, load_before)


def _report(
    session: Any,
    load: _Load,
    threads: int,
    sequential_s: float,
    warm_s: float,
    wall_s: float,
    rss_warm: float | None,
    rss_end: float | None,
    max_growth_pct: float,
    load_before: float | None,
) -> dict[str, Any]:
    t = load.tally
    growth = None if not rss_warm or rss_end is None else (rss_end - rss_warm) / rss_warm * 100.0
    failures = []
    if t.done != load.calls:
        failures.append(f"only {t.done} of {load.calls} calls completed (a worker thread died)")
    if t.mismatches:
        failures.append(f"{t.mismatches} result(s) differ from the sequential run")
    if t.errors:
        failures.append(f"{t.errors} call(s) raised")
    if growth is None:
        failures.append("resident memory could not be read here (/proc/self/statm)")
    elif growth >= max_growth_pct:
        failures.append(f"resident memory grew {growth:.2f}% after warm-up (bound {max_growth_pct:g}%)")
    after = load.calls - load.warmup
    return {
        "calls": load.calls,
        "threads": threads,
        "warmup_calls": load.warmup,
        "inputs": len(load.inputs),
        "faces": sum(len(i.boxes) for i in load.inputs),
        "completed": t.done,
        "mismatches": t.mismatches,
        "errors": t.errors,
        "examples": t.examples,
        "comparison": "bit-identical points and scores (dtype, shape, bytes) to a sequential run on the same session",
        "wall_s": round(wall_s, 3),
        "calls_per_s": round(load.calls / wall_s, 2) if wall_s > 0 else None,
        "calls_per_s_after_warmup": round(after / (wall_s - warm_s), 2) if wall_s > warm_s else None,
        "sequential_ms_per_call": round(sequential_s / len(load.inputs) * 1000.0, 3),
        "rss_warm_mb": None if rss_warm is None else round(rss_warm, 2),
        "rss_end_mb": None if rss_end is None else round(rss_end, 2),
        "rss_growth_pct": None if growth is None else round(growth, 3),
        # VmHWM is updated lazily by the kernel and can trail a fresh statm reading: the peak is at least both readings.
        "peak_rss_mb": round(max(peak_rss_mb(), rss_warm or 0.0, rss_end or 0.0), 2),
        "max_growth_pct": max_growth_pct,
        "engine_objects": session.backend.engine_objects,
        "backend": session.backend.name,
        "device": session.device,
        "passed": not failures,
        "failures": failures,
        "loadavg_1min_before_after": [None if load_before is None else round(load_before, 2),
                                      round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None],
        "cpus": os.cpu_count(),
    }


def soak_artifact(
    path: str | os.PathLike[str],
    faces: str | os.PathLike[str] | None = None,
    threads: int = DEFAULT_THREADS,
    calls: int = DEFAULT_CALLS,
    warmup: int | None = None,
    inputs: int | None = DEFAULT_INPUTS,
    backend: str = "auto",
    device: str = "auto",
    intra_op_threads: int | None = 1,
    max_growth_pct: float = MAX_GROWTH_PCT,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load an artifact into one session and soak it; the report gains the artifact's identity and the settings.

    ``intra_op_threads`` defaults to 1: with many caller threads, the
    parallelism comes from them (the serving set-up docs/runtime.md measures);
    None leaves the backend's own default.
    """
    from ..runtime.session import LandmarkSession

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such artifact")
    items = load_faces(faces, inputs) if faces is not None else synthetic_inputs(inputs or DEFAULT_INPUTS)
    if log is not None:
        log(f"soak: {len(items)} input(s) from {faces or 'synthetic noise'}; loading {p.name}")
    with LandmarkSession(p, backend=backend, device=device, threads=intra_op_threads) as session:
        report = soak_session(session, items, threads, calls, warmup, max_growth_pct, log)
        c = session.contract
    return {
        "artifact": str(p),
        "model": c.model,
        "precision": c.precision,
        "size_mb": round(artifact_size_mb(p), 3),
        "data": str(faces) if faces is not None else "synthetic",
        "intra_op_threads": intra_op_threads,
        **report,
        "host": platform.node(),
        "machine": platform.machine(),
    }


# ---- command line ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The soak's options, shared by ``python -m fan_edge.ondevice.soak`` and ``fan-edge soak``."""
    parser.add_argument("artifact", help=".onnx, .xml (OpenVINO IR) or .tflite exported by fan-export")
    parser.add_argument("--threads", type=threads_arg, default=DEFAULT_THREADS,
                        help=f"caller threads sharing the session (1..{MAX_THREADS}; default {DEFAULT_THREADS})")
    parser.add_argument("--calls", type=positive_int, default=DEFAULT_CALLS,
                        help=f"predictions in all (default {DEFAULT_CALLS}); at least 2")
    parser.add_argument("--warmup", type=non_negative_int, help="calls before memory is first read (default: a tenth of --calls)")
    parser.add_argument("--faces", metavar="DIR",
                        help="images with .pts (boxes from their landmarks); default: synthetic noise inputs")
    parser.add_argument("--inputs", type=positive_int, default=DEFAULT_INPUTS,
                        help=f"distinct inputs, spread over --faces (default {DEFAULT_INPUTS})")
    parser.add_argument("--backend", default="auto", help="auto (by suffix), onnxruntime, openvino or litert")
    parser.add_argument("--device", default="auto", help="auto, cpu, gpu, npu, or a backend's own name")
    parser.add_argument("--intra-op-threads", type=threads_arg, default=1, metavar="N",
                        help=f"the backend's own threads per call (1..{MAX_THREADS}; default 1)")
    parser.add_argument("--max-growth", type=float, default=MAX_GROWTH_PCT, metavar="PCT",
                        help=f"resident memory growth after warm-up that fails the soak (default {MAX_GROWTH_PCT:g}%%)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def format_report(report: dict[str, Any]) -> str:
    """The report in a few human lines."""
    r = report
    lines = [
        f"{r['artifact']} ({r['backend']} on {r['device']}, {r['precision']}): "
        f"{r['calls']} calls on {r['threads']} threads over {r['inputs']} inputs from {r['data']}",
        f"  results: {r['mismatches']} mismatches, {r['errors']} errors (bit-identical to the sequential run required)",
        f"  time: {r['wall_s']:.1f} s, {r['calls_per_s']:.1f} calls/s (sequential {r['sequential_ms_per_call']:.1f} ms/call); "
        f"load average {r['loadavg_1min_before_after'][0]} -> {r['loadavg_1min_before_after'][1]} on {r['cpus']} CPUs",
        f"  memory: RSS {r['rss_warm_mb']} MB after {r['warmup_calls']} warm-up calls, {r['rss_end_mb']} MB at the end "
        f"({r['rss_growth_pct']}%, bound {r['max_growth_pct']:g}%), peak {r['peak_rss_mb']:.0f} MB; "
        f"{r['engine_objects']} engine object(s)",
        f"  {'PASSED' if r['passed'] else 'FAILED: ' + '; '.join(r['failures'])}",
    ]
    lines += [f"  e.g. {e}" for e in r["examples"]]
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> int:
    """Soak as the parsed arguments say, print the report; 0 passed, 1 failed (a :class:`FanEdgeError` propagates)."""
    report = soak_artifact(
        args.artifact, args.faces, args.threads, args.calls, args.warmup, args.inputs, args.backend, args.device,
        args.intra_op_threads, args.max_growth, log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(json.dumps(report) if args.json else format_report(report))
    return 0 if report["passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when the soak passed, 1 when it failed, 2 when it could not run (one line on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m fan_edge.ondevice.soak",
        description="One session under many threads: every result against a sequential run, errors, memory growth "
        "after warm-up (torch-free; see docs/runtime.md).",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except FanEdgeError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
