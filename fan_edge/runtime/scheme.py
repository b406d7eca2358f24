"""The 68-point 300-W/Multi-PIE landmark scheme, as a set of facts other parts import.

Indices are 0-based. The mirror permutation maps each point to the point that
takes its place when the face is flipped horizontally (left eye corner to
right eye corner, and so on); the flip augmentation and test-time flipping
both need it, and it travels in exported metadata so that apps can too.
"""

from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 68

# Outer eye corners: the inter-ocular normalisation of most 300-W papers.
LEFT_EYE_OUTER = 36
RIGHT_EYE_OUTER = 45

REGIONS: dict[str, range] = {
    "jaw": range(0, 17),
    "right_brow": range(17, 22),
    "left_brow": range(22, 27),
    "nose_bridge": range(27, 31),
    "nose_base": range(31, 36),
    "right_eye": range(36, 42),
    "left_eye": range(42, 48),
    "outer_lip": range(48, 60),
    "inner_lip": range(60, 68),
}


def _mirror_pairs() -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    pairs += [(i, 16 - i) for i in range(8)]  # jaw 0..7 <-> 16..9, 8 is the chin
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nose base, 33 centre
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]  # outer lip
    pairs += [(60, 64), (61, 63), (67, 65)]  # inner lip
    return pairs


MIRROR_PAIRS: tuple[tuple[int, int], ...] = tuple(_mirror_pairs())


def mirror_permutation() -> np.ndarray:
    """Index array ``perm`` such that ``flipped_points = points[perm]`` after mirroring x."""
    perm = np.arange(NUM_LANDMARKS)
    for a, b in MIRROR_PAIRS:
        perm[a], perm[b] = b, a
    return perm
