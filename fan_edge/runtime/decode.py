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
    dx[inner_x] = np.sign(grid[r, py[inner_x], px[inner_x] + 1] - grid[r, py[inner_x], px[inner_x] - 1])
    r = rows[inner_y]
    dy[inner_y] = np.sign(grid[r, py[inner_y] + 1, px[inner_y]] - grid[r, py[inner_y] - 1, px[inner_y]])
    coords = np.stack([x + 0.25 * dx, y + 0.25 * dy], axis=-1)
    return coords.reshape(*lead, 2), scores.reshape(*lead)


def decode_heatmaps(heatmaps: np.ndarray, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, H, W) heatmaps to (N, K, 2) crop-pixel points and (N, K) scores."""
    hm = np.asarray(heatmaps)
    stride = input_size / hm.shape[-1]
    cells, scores = argmax_quarter(hm)
    return heatmap_to_crop(cells, stride), scores


def crop_points_to_image(points: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Crop-pixel points (N, K, 2) back to image pixels through each face's crop matrix (N, 2, 3)."""
    return apply_affine(invert_affine(matrices), points)
