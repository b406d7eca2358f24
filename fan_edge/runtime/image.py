"""Bring any image array to the RGB float layout the crop expects.

Apps hand over whatever their camera or decoder gives: grayscale, RGB, RGBA,
8- or 16-bit. The runtime takes RGB channel order (convert BGR from OpenCV
with ``image[..., ::-1]``) and scales values to 0..255 floats here, once.
"""

from __future__ import annotations

import numpy as np


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 RGB in 0..255 from (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) arrays."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"empty image of shape {img.shape}")
    if img.dtype == np.uint8:
        out = img.astype(np.float32)
    elif img.dtype == np.uint16:
        out = img.astype(np.float32) / 257.0
    elif np.issubdtype(img.dtype, np.floating):
        out = img.astype(np.float32)
        finite = out[np.isfinite(out)]
        if finite.size and finite.max() <= 1.0:
            out = out * 255.0
        out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    else:
        raise ValueError(f"unsupported image dtype {img.dtype}")
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    elif out.shape[2] == 4:
        out = out[..., :3]
    return out


def to_network_input(crops: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) 0..255 crops to FAN's input: (N, 3, S, S) float32 in [0, 1], no mean or std."""
    x = np.asarray(crops, dtype=np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    return np.ascontiguousarray(np.clip(x, 0.0, 1.0))
