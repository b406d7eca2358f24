"""Which faces calibrate: a selection that covers head pose and lighting, not the first N files.

int8 ranges are statistics of activations over the calibration faces; a set
drawn from one corner of the data (one photographer, frontal faces in even
light, the first files of a folder) gives ranges that clip or waste levels on
the faces it missed. Each candidate face gets a small descriptor:

- head pose proxies from its 68 points (no model needed): roll (the eye line's
  angle), yaw (where the nose tip sits between the two jaw ends) and pitch
  (where it sits between the eye line and the chin), in the face's own
  upright frame;
- lighting from its crop: mean brightness, contrast (standard deviation) and
  side light (left half against right half).

:func:`cover` then clusters the standardised descriptors with k-means (as
many clusters as faces wanted, k-means++ seeding, seeded) and keeps the real
face nearest each centre: every populated region of pose x lighting is
represented in proportion to how common it is, extremes included where they
are common enough to form a cluster. Faces without points (boxes from a
detector) are described by lighting alone. Torch-free (numpy).
"""

from __future__ import annotations

import numpy as np

from ..runtime.scheme import NUM_LANDMARKS

# 68-point scheme indices (0-based): eye contours, jaw ends, chin, nose tip.
_RIGHT_EYE = slice(36, 42)
_LEFT_EYE = slice(42, 48)
_JAW_START, _JAW_END, _CHIN, _NOSE_TIP = 0, 16, 8, 30


def pose_proxies(points: np.ndarray) -> np.ndarray:
    """(N, 3) roll (radians), yaw and pitch proxies (about -1..1 and 0..1) of (N, 68, 2) image points.

    NaN rows for faces without points (or with a scheme other than 68 points).
    """
    pts = np.asarray(points, dtype=np.float64)
    out = np.full((len(pts), 3), np.nan)
    if pts.ndim != 3 or pts.shape[1] != NUM_LANDMARKS:
        return out
    eye_r = pts[:, _RIGHT_EYE].mean(axis=1)
    eye_l = pts[:, _LEFT_EYE].mean(axis=1)
    d = eye_l - eye_r
    roll = np.arctan2(d[:, 1], d[:, 0])
    # Into the upright frame: rotate by -roll about the eyes' midpoint.
    c, s = np.cos(-roll), np.sin(-roll)
    mid = (eye_l + eye_r) / 2
    rel = pts - mid[:, None, :]
    up = np.stack([c[:, None] * rel[..., 0] - s[:, None] * rel[..., 1], s[:, None] * rel[..., 0] + c[:, None] * rel[..., 1]], -1)
    nose, jaw0, jaw1, chin = up[:, _NOSE_TIP], up[:, _JAW_START], up[:, _JAW_END], up[:, _CHIN]
    width = np.maximum(jaw1[:, 0] - jaw0[:, 0], 1e-6)
    yaw = ((nose[:, 0] - jaw0[:, 0]) - (jaw1[:, 0] - nose[:, 0])) / width
    pitch = nose[:, 1] / np.maximum(chin[:, 1], 1e-6)
    valid = np.isfinite(pts).all(axis=(1, 2))
    out[valid] = np.stack([roll, yaw, pitch], axis=1)[valid]
    return out


def lighting(crops: np.ndarray) -> np.ndarray:
    """(N, 3) brightness, contrast and side light of (N, 3, S, S) network inputs in [0, 1]."""
    x = np.asarray(crops, dtype=np.float64)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    half = luma.shape[-1] // 2
    left, right = luma[..., :half].mean(axis=(1, 2)), luma[..., half:].mean(axis=(1, 2))
    mean = luma.mean(axis=(1, 2))
    return np.stack([mean, luma.std(axis=(1, 2)), (left - right) / np.maximum(mean, 1e-3)], axis=1)


def _standardise(features: np.ndarray) -> np.ndarray:
    """Zero mean, unit spread per column (NaN, e.g. pose of a face without points, becomes the column mean)."""
    f = np.asarray(features, dtype=np.float64)
    keep = np.isfinite(f).any(axis=0)
    f = f[:, keep]
    if f.shape[1] == 0:
        return np.zeros((len(features), 1))
    mean = np.nanmean(f, axis=0)
    spread = np.nanstd(f, axis=0)
    f = (f - mean) / np.where(spread > 1e-12, spread, 1.0)
    return np.nan_to_num(f, nan=0.0)


def cover(features: np.ndarray, count: int, seed: int = 0, iterations: int = 25) -> np.ndarray:
    """Indices (sorted) of ``count`` rows that cover ``features``: the row nearest each k-means centre.

    Deterministic for a seed. All rows when ``count`` >= their number.
    """
    x = _standardise(features)
    n = len(x)
    if count >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    # Greedy k-means++ seeding (as scikit-learn's): of a few candidates drawn by squared distance, keep the one that
    # lowers the total squared distance most; plain k-means++ misses small, distant groups more often.
    trials = 2 + int(np.log(count))
    centres = [x[rng.integers(n)]]
    dist = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, count):
        total = dist.sum()
        picks = rng.choice(n, size=trials, p=dist / total) if total > 0 else rng.integers(n, size=trials)
        options = np.minimum(dist[None], ((x[None] - x[picks][:, None]) ** 2).sum(-1))
        best = int(options.sum(1).argmin())
        centres.append(x[picks[best]])
        dist = options[best]
    c = np.stack(centres)
    for _ in range(iterations):
        labels = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        moved = np.stack([x[labels == k].mean(0) if (labels == k).any() else c[k] for k in range(count)])
        if np.allclose(moved, c):
            break
        c = moved
    # The nearest real face to each centre, each face used once (greedy, closest pairs first).
    d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    for k in np.argsort(d.min(axis=0)):
        order = np.argsort(d[:, k])
        first = next(int(i) for i in order if not taken[i])
        taken[first] = True
        chosen.append(first)
    return np.sort(np.asarray(chosen, dtype=np.int64))
