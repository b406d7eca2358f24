"""What fan-export and fan-bench report: one status vocabulary (:class:`Status`) and the bench row (:class:`BenchRow`).

Both import this module, and it imports nothing of fan-edge's (no torch, no
numpy): the torch-free timing process (:mod:`fan_edge.ondevice.bench`), the
exporter (:class:`fan_edge.export.exporter.ExportResult`, the sidecar's
``verification.status``) and fan-bench's runner and reports all speak it.

A status is a ``str`` (``Status.PASSED == "passed"``), so JSON, CSV and
tables show its value. Files written before this vocabulary was one say
``ok`` (the exporter's pass) or ``exported but failed accuracy`` (fan-bench's
accuracy failure); :class:`Status` reads them as :attr:`Status.PASSED` and
:attr:`Status.FAILED_ACCURACY`.

The status is shared; the rows are not. An export result records what was
written (a format, its files, the parity report, the contract), a bench row
what was measured (a runtime's latency, memory and accuracy): their
``target`` names different things (``onnx`` against ``onnxruntime``), and a
result's parity report and contract belong to layers above this one, which
the timing process must not import. They meet in the sidecar's
``verification.status``, which fan-bench reads back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any


class Status(str, Enum):
    """The verdict of an exported artifact or of a bench row."""

    PASSED = "passed"  # exported and within its precision's tolerance; a bench row measured (and, with data, accurate)
    FAILED_ACCURACY = "failed accuracy"  # exported (and kept, and still timed) but outside the tolerance of its precision
    NOT_VERIFIED = "not verified"  # exported, never compared with PyTorch (--no-verify; no backend here runs it: Core ML)
    FAILED = "failed"  # a bench row whose export, load, run or timing failed (the reason is in ``error``)
    DEVICE_ABSENT = "device absent"  # a bench row for a device that this machine (or its runtime) does not have

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def _missing_(cls, value: object) -> Status | None:
        return LEGACY_STATUS.get(value) if isinstance(value, str) else None

    @property
    def usable(self) -> bool:
        """Whether the artifact may be used as it is: not :attr:`FAILED_ACCURACY`, :attr:`FAILED` nor :attr:`DEVICE_ABSENT`."""
        return self in (Status.PASSED, Status.NOT_VERIFIED)


# Spellings of the two vocabularies this one replaced, as sidecars and JSON files written before it still say.
LEGACY_STATUS: dict[str, Status] = {
    "ok": Status.PASSED,
    "exported but failed accuracy": Status.FAILED_ACCURACY,
    "exported; prediction needs macOS": Status.NOT_VERIFIED,
}

# fan-bench's columns, in order (JSON keys, CSV header); then how each row was measured.
ROW_KEYS = (
    "model",
    "target",
    "precision",
    "device",
    "status",
    "size_mb",
    "nme_io",
    "nme_box",
    "auc7",
    "fr7",
    "latency_ms_p50",
    "latency_ms_p90",
    "fps",
    "speedup",
)
EXTRA_KEYS = (
    "latency_source",
    "accuracy_source",
    "npu_offload",
    "peak_rss_mb",
    "base_rss_mb",
    "delta_nme_io",
    "faces",
    "threads",
    "runs",
    "warmup",
    "rounds",
    "latency_spread_pct",
    "path",
    "source",
    "error",
)


@dataclass
class BenchRow:
    """One fan-bench row: a runtime x precision x device of one model (or one artifact as it is), measured.

    The fields are fan-bench's columns (:data:`ROW_KEYS`) and how the row was
    measured (:data:`EXTRA_KEYS`); ``more`` holds what a producer adds beyond
    them (the timing process's host, load time, mean latency...). Code reads
    and writes the fields as attributes, so that a misspelt column is an
    error rather than a silent new key; files and processes exchange the row
    as its JSON object, :meth:`to_dict` writes it and :meth:`from_dict` reads
    it back.
    """

    model: str | None = None
    target: str | None = None  # the runtime: torch, onnxruntime, openvino, litert
    precision: str | None = None
    device: str | None = None
    status: Status = Status.PASSED
    size_mb: float | None = None
    nme_io: float | None = None
    nme_box: float | None = None
    auc7: float | None = None
    fr7: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    fps: float | None = None
    speedup: float | None = None
    latency_source: str | None = None
    accuracy_source: str | None = None
    npu_offload: str | None = None
    peak_rss_mb: float | None = None
    base_rss_mb: float | None = None
    delta_nme_io: float | None = None
    faces: int | None = None
    threads: int | None = None
    runs: int | None = None
    warmup: int | None = None
    rounds: int | None = None  # fan-bench's interleaved rounds the runs were spread over (one process each)
    # The interquartile range of the rounds' medians, in % of p50: rows of one run closer than this are not told apart.
    latency_spread_pct: float | None = None
    path: str | None = None
    source: str | None = None
    error: str | None = None
    more: dict[str, Any] = field(default_factory=dict)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "status":
            value = Status(value)  # a Status, its value, or a legacy spelling; anything else is a ValueError
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON values: :data:`ROW_KEYS`, :data:`EXTRA_KEYS`, then ``more``."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ROW_KEYS + EXTRA_KEYS}
        out["status"] = self.status.value
        out.update((k, v) for k, v in self.more.items() if k not in out)
        return out

    @classmethod
    def from_dict(cls, data: BenchRow | Mapping[str, Any]) -> BenchRow:
        """A row from its JSON object (unknown keys go to ``more``; a missing status is :attr:`Status.PASSED`);
        a row is returned as it is, so that readers take either."""
        if isinstance(data, BenchRow):
            return data
        known = {k: v for k, v in data.items() if k in _FIELDS}
        return cls(**known, more={k: v for k, v in data.items() if k not in _FIELDS})

    def fail(self, reason: str, status: Status = Status.FAILED) -> BenchRow:
        """Mark the row ``status`` with its one-line ``reason``; returns the row."""
        self.status = status
        self.error = reason
        return self


_FIELDS = frozenset(f.name for f in fields(BenchRow) if f.name != "more")
assert _FIELDS == set(ROW_KEYS + EXTRA_KEYS), "BenchRow's fields are the row's keys"
