"""Folders of face photos with 300-W .pts files, as every job reads them: found, checked, boxed and sampled.

Torch-free and below :mod:`fan_edge.data` (training datasets, augmentation,
metrics), so that the device tools (timing, soak) and ``predict`` read faces
the way evaluation does, with one box convention, without the toolkit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BoxError, DataError
from ..runtime.crop import check_boxes
from .images import IMAGE_SUFFIXES, check_image_file
from .pts import read_pts


def landmark_boxes(points: np.ndarray) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 boxes enclosing each face's (N, K, 2) points."""
    pts = np.asarray(points, dtype=np.float64)
    return np.concatenate([pts.min(axis=-2), pts.max(axis=-2)], axis=-1)


@dataclass(frozen=True)
class FaceItem:
    image: Path
    pts: Path | None


def scan_folder(root: str | os.PathLike[str], require_points: bool = True) -> list[FaceItem]:
    """Images under ``root`` (recursively), each paired with the .pts of the same stem."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"{base}: not a folder")
    items = []
    for path in sorted(base.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            pts = path.with_suffix(".pts")
            if pts.is_file():
                items.append(FaceItem(path, pts))
            elif not require_points:
                items.append(FaceItem(path, None))
    if not items:
        what = "images with .pts annotations" if require_points else "images"
        raise DataError(f"{base}: no {what} found")
    return items


def read_folder(root: str | os.PathLike[str], require_points: bool = True) -> tuple[list[FaceItem], list[np.ndarray | None]]:
    """:func:`scan_folder`, every image's header checked and every .pts parsed: a bad file is a one-line DataError now.

    What long jobs call first (training, validation, calibration,
    benchmarks): otherwise a bad file is found when its face is loaded,
    possibly hours in and inside a DataLoader worker, whose traceback wraps
    the message. Costs a header read and a small parse per face, far less
    than one epoch (figures: docs/runtime.md). The landmarks' box must be one the crop
    takes (:func:`~fan_edge.runtime.crop.check_boxes` against the image's
    displayed size): a .pts of 1e300 coordinates is refused here, not as a
    crash inside a data loader.
    """
    items = scan_folder(root, require_points)
    points: list[np.ndarray | None] = []
    for item in items:
        width, height = check_image_file(item.image)
        pts = None if item.pts is None else read_pts(item.pts)
        if pts is not None:
            try:
                check_boxes(landmark_boxes(pts[None]), width, height)
            except BoxError as exc:
                raise DataError(f"{item.pts}: the landmarks' {exc}") from None
        points.append(pts)
    return items, points


def spread_indices(total: int, count: int | None, seed: int = 0) -> np.ndarray:
    """``count`` indices spread evenly over ``range(total)`` (all of them when count is None or >= total).

    One index per equal stretch of the folder, at a seeded offset inside the
    stretch: deterministic, and it covers the whole folder rather than its
    first files (which are often one subject or one source).
    """
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    if count is None or count >= total:
        return np.arange(total, dtype=np.int64)
    if count < 1:
        raise DataError(f"the number of faces must be positive, got {count}")
    step = total / count
    offset = np.random.default_rng(seed).uniform(0.0, step)
    return np.minimum(np.floor(offset + step * np.arange(count)).astype(np.int64), total - 1)
