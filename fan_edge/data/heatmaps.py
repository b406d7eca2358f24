"""Gaussian heatmap targets, placed with the same convention the decoder inverts."""

from __future__ import annotations

import numpy as np

from ..runtime.decode import crop_to_heatmap


def gaussian_heatmaps(points_crop: np.ndarray, input_size: int, sigma: float = 1.0,
                      heatmap_size: int | None = None) -> np.ndarray:
    """(K, H, H) float32 targets for (K, 2) crop-pixel points; H = ``heatmap_size``, by default input_size / 4.

    ``sigma`` is in heatmap cells. The Gaussian is centred at the point's
    exact sub-cell position (not a rounded cell), so the decoder's quarter
    step and any finer refinement see an unbiased peak. Points outside the
    crop give an all-zero map.
    """
    size = heatmap_size or input_size // 4
    cells = crop_to_heatmap(points_crop, input_size / size)
    grid = np.arange(size, dtype=np.float32)
    dx = grid[None, :] - cells[:, 0:1].astype(np.float32)
    dy = grid[None, :] - cells[:, 1:2].astype(np.float32)
    gx = np.exp(-(dx**2) / (2 * sigma**2))
    gy = np.exp(-(dy**2) / (2 * sigma**2))
    maps = gy[:, :, None] * gx[:, None, :]
    inside = (cells[:, 0] >= -0.5) & (cells[:, 0] <= size - 0.5) & (cells[:, 1] >= -0.5) & (cells[:, 1] <= size - 0.5)
    maps[~inside] = 0.0
    return maps.astype(np.float32)
