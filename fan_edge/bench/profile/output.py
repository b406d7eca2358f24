"""Printing a fan-profile row: fan-bench's table, one JSON object, or CSV."""

from __future__ import annotations

import csv
import io
from typing import Any


def _notes(row: dict[str, Any]) -> list[str]:
    """What the table's columns cannot say: how the latency was measured and where."""
    notes = []
    if row.get("latency_stat") == "mean":
        notes.append("p50 column: mean of the timed runs (this benchmark_model build prints no median); no p90 reported")
    elif row.get("latency_stat") == "median":
        p95 = row.get("latency_ms_p95")
        notes.append("p50: benchmark_model's median; it reports no p90" + (f" (p95 {p95:.2f} ms)" if p95 is not None else ""))
    where = " via ssh ".join(str(w) for w in (row.get("host"), row.get("remote")) if w) or "?"
    how = [f"{row['runs']} runs after {row.get('warmup')} warm-up" if row.get("runs") else None,
           f"threads {row['threads']}" if row.get("threads") else "threads: runtime default",
           row.get("delegate"),
           f"peak RSS {row['peak_rss_mb']:.0f} MB" if row.get("peak_rss_mb") is not None else None,
           f"timed by {row['timed_by']}" if row.get("timed_by") else None]
    notes.append(f"on {where}" + (f" [{row['machine']}]" if row.get("machine") else "") + ": " + ", ".join(h for h in how if h))
    if row.get("error"):
        notes.append(f"error: {row['error']}")
    return notes


def format_row(row: dict[str, Any], fmt: str = "table") -> str:
    """``table`` (fan-bench's table, then how and where), ``json`` (fan-bench's ``{"rows": [...]}``) or ``csv``.

    The CSV has fan-bench's columns first, in its order, then the profile's
    own (``latency_stat``, ``delegate``, ``host``...), so that its first
    columns line up with a ``fan-bench --csv`` file.
    """
    from ..report import format_table, to_json

    if fmt == "json":
        return to_json([row])
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(row), lineterminator="\n")
        writer.writeheader()
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
        return buffer.getvalue().rstrip("\n")
    return "\n".join([format_table([row]), *_notes(row)])
