"""On-device latency (``fan-profile``): the same fan-bench row, measured on a phone or an edge box.

- :mod:`.adb`: an Android device over adb, timed by LiteRT's ``benchmark_model``
  (:mod:`.benchmark_model` reads its output);
- :mod:`.ssh`: a Linux box over ssh, timed by ``python -m fan_edge.ondevice.bench`` there.

Both return a dict whose first keys are :data:`fan_edge.ondevice.bench.ROW_KEYS`
(accuracy and speed-up null: they need data and a baseline), followed by how the
row was measured. See docs/profile.md.
"""

from __future__ import annotations

from typing import Any

from ...ondevice.bench import ROW_KEYS
from .adb import AdbOptions, profile_adb
from .benchmark_model import BenchmarkModelTimings, parse_benchmark_output
from .ssh import SshOptions, profile_ssh


def ordered_row(row: dict[str, Any]) -> dict[str, Any]:
    """fan-bench's row keys, then its measurement keys, in its order (null where absent), then the profile's own."""
    from ..report import EXTRA_KEYS

    known = ROW_KEYS + EXTRA_KEYS
    return {**{k: row.get(k) for k in known}, **{k: v for k, v in row.items() if k not in known}}


__all__ = [
    "AdbOptions",
    "BenchmarkModelTimings",
    "SshOptions",
    "ordered_row",
    "parse_benchmark_output",
    "profile_adb",
    "profile_ssh",
]
