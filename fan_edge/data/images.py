"""Reading images from disk into the runtime's RGB layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..runtime.image import as_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_PIXELS = 200_000_000


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """(H, W, 3) float32 RGB in 0..255 from an image file (any depth, grey or alpha)."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such image")
    data = np.fromfile(p, dtype=np.uint8)
    if data.size == 0:
        raise DataError(f"{p}: empty file")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{p}: not a readable image")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise DataError(f"{p}: {image.shape[1]}x{image.shape[0]} is larger than {MAX_PIXELS} pixels")
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[..., ::-1]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., [2, 1, 0, 3]]
    try:
        return as_rgb(image)
    except ValueError as exc:
        raise DataError(f"{p}: {exc}") from None
