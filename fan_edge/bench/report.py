"""fan-bench's outputs: the terminal (or markdown) table, JSON and CSV, each file written atomically.

The table follows Ultralytics' benchmark table (format, status, size, metric,
ms) with FAN's metrics and the speed-up against PyTorch eager fp32; rows that
did not pass give their one-line reason under the table. Rows are
:class:`~fan_edge.rows.BenchRow` objects, or their JSON objects (a
``fan-profile`` row, a row read back from a file), read as one.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..rows import EXTRA_KEYS, ROW_KEYS, BenchRow, Status

Row = BenchRow | Mapping[str, Any]  # a BenchRow, or its JSON object (a fan-profile row, a row read from a file)


def _num(digits: int, suffix: str = "") -> Callable[[Any], str]:
    return lambda v: "-" if not isinstance(v, (int, float)) or isinstance(v, bool) else f"{v:.{digits}f}{suffix}"


_COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("model", "Model", str),
    ("target", "Target", lambda v: v or "-"),
    ("precision", "Precision", lambda v: v or "-"),
    ("device", "Device", lambda v: v or "-"),
    ("status", "Status", str),
    ("size_mb", "Size MB", _num(2)),
    ("nme_io", "NME io %", _num(2)),
    ("nme_box", "NME box %", _num(2)),
    ("auc7", "AUC@7 %", _num(1)),
    ("fr7", "FR@7 %", _num(2)),
    ("latency_ms_p50", "p50 ms", _num(2)),
    ("latency_ms_p90", "p90 ms", _num(2)),
    ("latency_spread_pct", "± %", _num(0)),
    ("latency_source", "Latency from", lambda v: {"timed here": "timed", None: "-"}.get(v, str(v).split(" (")[0])),
    ("fps", "FPS", _num(1)),
    ("speedup", "Speed-up", _num(2, "x")),
    ("peak_rss_mb", "Peak MB", _num(0)),
]
_LEFT = {"model", "target", "precision", "device", "status", "latency_source"}


def _rows(rows: Sequence[Row]) -> list[BenchRow]:
    return [BenchRow.from_dict(r) for r in rows]


def format_table(rows: Sequence[Row], markdown: bool = False) -> str:
    """One line per row, then the reason of each row that did not pass."""
    rows = _rows(rows)
    header = [title for _, title, _ in _COLUMNS]
    cells = [[fmt(getattr(r, key)) for key, _, fmt in _COLUMNS] for r in rows]
    notes = [
        f"{r.model} {r.target or '?'}:{r.precision or '?'}@{r.device or '?'}: {r.error}"
        for r in rows
        if r.error and r.status is not Status.PASSED
    ]
    notes += [  # an NPU row's figures (measured, whatever their verdict) come from an emulator or a compiler: say so
        f"{r.model} {r.target}:{r.precision}@{r.device}: accuracy from "
        f"{r.accuracy_source or '-'}; latency: {r.latency_source or '-'}; {r.npu_offload or ''}".rstrip("; ")
        for r in rows
        if r.status in (Status.PASSED, Status.FAILED_ACCURACY)
        and (r.accuracy_source or r.latency_source not in (None, "timed here"))
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if k in _LEFT else "---:" for k, _, _ in _COLUMNS) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    keys = [k for k, _, _ in _COLUMNS]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if k in _LEFT else v.rjust(w) for k, v, w in zip(keys, values, widths)).rstrip()

    out = [line(header), "-" * len(line(header))] + [line(c) for c in cells]
    if notes:
        out += [""] + notes
    return "\n".join(out)


def _clean(row: Row) -> dict[str, Any]:
    """The fan-bench keys first, then how the row was measured (keys absent from a row are null)."""
    return BenchRow.from_dict(row).to_dict()


def to_json(rows: Sequence[Row], settings: dict[str, Any] | None = None) -> str:
    payload: dict[str, Any] = {"rows": [_clean(r) for r in rows]}
    if settings:
        payload["settings"] = settings
    return json.dumps(payload, indent=2, allow_nan=False, default=str)


def to_csv(rows: Sequence[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ROW_KEYS + EXTRA_KEYS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in _clean(r).items()})
    return buffer.getvalue()


def write_json(path: str | Path, rows: Sequence[Row], settings: dict[str, Any] | None = None) -> Path:
    write_text_atomic(path, to_json(rows, settings) + "\n")
    return Path(path)


def write_csv(path: str | Path, rows: Sequence[Row]) -> Path:
    write_text_atomic(path, to_csv(rows))
    return Path(path)
