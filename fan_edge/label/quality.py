"""How much a machine label can be trusted: consensus of teachers, their disagreement, flip consistency.

No ground truth exists for the faces being labelled, so quality is read off
the teachers themselves, as LS3D-W was vetted:

- **consensus**: the label is the per-point mean (or median) of the
  teachers' points, each teacher's being the average of its passes on the
  face and on the mirrored face. The mean is the default because it
  measured better on 300-W AFW with two FAN teachers and dlib (docs/label.md,
  "How the rule and the thresholds were chosen"): two FAN teachers of one
  family agree with each other, so the median all but ignores the third,
  independent one; with two teachers the two rules coincide.
- **disagreement**: each teacher's NME (inter-ocular, :mod:`fan_edge.data.metrics`)
  against the consensus; their mean is the face's figure. Teachers that
  learnt from different data and methods rarely fail the same way, so a
  face they disagree on is one at least one of them got wrong.
- **flip**: the NME between the consensus of the teachers' predictions on
  the face and the consensus of their predictions on the mirrored face
  (mapped back). A model is mirror-symmetric only where it is sure.

Figures are in percent (NME inter-ocular x 100), as thresholds are given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..data.metrics import per_face_nme
from ..errors import ConfigError

CONSENSUS_RULES = ("median", "mean")


def consensus(points: np.ndarray, rule: str = "median") -> np.ndarray:
    """(T, N, K, 2) teachers' points -> (N, K, 2): the per-point median or mean over teachers (x and y separately)."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 4 or p.shape[-1] != 2 or p.shape[0] < 1:
        raise ValueError(f"expected (teachers, faces, points, 2), got {p.shape}")
    if rule == "median":
        return np.median(p, axis=0)
    if rule == "mean":
        return p.mean(axis=0)
    raise ConfigError(f"unknown consensus rule {rule!r}; expected one of: {', '.join(CONSENSUS_RULES)}")


def teacher_nme(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T, N) NME inter-ocular in percent of each teacher's (T, N, K, 2) points against (N, K, 2) reference points."""
    p = np.asarray(points, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if p.shape[1] == 0:
        return np.zeros((p.shape[0], 0))
    return np.stack([100.0 * per_face_nme(t, ref, "inter_ocular") for t in p])


def disagreement(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N,) mean over teachers of :func:`teacher_nme`: 0 for a single teacher, which cannot disagree with itself."""
    return teacher_nme(points, reference).mean(axis=0)


def flip_nme(points: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """(N,) NME inter-ocular in percent between (N, K, 2) predictions and those from the mirrored faces."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape[0] == 0:
        return np.zeros(0)
    return 100.0 * per_face_nme(np.asarray(flipped, dtype=np.float64), p, "inter_ocular")


@dataclass(frozen=True)
class Thresholds:
    """A face is dropped when its disagreement or flip figure (NME io %) is above the maximum, or its detector score
    below the minimum; None switches a check off. Defaults: docs/label.md (measured on 300-W AFW)."""

    max_disagreement: float | None = 4.0
    max_flip: float | None = 4.0
    min_detector_score: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value)):
                raise ConfigError(f"{name.replace('_', '-')} must be a finite number, got {value!r}")
        for name in ("max_disagreement", "max_flip"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 0, got {value}")

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def drop_reasons(thresholds: Thresholds, disagreement: float, flip: float | None, detector_score: float | None) -> list[str]:
    """Why one face fails (in :data:`fan_edge.files.labels.REASONS` order); empty when it is kept. A figure that was not measured
    (no flip pass, boxes without scores) cannot fail its check."""
    reasons = []
    t = thresholds
    if t.min_detector_score is not None and detector_score is not None and detector_score < t.min_detector_score:
        reasons.append("detector_score")
    if t.max_disagreement is not None and not disagreement <= t.max_disagreement:
        reasons.append("disagreement")
    if t.max_flip is not None and flip is not None and not flip <= t.max_flip:
        reasons.append("flip")
    return reasons
