"""From heatmaps to points: FAN's decoding, without torch.

Heatmap cell ``j`` covers crop pixels ``stride*j .. stride*j + stride - 1``, so
its centre sits at crop coordinate ``stride*j + (stride - 1)/2``; with the
0-based pixel-centre coordinates of :mod:`fan_edge.runtime.crop` this is FAN's
"-0.5 offset" in its 1-based arithmetic. Training targets are placed with
:func:`crop_to_heatmap`, decoding uses :func:`heatmap_to_crop`: one convention,
so that a Gaussian placed at a point decodes back to that point.
"""

from __future__ import annotations

import numpy as np

from .crop import apply_affine, invert_affine


def crop_to_heatmap(points: np.ndarray, stride: float) -> np.ndarray:
    """Crop pixel coordinates to heatmap cell coordinates."""
    return (np.asarray(points, dtype=np.float64) - (stride - 1) / 2.0) / stride


def heatmap_to_crop(points: np.ndarray, stride: float) -> np.ndarray:
    """Heatmap cell coordinates to crop pixel coordinates."""
    return np.asarray(points, dtype=np.float64) * stride + (stride - 1) / 2.0


def _toward_higher(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """+1, -1 or 0: the direction of the higher neighbour (finite even for infinite inputs)."""
    return (after > before).astype(np.float64) - (after < before).astype(np.float64)


def argmax_quarter(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peak of each heatmap, moved a quarter cell toward the higher neighbour.

    Returns heatmap-cell coordinates (..., K, 2) as (x, y) and the peak value
    as a confidence (..., K). The quarter step is FAN's: it halves the
    worst-case quantisation error of a plain argmax at no cost.
    """
    hm = np.asarray(heatmaps, dtype=np.float32)
    *lead, h, w = hm.shape
    flat = hm.reshape(-1, h * w)
    idx = flat.argmax(axis=1)
    scores = flat[np.arange(flat.shape[0]), idx]
    py, px = np.divmod(idx, w)
    rows = np.arange(flat.shape[0])
    grid = hm.reshape(-1, h, w)
    x = px.astype(np.float64)
    y = py.astype(np.float64)
    inner_x = (px > 0) & (px < w - 1)
    inner_y = (py > 0) & (py < h - 1)
    dx = np.zeros_like(x)
    dy = np.zeros_like(y)
    r = rows[inner_x]
    dx[inner_x] = _toward_higher(grid[r, py[inner_x], px[inner_x] - 1], grid[r, py[inner_x], px[inner_x] + 1])
    r = rows[inner_y]
    dy[inner_y] = _toward_higher(grid[r, py[inner_y] - 1, px[inner_y]], grid[r, py[inner_y] + 1, px[inner_y]])
    coords = np.stack([x + 0.25 * dx, y + 0.25 * dy], axis=-1)
    return coords.reshape(*lead, 2), scores.reshape(*lead)


def argmax_gaussian(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peak of each heatmap refined by fitting a Gaussian to the 3-cell neighbourhood on each axis.

    A parabola through the log of the peak and its two neighbours is exact for
    a Gaussian peak (the shape the network is trained to produce), so this
    removes the quantisation error that the quarter step only halves; at a
    32-cell heatmap that error is worth about 1% NME. The step is bounded to
    half a cell and falls back to no step where the neighbourhood is flat or
    not positive.
    """
    hm = np.asarray(heatmaps, dtype=np.float32)
    *lead, h, w = hm.shape
    grid = hm.reshape(-1, h, w)
    flat = grid.reshape(grid.shape[0], -1)
    idx = flat.argmax(axis=1)
    rows = np.arange(flat.shape[0])
    scores = flat[rows, idx]
    py, px = np.divmod(idx, w)
    eps = 1e-10

    def step(centre: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        lc, lb, la = (np.log(np.maximum(v.astype(np.float64), eps)) for v in (centre, before, after))
        curvature = lb - 2.0 * lc + la
        valid = (centre > eps) & (curvature < -1e-9)
        delta = np.where(valid, 0.5 * (lb - la) / np.where(valid, curvature, -1.0), 0.0)
        return np.clip(delta, -0.5, 0.5)

    xm, xp = np.clip(px - 1, 0, w - 1), np.clip(px + 1, 0, w - 1)
    ym, yp = np.clip(py - 1, 0, h - 1), np.clip(py + 1, 0, h - 1)
    centre = grid[rows, py, px]
    dx = np.where((px > 0) & (px < w - 1), step(centre, grid[rows, py, xm], grid[rows, py, xp]), 0.0)
    dy = np.where((py > 0) & (py < h - 1), step(centre, grid[rows, ym, px], grid[rows, yp, px]), 0.0)
    coords = np.stack([px + dx, py + dy], axis=-1)
    return coords.reshape(*lead, 2), scores.reshape(*lead)


REFINEMENTS = {"quarter": argmax_quarter, "gaussian": argmax_gaussian}


def decode_heatmaps(heatmaps: np.ndarray, input_size: int, refine: str = "quarter") -> tuple[np.ndarray, np.ndarray]:
    """(N, K, H, W) heatmaps to (N, K, 2) crop-pixel points and (N, K) scores.

    ``refine`` is ``"quarter"`` (FAN's, what the released weights expect) or
    ``"gaussian"`` (sub-cell fit; what fan-edge's zoo models are trained for).
    Each model's config says which, and exported metadata carries it.
    """
    if refine not in REFINEMENTS:
        raise ValueError(f"unknown refinement {refine!r}; expected one of {', '.join(REFINEMENTS)}")
    hm = np.asarray(heatmaps)
    stride = input_size / hm.shape[-1]
    cells, scores = REFINEMENTS[refine](hm)
    return heatmap_to_crop(cells, stride), scores


def crop_points_to_image(points: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Crop-pixel points (N, K, 2) back to image pixels through each face's crop matrix (N, 2, 3)."""
    return apply_affine(invert_affine(matrices), points)
