"""Landmark accuracy as the FAN paper and the 300-W peers report it.

- NME normalised by the inter-ocular distance (outer eye corners 36 and 45),
  what most peers report;
- NME normalised by sqrt(w * h) of the ground-truth landmark box, what the
  FAN paper reports;
- the cumulative error distribution (CED), its area up to 7% (AUC@7) and the
  failure rate at 7% (FR@7), box-normalised as in the paper.

All errors are per face: the mean over landmarks of the point-to-point
distance, divided by that face's normaliser. Figures are fractions; callers
multiply by 100 to print percent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from ..runtime.scheme import LEFT_EYE_OUTER, RIGHT_EYE_OUTER
from ..files.folders import landmark_boxes

Normalisation = Literal["inter_ocular", "box"]


def normalisers(gt: np.ndarray, kind: Normalisation) -> np.ndarray:
    gt = np.asarray(gt, dtype=np.float64)
    if kind == "inter_ocular":
        return np.linalg.norm(gt[:, LEFT_EYE_OUTER] - gt[:, RIGHT_EYE_OUTER], axis=-1)
    if kind == "box":
        boxes = landmark_boxes(gt)
        return np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    raise ValueError(f"unknown normalisation {kind!r}")


def per_face_nme(pred: np.ndarray, gt: np.ndarray, kind: Normalisation = "inter_ocular") -> np.ndarray:
    """(N,) mean point-to-point error of each face over its normaliser."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (N, K, 2)")
    return np.linalg.norm(pred - gt, axis=-1).mean(axis=-1) / normalisers(gt, kind)


def ced_curve(errors: np.ndarray, limit: float = 0.07, steps: int = 701) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds in [0, limit] and the fraction of faces whose error is at or below each."""
    thresholds = np.linspace(0.0, limit, steps)
    errs = np.sort(np.asarray(errors, dtype=np.float64))
    fractions = np.searchsorted(errs, thresholds, side="right") / max(len(errs), 1)
    return thresholds, fractions


def auc(errors: np.ndarray, limit: float = 0.07) -> float:
    """Area under the CED curve on [0, limit], divided by ``limit``.

    Computed exactly: integrating the step curve gives the mean over faces of
    ``max(0, 1 - e / limit)``, so no discretisation of thresholds enters.
    """
    errs = np.asarray(errors, dtype=np.float64)
    return float(np.mean(np.clip(1.0 - errs / limit, 0.0, 1.0))) if len(errs) else float("nan")


def failure_rate(errors: np.ndarray, limit: float = 0.07) -> float:
    """Fraction of faces whose error exceeds ``limit``."""
    errs = np.asarray(errors, dtype=np.float64)
    return float(np.mean(errs > limit)) if len(errs) else float("nan")


@dataclass(frozen=True)
class LandmarkScores:
    """The figures every report in fan-edge prints, as fractions."""

    nme_io: float
    nme_box: float
    auc7: float
    fr7: float
    faces: int

    def as_percent(self) -> dict[str, float]:
        d = asdict(self)
        return {k: (100.0 * v if k != "faces" else v) for k, v in d.items()}


def score(pred: np.ndarray, gt: np.ndarray) -> LandmarkScores:
    """NME (inter-ocular and box), AUC@7 and FR@7 (box-normalised) for (N, K, 2) points."""
    io = per_face_nme(pred, gt, "inter_ocular")
    box = per_face_nme(pred, gt, "box")
    return LandmarkScores(float(io.mean()), float(box.mean()), auc(box), failure_rate(box), len(io))
