"""The FAN paper's training augmentation, as one geometric transform plus photometry.

The geometric part (flip, rotation, scale, a small shift) is a similarity
about the crop centre, composed with the crop matrix before any pixel is
touched: image and points go through the same single matrix, so nothing is
resampled twice and points cannot drift from pixels. Photometric changes
(colour jitter, occlusion) come from albumentations and act on the crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime.scheme import mirror_permutation


@dataclass(frozen=True)
class AugmentSpec:
    """Ranges of the random transform; the defaults are the paper's."""

    flip: float = 0.5  # probability of a horizontal flip
    rotation: float = 50.0  # degrees, uniform in +-rotation
    scale: tuple[float, float] = (0.8, 1.2)
    shift: float = 0.05  # fraction of the crop side
    color: float = 0.8  # probability of colour jitter
    occlusion: float = 0.3  # probability of a random occluding rectangle


def random_similarity(rng: np.random.Generator, size: int, spec: AugmentSpec) -> tuple[np.ndarray, bool]:
    """A 2x3 crop-to-crop matrix and whether it mirrors (so points must be permuted)."""
    flip = bool(rng.random() < spec.flip)
    angle = np.deg2rad(rng.uniform(-spec.rotation, spec.rotation))
    scale = rng.uniform(*spec.scale)
    shift = rng.uniform(-spec.shift, spec.shift, size=2) * size
    c = (size - 1) / 2.0
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    linear = np.array([[cos, -sin], [sin, cos]])
    if flip:
        linear = linear @ np.array([[-1.0, 0.0], [0.0, 1.0]])
    center = np.array([c, c])
    translation = center + shift - linear @ center
    return np.hstack([linear, translation[:, None]]), flip


def mirror_points(points: np.ndarray) -> np.ndarray:
    """Relabel mirrored points so that index 36 is again the left-eye outer corner, etc."""
    return np.asarray(points)[mirror_permutation()]


class Photometric:
    """Colour jitter and random occlusion on a 0..255 float crop (albumentations)."""

    def __init__(self, spec: AugmentSpec) -> None:
        import albumentations as A

        self._compose = A.Compose(
            [
                A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=spec.color),
                A.CoarseDropout(
                    num_holes_range=(1, 1),
                    hole_height_range=(0.1, 0.4),
                    hole_width_range=(0.1, 0.4),
                    fill="random_uniform",
                    p=spec.occlusion,
                ),
            ]
        )

    def __call__(self, crop: np.ndarray, seed: int) -> np.ndarray:
        self._compose.set_random_seed(seed)
        out = self._compose(image=np.clip(crop / 255.0, 0.0, 1.0).astype(np.float32))["image"]
        return out * 255.0
