"""The 300-W ``.pts`` annotation format.

Files hold 1-based pixel coordinates (``version: 1``, ``n_points: 68``, ``{``,
one ``x y`` per line, ``}``); some in the wild have no header. fan-edge works
in 0-based pixel centres, so reading subtracts 1 and writing adds it back.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic
from ..errors import DataError

MAX_PTS_BYTES = 1 << 20


def parse_pts(text: str, expected: int | None = 68, source: str = "<pts>") -> np.ndarray:
    """Parse .pts text to (K, 2) float64, 0-based; headed or headerless."""
    lines = [ln.strip() for ln in text.removeprefix("\ufeff").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    declared = None
    body = lines
    if lines and lines[0].lower().startswith(("version", "n_points")):
        header = {}
        i = 0
        while i < len(lines) and lines[i] != "{":
            key, _, value = lines[i].partition(":")
            header[key.strip().lower()] = value.strip()
            i += 1
        if i == len(lines):
            raise DataError(f"{source}: header without an opening '{{'")
        if "n_points" not in header:
            raise DataError(f"{source}: header without n_points")
        try:
            declared = int(header["n_points"])
        except ValueError:
            raise DataError(f"{source}: n_points is not an integer") from None
        body = lines[i + 1 :]
        if not body or body[-1] != "}":
            raise DataError(f"{source}: no closing '}}'")
        body = body[:-1]
    else:
        body = [ln for ln in body if ln not in ("{", "}")]
    points = []
    for n, line in enumerate(body, 1):
        if line in ("{", "}"):
            raise DataError(f"{source}: unexpected {line!r} at point line {n}")
        parts = line.replace(",", " ").split()
        if len(parts) != 2:
            raise DataError(f"{source}: point line {n} has {len(parts)} values, expected 2")
        try:
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            raise DataError(f"{source}: point line {n} is not numeric: {line[:40]!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DataError(f"{source}: point line {n} is not finite")
        points.append((x - 1.0, y - 1.0))
    if declared is not None and declared != len(points):
        raise DataError(f"{source}: header says {declared} points, file has {len(points)}")
    if expected is not None and len(points) != expected:
        raise DataError(f"{source}: {len(points)} points, expected {expected}")
    if not points:
        raise DataError(f"{source}: no points")
    return np.asarray(points, dtype=np.float64)


def read_pts(path: str | os.PathLike[str], expected: int | None = 68) -> np.ndarray:
    """Read a .pts file into (K, 2) 0-based pixel coordinates."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_PTS_BYTES:
            raise DataError(f"{p}: {size} bytes is too large for a .pts file")
        text = p.read_text(encoding="utf-8", errors="strict")
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except OSError as exc:  # a folder of that name, no permission, an I/O error: still the user's file, in one line
        raise DataError(f"{p}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise DataError(f"{p}: not a text file") from None
    return parse_pts(text, expected, str(p))


def format_pts(points: np.ndarray) -> str:
    """Standard 300-W text for 0-based (K, 2) points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    rows = "\n".join(f"{x + 1.0:.6f} {y + 1.0:.6f}" for x, y in pts)
    return f"version: 1\nn_points: {len(pts)}\n{{\n{rows}\n}}\n"


def write_pts(path: str | os.PathLike[str], points: np.ndarray) -> None:
    write_text_atomic(path, format_pts(points))
